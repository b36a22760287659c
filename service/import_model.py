"""Import an export from the model repository into the BentoML model store.

    python -m service.import_model                  # the model the service would serve
    python -m service.import_model resnet50         # the latest version of models/resnet50/
    python -m service.import_model resnet50:2 --models-dir /path/to/models

The store lives in ``$BENTOML_HOME/models`` (default ``~/bentoml``); ``bentoml models list``
shows what is there. Importing an existing ``name:version`` again does nothing, unless the
store's copy differs from the repository's export (another model under the same tag): then the
repository's export replaces it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from service.config import load_config
from service.serving.model_store import ModelNotFound, resolve_model


def main(argv: list[str] | None = None) -> int:
    config = load_config()
    parser = argparse.ArgumentParser(
        prog="python -m service.import_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=config.model,
        help=f"NAME or NAME:VERSION (default: {config.model}, the latest version)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=config.models_dir,
        help=f"the model repository (default: {config.models_dir})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = dataclasses.replace(config, model=args.model, models_dir=args.models_dir)
    try:
        tag = resolve_model(config)
    except (ModelNotFound, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
