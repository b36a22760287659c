"""Find an exported model in the model repository (``models/<name>/<version>/``).

The benchmark kit reads the repository directly (docs/design.md, contract 1; through
``service.repository``), so every server and the in-process ceiling measure the very same folder.
Nothing here needs TensorFlow; the ceiling loads the model with ``service.runtimes``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from service import repository

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = Path(os.environ.get("CONVZOO_MODELS_DIR") or REPO / "models")
DEFAULT_MODEL = os.environ.get("CONVZOO_MODEL") or "imagenette"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int
    path: Path

    @property
    def spec(self) -> str:
        """``name:version``, as ``CONVZOO_MODEL`` and ``--model`` take it."""
        return f"{self.name}:{self.version}"


def versions(models_dir: Path, name: str) -> list[int]:
    """Complete exports of ``name`` (a SavedModel and a metadata.json), oldest first."""
    return repository.complete_versions(models_dir, name)


def resolve(spec: str, models_dir: Path = DEFAULT_MODELS_DIR) -> ModelRef:
    """``"name"`` (latest version) or ``"name:version"`` (``repository.parse_model_spec``) to the
    exported folder; clear error if absent."""
    name, version = repository.parse_model_spec(spec)
    available = versions(models_dir, name)
    if not available:
        names = repository.model_names(models_dir)
        raise FileNotFoundError(
            f"no exported model {name!r} in {models_dir}; models there: {names or 'none'} "
            "(export one with `python -m training fit ...`, or pass --model / --models-dir)"
        )
    if version is not None and version not in available:
        raise FileNotFoundError(f"{name} has versions {available} in {models_dir}, not {version}")
    chosen = available[-1] if version is None else version
    return ModelRef(name, chosen, Path(models_dir) / name / str(chosen))


def read_metadata(ref: ModelRef) -> dict:
    return repository.read_metadata(ref.path, required=repository.SERVING_KEYS)
