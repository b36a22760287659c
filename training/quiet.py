"""Quiet by default: what ``python -m training ...`` prints is the command's own output.

Before TensorFlow is imported (``prepare``):

- ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (TensorFlow's C++ logs: warnings and errors only; a value
  you set is kept), the ``tensorflow`` and ``absl`` Python loggers to ERROR;
- the lines TensorFlow's C++ side writes straight to the stderr descriptor while it loads and finds
  its devices, whatever that level (absl's "All log messages before absl::InitializeLog()", the
  ``I0000`` oneDNN / "Could not find cuda drivers" / CPU-instructions notes, and the
  ``E0000 ... failed call to cuInit`` of a machine without an NVIDIA driver), are held back
  (``quiet_import``); anything else written then is passed on. GPUs are never hidden: only the
  message is; a machine with GPUs finds them as before.

``CONVZOO_TF_LOGS=1`` turns all of this off (TensorFlow and absl log as they do by default).

Errors a user makes (an unknown architecture, an input size an architecture cannot take, a missing
file, a refused weights file...) print one line, ``error: ...``, and exit with status 2, never a
traceback (``one_line_errors``); ``CONVZOO_TRACEBACK=1`` shows the traceback.

Keras progress bars only on a terminal (``progress_verbosity``): redirected to a file or a pipe,
one line per epoch (``verbose=2``) instead of ANSI escapes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I0000 [^\]]*\] .*"  # absl INFO lines: oneDNN, cudart stub, CPU feature guard...
    rb"|To enable the following instructions: .*(?:rebuild TensorFlow with the appropriate compiler flags\.)?"
    rb"|E0000 [^\]]*\] failed call to cuInit: .*"  # no NVIDIA driver: TensorFlow then uses the CPU
)


def verbose() -> bool:
    return os.environ.get("CONVZOO_TF_LOGS", "").strip().lower() in ("1", "true", "yes", "on")


def prepare() -> None:
    """Set the log levels; call before TensorFlow is imported."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Route the stderr descriptor to a file during the block, then pass on all but ``NOISE``."""
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr descriptor to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [
                line for line in held.read().splitlines(keepends=True) if not NOISE.fullmatch(line.rstrip())
            ]
            if kept:
                os.write(2, b"".join(kept))


def quiet_import(module_name: str):
    """Import a command's module, TensorFlow's start-up lines held back; and, if it brought
    TensorFlow in, let TensorFlow look for its devices now (the cuInit message comes then)."""
    prepare()
    with held_stderr():
        module = importlib.import_module(module_name)
        tf = sys.modules.get("tensorflow")
        if tf is not None and not verbose():
            with contextlib.suppress(Exception):
                tf.config.list_physical_devices("GPU")
    return module


def error_line(error: BaseException) -> str:
    """An exception as one line: its message (Keras' "Exception encountered when calling ...":
    the inner message), without ANSI codes."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = lines[1:]
    return lines[0] if lines else type(error).__name__


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def one_line_errors(run):
    """``run()``'s exit status; a user error (``USER_ERRORS``) printed as ``error: ...``, status 2."""
    if os.environ.get("CONVZOO_TRACEBACK", "").strip() not in ("", "0"):
        return run()
    try:
        return run()
    except USER_ERRORS as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 2


def progress_verbosity() -> int:
    """``verbose`` for Keras' ``fit``: progress bars on a terminal, one line per epoch otherwise."""
    try:
        return 1 if sys.stdout.isatty() else 2
    except (AttributeError, ValueError):
        return 2
