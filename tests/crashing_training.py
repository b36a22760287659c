"""``python -m training ARGS`` that dies like a killed process at batch B of epoch E.

    python tests/crashing_training.py E:B fit --arch lenet5 ...

The crash is injected from the test side: this script wraps ``training.kit.make_callbacks`` (the
callbacks both trainers use) to add one that calls ``os._exit(75)`` (no cleanup, no flush, as a
SIGKILL would), then runs the command line as ``python -m training`` does. The training code has
no hook for it.

Under ``TF_CONFIG`` (several workers, tests/test_multiworker.py) every worker first waits for the
others to reach the same batch (a file each in the working folder): a worker that died on its own
as soon as its step ended could close its sockets while another worker still received the last
message of the step's all-reduce, and that worker then died of ``Socket closed`` before its crash
point (exit 1, not 75: once in 649 runs). After the barrier every collective of the step is done
on every worker, so each dies at its own crash point.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
EXIT_CODE = 75
BARRIER_S = 60


def wait_for_the_other_workers() -> None:
    """With ``TF_CONFIG`` naming several workers: mark this worker as at its crash point, and wait
    (at most ``BARRIER_S``) until every worker is."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    workers = sum(len(tasks) for tasks in config.get("cluster", {}).values())
    if workers < 2:
        return
    Path(f"crash-ready-{config['task']['type']}-{config['task']['index']}").touch()
    deadline = time.monotonic() + BARRIER_S
    while len(list(Path().glob("crash-ready-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.01)


def crash_callback(epoch: int, batch: int):
    import keras

    class Crash(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.current = 0

        def on_epoch_begin(self, index, logs=None):
            self.current = index + 1

        def on_train_batch_end(self, index, logs=None):
            if (self.current, index + 1) == (epoch, batch):
                wait_for_the_other_workers()
                print(f"\ncrashing_training: killing the process at epoch {epoch}, batch {batch}", flush=True)
                os._exit(EXIT_CODE)

    return Crash()


def main() -> int:
    spec, *argv = sys.argv[1:]
    epoch, batch = (int(n) for n in spec.split(":"))
    from training import kit
    from training.__main__ import main as training_main

    make_callbacks = kit.make_callbacks
    kit.make_callbacks = lambda *args, **kwargs: [
        *make_callbacks(*args, **kwargs),
        crash_callback(epoch, batch),
    ]
    return training_main(argv)


if __name__ == "__main__":
    sys.exit(main())
