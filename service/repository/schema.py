"""The metadata schema of a version (``metadata.json``) and the error of an export that breaks the
repository contract (``InvalidExport``)."""

from __future__ import annotations

import json
from pathlib import Path

from service.repository.layout import METADATA_FILE, is_valid_name

REQUIRED_KEYS = (
    "name",
    "version",
    "architecture",
    "labels",
    "input_size",
    "params",
    "flops",
    "dataset",
    "metrics",
    "command",
    "created",
    "signatures",
    "preprocessing",
)
"""What every export's ``metadata.json`` holds (``training.export`` writes them all). What an export
cannot know (an imported model's dataset, its held-out metrics without data: ``training.import_model``)
is ``null`` (metrics: ``top1`` / ``top5`` null) and named, with the reason, in the optional
``"unknown": {key: why}``."""
SERVING_KEYS = ("labels", "input_size")
MAX_METADATA_BYTES = 4 * 1024 * 1024
"""The largest ``metadata.json`` read (ImageNet-21k's labels take ~0.3 MB): a larger one is refused
before it is parsed, so a planted file cannot make every load and every description costly."""
MAX_INPUT_SIDE = 2048
"""The largest height or width of a model's input: a server warms a model up at every batch size
(32 images of 2048x2048 take 400 MB), so a planted ``input_size`` cannot make a load take the
machine's memory."""
RUNTIMES = {"tensorflow": ("fp32", "bf16"), "openvino": ("fp32", "bf16", "int8")}
"""``metadata.json["runtimes"][...]``: the runtimes and precisions an entry may name."""
RUNTIME_OPTIONS = {"INFERENCE_PRECISION_HINT": ("f32", "bf16", "f16")}
"""The compile options an entry's ``config`` may set, with their values (``training.optimize``
writes only the precision hint). Anything else (OpenVINO's ``CACHE_DIR``, thread or stream counts)
is refused: options from a file must not write elsewhere or take the machine's threads."""
"""What a server needs at the least (an export of an older convzoo may lack the rest)."""


class InvalidExport(ValueError):
    """A version folder or ``metadata.json`` that breaks the contract; the message says why."""


# ------------------------------------------------------------------------------- layout


def validate_metadata(metadata: object, where: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """``metadata`` if it follows the schema (``required`` keys present, known keys well typed);
    ``InvalidExport`` naming ``where`` and the first problem otherwise."""
    if not isinstance(metadata, dict):
        raise InvalidExport(f"{where}: metadata.json is not a JSON object")
    missing = [key for key in required if key not in metadata]
    if missing:
        raise InvalidExport(f"{where}: metadata.json lacks required keys: {', '.join(map(repr, missing))}")
    labels = metadata.get("labels")
    if "labels" in metadata and not (
        isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)
    ):
        raise InvalidExport(f"{where}: metadata.json has no list of class names in 'labels'")
    if "labels" in metadata and len(set(labels)) != len(labels):
        raise InvalidExport(f"{where}: metadata.json 'labels' are not distinct")
    size = metadata.get("input_size")
    if "input_size" in metadata and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= MAX_INPUT_SIDE for x in size)
    ):
        raise InvalidExport(
            f"{where}: metadata.json 'input_size' is not [height, width] (each 1 to {MAX_INPUT_SIDE})"
        )
    if "name" in metadata and not (isinstance(metadata["name"], str) and is_valid_name(metadata["name"])):
        raise InvalidExport(f"{where}: metadata.json 'name' {metadata['name']!r} is not a model name")
    if "version" in metadata and not (isinstance(metadata["version"], int) and metadata["version"] >= 1):
        raise InvalidExport(f"{where}: metadata.json 'version' is not a positive integer")
    for key, value in (metadata.get("metrics") or {}).items():
        if (
            key in ("top1", "top5")
            and value is not None
            and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0)
        ):
            raise InvalidExport(f"{where}: metadata.json metrics[{key!r}] = {value!r} is not a fraction")
    unknown = metadata.get("unknown")
    if unknown is not None and not (
        isinstance(unknown, dict)
        and all(isinstance(k, str) and isinstance(v, str) and v for k, v in unknown.items())
    ):
        raise InvalidExport(f"{where}: metadata.json 'unknown' is not {{key: why it is unknown}}")
    _check_files(metadata.get("files"), where, "'files'")
    _check_runtimes(metadata.get("runtimes"), where)
    return metadata


def _check_files(files: object, where: str | Path, what: str) -> None:
    if files is None:
        return
    if not (
        isinstance(files, dict)
        and all(isinstance(r, dict) and {"bytes", "sha256"} <= r.keys() for r in files.values())
    ):
        raise InvalidExport(f"{where}: metadata.json {what} is not {{path: {{bytes, sha256}}}}")
    for path in files:
        if problem := inside_path_problem(path):
            raise InvalidExport(f"{where}: metadata.json {what} names {ascii(path)[:80]}: {problem}")


def _check_runtimes(entries: object, where: str | Path) -> None:
    """``metadata.json["runtimes"]`` (schema in ``service.runtimes``): known runtimes, paths inside
    the version folder, only ``RUNTIME_OPTIONS``."""
    if entries is None:
        return
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise InvalidExport(f"{where}: metadata.json 'runtimes' is not {{key: {{runtime, precision, ...}}}}")
    for key, entry in entries.items():
        runtime, precision = entry.get("runtime"), entry.get("precision")
        if precision not in RUNTIMES.get(runtime, ()):  # type: ignore[arg-type]
            raise InvalidExport(
                f"{where}: metadata.json runtimes[{ascii(key)[:40]}] names runtime "
                f"{ascii(runtime)[:40]} {ascii(precision)[:20]}; known: "
                + ", ".join(f"{r} {'/'.join(p)}" for r, p in RUNTIMES.items())
            )
        path = entry.get("path")
        if path is not None and (problem := inside_path_problem(path)):
            raise InvalidExport(f"{where}: metadata.json runtimes[{ascii(key)[:40]}].path: {problem}")
        _check_files(entry.get("files"), where, f"runtimes[{ascii(key)[:40]}].files")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidExport(f"{where}: metadata.json runtimes[{ascii(key)[:40]}].config is not an object")
        for option, value in config.items():
            if value not in RUNTIME_OPTIONS.get(option, ()):
                raise InvalidExport(
                    f"{where}: metadata.json runtimes[{ascii(key)[:40]}].config sets "
                    f"{ascii(option)[:60]}={ascii(value)[:60]}; allowed: "
                    + "; ".join(f"{o} in {'/'.join(v)}" for o, v in RUNTIME_OPTIONS.items())
                )


def inside_path_problem(path: object) -> str | None:
    """Why ``path`` (from ``metadata.json``) may not name something inside a version folder, or
    None: it must be a relative POSIX path of plain components (no ``..``, no ``.``, no empty
    one, no backslash, no NUL), so that joined to the folder it stays there."""
    if not isinstance(path, str) or not path:
        return "not a relative path"
    if path.startswith("/") or "\\" in path or "\0" in path or ":" in path.split("/", 1)[0]:
        return "not a relative path inside the version folder"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "leaves the version folder or is not a plain path ('..', '.', '//')"
    return None


def read_metadata(version_dir: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """``metadata.json`` of an export, parsed and validated (``validate_metadata``)."""
    path = Path(version_dir) / METADATA_FILE
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise InvalidExport(
                f"{version_dir}: metadata.json has {path.stat().st_size} bytes; the limit is "
                f"{MAX_METADATA_BYTES} (repository.MAX_METADATA_BYTES)"
            )
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidExport(f"{version_dir}: metadata.json is missing (an interrupted copy?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidExport(f"{version_dir}: metadata.json is not valid JSON ({error})") from None
    return validate_metadata(metadata, version_dir, required)


# ------------------------------------------------------------------------------- checksums
