"""``python -m training ARGS`` that SIGKILLs itself in the middle of writing epoch E's backup.

    python tests/killed_training.py E fit --arch lenet5 ...

Keras' ``Model.save_weights`` is wrapped (from the test side: the training code has no hook for
it) so that, when it writes the backup of epoch E (``backup/.partial-epoch-000E.weights.h5``), the
file is cut to half its size and the process sends itself SIGKILL: exactly what a kill during the
write leaves on disk. ``tests/test_crash_resume.py`` uses it for the ``backup-cut`` instant.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    epoch, *argv = sys.argv[1:]
    import keras

    from training.__main__ import main as training_main

    save_weights = keras.Model.save_weights
    victim = f".partial-epoch-{int(epoch):04d}"

    def cut_short(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        path = Path(filepath)
        if path.name.startswith(victim):
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)
            print(f"\nkilled_training: SIGKILL with {path.name} half written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save_weights = cut_short
    return training_main(argv)


if __name__ == "__main__":
    sys.exit(main())
