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

Safety (the service refuses to start, with one line naming the folder and the reason):

- A model name is letters, digits, ``_``, ``.`` and ``-`` (starting with a letter or digit), so
  ``../x``, ``/etc`` or ``a/b`` are refused before any path is built; a model or version folder
  that is a symbolic link, a version folder holding one, or a ``metadata.json`` naming a path that
  leaves its folder is refused too (``repository.containment_problem``: the one containment check
  of every load, this one included).
- Every version folder (digits only) is checked before it is served or imported
  (``check_export``): ``metadata.json`` follows the schema of ``service.repository``
  (docs/design.md, contract 1), every file it records matches its size and SHA-256,
  ``saved_model.pb`` is a complete protocol buffer, every ``variables/`` shard is there. A folder
  that fails is never skipped silently: an interrupted copy must not hide behind an older version.
  (``training.export`` writes to a hidden ``.tmp-*`` folder and renames it into place, so an
  interrupted *export* never leaves a digits-only folder.)
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import bentoml
import yaml
from _bentoml_sdk.models import BentoModel, Model
from bentoml.exceptions import BentoMLException, NotFound

from service import repository
from service.config import DEFAULT_MODEL, ServiceConfig

logger = logging.getLogger(__name__)

BENTO_YAML = Path(__file__).resolve().parents[3] / "bento.yaml"
"""Where ``bento.yaml`` lies when this file runs from a built Bento (``<bento>/src/service/serving/``)."""


class ModelNotFound(LookupError):
    """The configured model is neither in the model repository nor in the BentoML store."""


def model_folder(models_dir: Path, name: str, version: str | int | None = None) -> Path:
    """``models_dir/name[/version]``, refused when the name or version is not one, or when the
    model folder is a symbolic link (the version folder is checked by ``check_export``)."""
    if not repository.is_valid_name(name) or (
        version is not None and not repository.is_version_name(str(version))
    ):
        raise repository.InvalidExport(f"{name!r} version {version!r} is not a model name and version")
    root = Path(models_dir)
    if (root / name).is_symlink():
        raise repository.InvalidExport(
            f"{root / name} is a symbolic link (to {(root / name).resolve()}); models are served "
            f"only from inside the model repository {root}"
        )
    return root / name if version is None else root / name / str(version)


def check_export(folder: Path, root: Path | None = None) -> dict:
    """The metadata of a complete export at ``folder``; raises ``repository.InvalidExport`` saying why not.

    First the one containment check (``repository.containment_problem``): with ``root`` (the
    model repository), ``folder`` is ``root/<name>/<version>`` reached without a symbolic link;
    always, it holds only plain files and folders, and every path its ``metadata.json`` names
    stays inside it. Then, TensorFlow-free: ``metadata.json`` follows the schema
    (``service.repository``; at the least ``labels`` and ``input_size``), every file it records
    under ``files`` has its size and SHA-256 (one flipped byte in a variables shard is refused),
    ``saved_model.pb`` walks as a protocol buffer to its last byte, and ``variables/`` has its
    index and every data shard the index's name promises (``variables.data-0000i-of-0000N``): the
    last two also for exports older than the checksums.
    """
    folder = Path(folder)
    if problem := repository.containment_problem(folder, root):
        raise repository.InvalidExport(problem)
    metadata = repository.read_metadata(folder, required=repository.SERVING_KEYS)
    graph = folder / "saved_model.pb"
    if not graph.is_file() or graph.stat().st_size == 0:
        raise repository.InvalidExport(f"{folder}: saved_model.pb is missing or empty (an interrupted copy?)")
    if problem := _protobuf_problem(graph.read_bytes()):
        raise repository.InvalidExport(f"{folder}: saved_model.pb is corrupt or truncated ({problem})")
    _check_variables(folder / "variables")
    if metadata.get("files") and (problem := repository.checksum_problem(folder, metadata["files"])):
        raise repository.InvalidExport(problem)
    return metadata


def _protobuf_problem(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed protocol buffer message at the top level, or None."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire_type = key & 7
        if key >> 3 == 0 or wire_type not in (0, 1, 2, 5):
            return f"bad field key {key} at byte {position}"
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            position += length
        else:
            position += 8 if wire_type == 1 else 4
        if position > len(data):
            return f"a field runs past the end of the file ({len(data)} bytes)"
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(data) and shift < 64:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7
    return value, len(data) + 1  # unterminated: reported as running past the end


def _check_variables(folder: Path) -> None:
    if not (folder / "variables.index").is_file():
        raise repository.InvalidExport(f"{folder.parent}: variables/variables.index is missing")
    shards = sorted(folder.glob("variables.data-*-of-*"))
    if not shards:
        raise repository.InvalidExport(f"{folder.parent}: variables/ has no variables.data-* shard")
    expected = int(shards[0].name.rsplit("-of-", 1)[1])
    missing = [
        f"variables.data-{i:05d}-of-{expected:05d}"
        for i in range(expected)
        if not (folder / f"variables.data-{i:05d}-of-{expected:05d}").is_file()
    ]
    if missing:
        raise repository.InvalidExport(f"{folder.parent}: variables/ lacks {', '.join(missing)}")


def store_versions(name: str) -> list[int]:
    """Integer versions of ``name`` in the BentoML model store."""
    try:
        models = bentoml.models.list(name)
    except NotFound:
        return []
    return sorted(int(m.tag.version) for m in models if repository.is_version_name(m.tag.version or ""))


def import_export(models_dir: Path, name: str, version: str | int) -> bentoml.Model:
    """Import ``models_dir/name/version`` into the BentoML store as ``name:version`` (idempotent)."""
    tag = f"{name}:{version}"
    source = model_folder(models_dir, name, version)
    if not source.exists():
        raise ModelNotFound(f"no exported model at {source}")
    # even when imported before: the repository is the truth
    check_export(source, Path(models_dir))
    # what is checked and copied is a fixed snapshot: nothing swapped in meanwhile is read
    private = repository.snapshot(models_dir, name, int(version))
    try:
        return _import(private, source, tag)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _import(private: Path, source: Path, tag: str) -> bentoml.Model:
    """``import_export`` of the snapshot ``private`` of ``source``."""
    metadata = check_export(private)
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        pass
    else:
        if same_export(private, Path(stored.path)):
            return stored
        # Another export under the same name:version (a model re-trained elsewhere, a test run
        # in this BENTOML_HOME): the repository wins, or the service would answer with the
        # wrong weights.
        logger.warning("the model store's %s differs from %s: importing it again", tag, source)
        bentoml.models.delete(tag)
    try:
        with bentoml.models.create(
            tag, labels={"project": "convzoo"}, metadata=without_nulls(metadata)
        ) as model:
            shutil.copytree(private, model.path, dirs_exist_ok=True)
    except BentoMLException:
        # Another process imported the same export meanwhile: that copy is as good as ours.
        return bentoml.models.get(tag)
    logger.info("imported %s into the BentoML model store as %s", source, tag)
    return bentoml.models.get(tag)


def without_nulls(value):
    """``metadata.json`` as BentoML's model metadata, which refuses null: every null entry left out
    (an unknown value, e.g. an imported model's metrics without held-out data, is then absent from
    the store's metadata; the copied ``metadata.json`` keeps it, with ``unknown`` saying why)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value if item is not None]
    return value


def same_export(a: Path, b: Path) -> bool:
    """Whether two export folders hold the same model: same SavedModel fingerprint (a checksum
    of the graph and the variables' layout) and the same metadata.json."""
    return all(
        (a / name).is_file() and (b / name).is_file() and (a / name).read_bytes() == (b / name).read_bytes()
        for name in ("fingerprint.pb", "metadata.json")
    )


def resolve_model(config: ServiceConfig) -> str:
    """The BentoML tag ``name:version`` to serve (see the module docstring for the rules)."""
    if BENTO_YAML.is_file():
        return _packaged_model(config)
    name, version = _default_name(config)
    model_folder(config.models_dir, name)  # refuses a name that resolves outside the repository
    if repository.version_folders(config.models_dir, name):
        version = version or str(repository.version_folders(config.models_dir, name)[-1])
        model = import_export(config.models_dir, name, version)
    else:
        if version is None and store_versions(name):
            version = str(store_versions(name)[-1])
        if version is None:
            raise ModelNotFound(_not_found_message(config, name))
        try:
            model = bentoml.models.get(f"{name}:{version}")
        except NotFound:
            raise ModelNotFound(_not_found_message(config, f"{name}:{version}")) from None
    check_export(Path(model.path))  # the store's copy too (an interrupted import, a bad disk)
    return str(model.tag)


def resolve_model_or_exit(config: ServiceConfig) -> str:
    """``resolve_model``, or one line on stderr naming the folder and the reason, then exit 2.

    For service start-up: a traceback would bury the reason; BentoML prints this line and stops.
    """
    try:
        return resolve_model(config)
    except (ModelNotFound, ValueError) as error:  # InvalidExport is a ValueError
        print(f"convzoo: cannot serve a model: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class ServedModel(Model[bentoml.Model]):
    """The model ``CONVZOO_MODEL`` names, as a BentoML model reference (``bentoml.models.BentoModel``)
    that is resolved (``resolve_model_or_exit``) on first use, not when it is declared: when
    ``bentoml serve`` starts (it resolves its services' models before the workers start), when a
    worker constructs the service, when ``bentoml build`` packages it."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config

    @functools.cached_property
    def reference(self) -> BentoModel:
        return BentoModel(resolve_model_or_exit(self.config))

    @property
    def tag(self) -> bentoml.Tag:
        return self.reference.tag

    @property
    def stored(self) -> bentoml.Model | None:
        return self.reference.stored

    def to_info(self, alias: str | None = None) -> Any:
        return self.reference.to_info(alias)

    @classmethod
    def from_info(cls, info: Any) -> BentoModel:
        return BentoModel.from_info(info)

    def to_create_schema(self) -> Any:
        return self.reference.to_create_schema()

    def resolve(self, base_path: Any = None) -> bentoml.Model:
        return self.reference.resolve(base_path)

    def __str__(self) -> str:
        return str(self.tag)


def _default_name(config: ServiceConfig) -> tuple[str, int | None]:
    name, version = repository.parse_model_spec(config.model)
    if name != DEFAULT_MODEL or repository.version_folders(config.models_dir, name) or store_versions(name):
        return name, version
    available = repository.model_names(config.models_dir)
    if len(available) == 1:
        logger.warning(
            "default model %r not found; serving the only model in %s: %r",
            DEFAULT_MODEL,
            config.models_dir,
            available[0],
        )
        return available[0], None
    return name, version


def _packaged_model(config: ServiceConfig) -> str:
    info = yaml.safe_load(BENTO_YAML.read_text())
    tags = sorted({model["tag"] for svc in info["services"] for model in svc.get("models", [])})
    if len(tags) != 1:
        raise ModelNotFound(f"{BENTO_YAML} should list exactly one model, found {tags}")
    name, version = repository.parse_model_spec(config.model)
    packaged_name, _, packaged_version = tags[0].partition(":")
    if config.model != DEFAULT_MODEL and (
        name != packaged_name or (version is not None and str(version) != packaged_version)
    ):
        raise ModelNotFound(
            f"this Bento packages {tags[0]}, but CONVZOO_MODEL={config.model}; "
            "build another Bento for that model"
        )
    return tags[0]


def _not_found_message(config: ServiceConfig, wanted: str) -> str:
    available = repository.model_names(config.models_dir)
    return (
        f"model {wanted!r} is neither in {config.models_dir} nor in the BentoML model store. "
        f"Models in the repository: {available or 'none'}. Train and export one "
        "(python -m training fit ...) or set CONVZOO_MODEL=name[:version]."
    )
