"""``python -m training ARGS`` that dies like a killed process at batch B of epoch E.

    python tests/crashing_training.py E:B fit --arch lenet5 ...

The crash is injected from the test side: this script wraps ``training.kit.make_callbacks`` (the
callbacks both trainers use) to add one that calls ``os._exit(75)`` (no cleanup, no flush, as a
SIGKILL would), then runs the command line as ``python -m training`` does. The training code has
no hook for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
EXIT_CODE = 75


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
