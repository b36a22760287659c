"""Which model is served, and how an export in ``models/`` reaches the BentoML model store.

The model repository (``models/<name>/<version>/``: SavedModel + ``metadata.json``, written by
``training``) is the source of truth. The service reads models from the BentoML model store
(``$BENTOML_HOME/models``) so that ``bentoml build`` packages them into a Bento; an export is
imported into the store under the tag ``<name>:<version>`` with its whole ``metadata.json`` as
the model's custom metadata.

Resolution of ``CONVZOO_MODEL`` (``name`` or ``name:version``), in this order:

1. Inside a built Bento: the model packaged with it (``bento.yaml``); a different
   ``CONVZOO_MODEL`` is an error, since a Bento carries exactly one model.
2. ``models/<name>/`` exists: the given version, else the highest one; imported into the store
   when missing there.
3. Otherwise the BentoML store alone: the given version, else the highest one there.

With no ``CONVZOO_MODEL`` the name is ``imagenette``; while that model does not exist anywhere and
``models/`` holds exactly one model, that one is served.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import bentoml
import yaml
from bentoml.exceptions import BentoMLException, NotFound

from service.config import DEFAULT_MODEL, ServiceConfig

logger = logging.getLogger(__name__)

BENTO_YAML = Path(__file__).resolve().parents[2] / "bento.yaml"
"""Where ``bento.yaml`` lies when this file runs from a built Bento (``<bento>/src/service/``)."""


class ModelNotFound(LookupError):
    """The configured model is neither in the model repository nor in the BentoML store."""


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``"resnet50"`` -> ``("resnet50", None)``; ``"resnet50:3"`` -> ``("resnet50", "3")``."""
    name, _, version = spec.strip().partition(":")
    if not name:
        raise ValueError(f"model must be NAME or NAME:VERSION, got {spec!r}")
    if version in ("", "latest"):
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"model version must be a positive integer, got {spec!r}")
    return name, str(int(version))


def repository_versions(models_dir: Path, name: str) -> list[int]:
    """Complete exported versions of ``name`` in the repository (those with a metadata.json)."""
    folder = Path(models_dir) / name
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name) for p in folder.iterdir()
        if p.name.isdigit() and (p / "metadata.json").is_file() and (p / "saved_model.pb").is_file()
    )


def repository_names(models_dir: Path) -> list[str]:
    """Model names with at least one complete version in the repository."""
    if not Path(models_dir).is_dir():
        return []
    return sorted(p.name for p in Path(models_dir).iterdir() if repository_versions(models_dir, p.name))


def store_versions(name: str) -> list[int]:
    """Integer versions of ``name`` in the BentoML model store."""
    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    return sorted(int(m.tag.version) for m in models if m.tag.version and m.tag.version.isdigit())


def import_export(models_dir: Path, name: str, version: str | int) -> bentoml.Model:
    """Import ``models_dir/name/version`` into the BentoML store as ``name:version`` (idempotent)."""
    tag = f"{name}:{version}"
    try:
        return bentoml.models.get(tag)
    except NotFound:
        pass
    source = Path(models_dir) / name / str(version)
    metadata_file = source / "metadata.json"
    if not metadata_file.is_file():
        raise ModelNotFound(f"no exported model at {source} (metadata.json missing)")
    metadata = json.loads(metadata_file.read_text())
    try:
        with bentoml.models.create(
            tag, labels={"project": "convzoo"}, metadata=metadata
        ) as model:
            shutil.copytree(source, model.path, dirs_exist_ok=True)
    except BentoMLException:
        # Another process imported the same export meanwhile: that copy is as good as ours.
        return bentoml.models.get(tag)
    logger.info("imported %s into the BentoML model store as %s", source, tag)
    return bentoml.models.get(tag)


def resolve_model(config: ServiceConfig) -> str:
    """The BentoML tag ``name:version`` to serve (see the module docstring for the rules)."""
    if BENTO_YAML.is_file():
        return _packaged_model(config)
    name, version = _default_name(config)
    if repository_versions(config.models_dir, name):
        version = version or str(repository_versions(config.models_dir, name)[-1])
        return str(import_export(config.models_dir, name, version).tag)
    if version is None and store_versions(name):
        version = str(store_versions(name)[-1])
    if version is None:
        raise ModelNotFound(_not_found_message(config, name))
    try:
        return str(bentoml.models.get(f"{name}:{version}").tag)
    except NotFound:
        raise ModelNotFound(_not_found_message(config, f"{name}:{version}")) from None


def _default_name(config: ServiceConfig) -> tuple[str, str | None]:
    name, version = parse_model_spec(config.model)
    if name != DEFAULT_MODEL or repository_versions(config.models_dir, name) or store_versions(name):
        return name, version
    available = repository_names(config.models_dir)
    if len(available) == 1:
        logger.warning(
            "default model %r not found; serving the only model in %s: %r",
            DEFAULT_MODEL, config.models_dir, available[0],
        )
        return available[0], None
    return name, version


def _packaged_model(config: ServiceConfig) -> str:
    info = yaml.safe_load(BENTO_YAML.read_text())
    tags = sorted({model["tag"] for svc in info["services"] for model in svc.get("models", [])})
    if len(tags) != 1:
        raise ModelNotFound(f"{BENTO_YAML} should list exactly one model, found {tags}")
    name, version = parse_model_spec(config.model)
    packaged_name, _, packaged_version = tags[0].partition(":")
    if config.model != DEFAULT_MODEL and (
        name != packaged_name or version not in (None, packaged_version)
    ):
        raise ModelNotFound(
            f"this Bento packages {tags[0]}, but CONVZOO_MODEL={config.model}; "
            "build another Bento for that model"
        )
    return tags[0]


def _not_found_message(config: ServiceConfig, wanted: str) -> str:
    available = repository_names(config.models_dir)
    return (
        f"model {wanted!r} is neither in {config.models_dir} nor in the BentoML model store. "
        f"Models in the repository: {available or 'none'}. Train and export one "
        "(python -m training fit ...) or set CONVZOO_MODEL=name[:version]."
    )
