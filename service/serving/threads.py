"""Native thread names: the worker's own threads as the operating system shows them.

Python's ``threading`` names (``convzoo-model_0``) live in Python only (3.11 does not pass them to
the OS), so ``top -H``, ``ps -T`` and ``/proc/<pid>/task/<tid>/comm`` show every thread of a worker
under the process's name. ``name_native_thread`` gives the calling thread its name in the kernel
(Linux ``prctl(PR_SET_NAME)``, at most 15 bytes), so that an operator and the benchmarks
(``benchmarks.http_served``: CPU per thread, ``--loop-cpus``/``--model-cpus``) can tell the model's
thread from the event loop's. Where that is not available it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

PR_SET_NAME = 15
"""``prctl``'s option that names the calling thread (linux/prctl.h)."""
MAX_NAME_BYTES = 15
"""The kernel keeps 16 bytes of a thread's name, its terminating NUL included."""
MODEL_THREAD = "convzoo-model"
"""The native name of every model's thread (``service.serving.batching.Batcher``)."""
WATCHER_THREAD = "convzoo-watcher"
"""The native name of the repository watcher's thread (``service.serving.watcher.Watcher``)."""

_prctl = None


def _libc_prctl():
    global _prctl
    if _prctl is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _prctl = libc.prctl
        _prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        _prctl.restype = ctypes.c_int
    return _prctl


def name_native_thread(name: str) -> bool:
    """Give the calling thread ``name`` (cut to 15 bytes of UTF-8) in the kernel; True when it
    took, False where it is not supported (not Linux, no libc) or the call failed."""
    if not sys.platform.startswith("linux"):
        return False
    encoded = name.encode("utf-8", "replace")[:MAX_NAME_BYTES]
    try:
        return _libc_prctl()(PR_SET_NAME, encoded, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
