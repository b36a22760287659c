"""The model repository (docs/design.md, "Contract 1"): its layout, versions, metadata schema,
checksums and atomic writes, in one TensorFlow-free module.

Used by everything that reads or writes ``models/``: ``training.export`` and ``training.optimize``
write it, ``service.model_store`` checks an export before serving it (this module is packaged into
the Bento with ``service/``), ``benchmarks.modelrepo`` and the tests find exports through it.

    models/<name>/<version>/          version: a positive integer (TensorFlow Serving's layout)
        saved_model.pb, variables/, fingerprint.pb, assets/   the SavedModel (canonical)
        metadata.json                 ``REQUIRED_KEYS``; ``files``: bytes and SHA-256 of every
                                      file above, recorded at export
        openvino/<precision>/         derived forms (``training.optimize``), each described with
                                      its own files in ``metadata.json["runtimes"]``

- A **name** is letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit: never a
  path. A **version** folder is digits only; it is **complete** when it holds ``saved_model.pb``
  and ``metadata.json``. Writers publish a version by renaming a hidden ``.tmp-*`` sibling into
  place, so an interrupted export never looks like a version.
- ``metadata.json`` is replaced atomically (``write_json``: a sibling, fsynced, renamed); a derived
  folder (``openvino/<precision>/``) is written as a hidden sibling and published by
  ``replace_folder`` (fsynced, renamed into place).
- ``checksum_problem`` compares a folder with its recorded files: a missing, truncated or
  corrupted file (one flipped byte in a ``variables.data-*`` shard) is named in one line.
- ``containment_problem`` is the one containment rule of every load (docs/design.md, "Serving a repository"):
  a version folder is reached from the repository without a symbolic link, holds only plain files
  and folders (no link, no FIFO, no device), and every path ``metadata.json`` names
  (``files``, ``runtimes[...].path`` and their ``files``) is relative and stays inside it
  (``validate_metadata``); runtime options are limited to ``RUNTIME_OPTIONS``, none of which names
  a file or folder, so metadata never steers a read or a write elsewhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

METADATA_FILE = "metadata.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
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
MAX_FOLDER_DEPTH = 16
"""How deep a version folder may nest (an export nests 3 deep): ``snapshot`` holds one open folder
per level."""
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


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(name))


def parse_model_spec(spec: str) -> tuple[str, int | None]:
    """``"resnet50"`` -> ``("resnet50", None)``; ``"resnet50:3"`` -> ``("resnet50", 3)``;
    ``"resnet50:latest"`` -> ``("resnet50", None)``. ``ValueError`` for anything else (a path, an
    empty name, a version that is not a positive integer)."""
    name, _, version = spec.strip().partition(":")
    if not name:
        raise ValueError(f"model must be NAME or NAME:VERSION, got {spec!r}")
    if not is_valid_name(name):
        raise ValueError(
            f"model name {name!r} is not allowed: letters, digits, '_', '.' and '-' only, "
            "starting with a letter or digit (a name, never a path)"
        )
    return name, parse_version_spec(version)


def parse_version_spec(text: str | int | None) -> int | None:
    """The version a client named: ``None``, ``""`` and ``"latest"`` -> None (the highest served),
    else ``parse_version``'s number (``ValueError`` for anything else). The one rule for a version
    in a form field, a setting and a URL path."""
    if text is None or text in ("", "latest"):
        return None
    return parse_version(text)


MAX_VERSION_DIGITS = 9
"""A version is 1 to 9 ASCII digits without a leading zero (1 to 999,999,999): the one rule for
folder names, URL paths, form fields, JSON and settings. ``str.isdigit`` is not it: it holds for
``'²'``, ``'٢'`` and ``'２'``, and ``int()`` then raises or quietly reads another version."""
_VERSION = re.compile(rf"[1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}}")


def is_version_name(text: str) -> bool:
    """Whether ``text`` names a version: ASCII digits only, 1 to ``MAX_VERSION_DIGITS`` of them,
    no leading zero (so one version has one name)."""
    return bool(_VERSION.fullmatch(text))


def parse_version(text: str | int) -> int:
    """The version ``text`` names (``is_version_name``); ``ValueError`` with a one-line reason
    (the value shown cut to 20 characters, as ``ascii``) for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not is_version_name(text):
        shown = ascii(text[:20] if isinstance(text, str) else text)
        raise ValueError(
            f"a model version is a positive integer of at most {MAX_VERSION_DIGITS} ASCII digits "
            f"(no leading zero), got {shown}"
        )
    return int(text)


def version_folders(models_dir: str | Path, name: str) -> list[int]:
    """Version folders (``is_version_name``) of ``name``, complete or not, in increasing order."""
    folder = Path(models_dir) / name
    if not is_valid_name(name) or not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if is_version_name(p.name) and p.is_dir())


def is_complete(version_dir: str | Path) -> bool:
    """A finished export: a numbered folder with both the SavedModel and its metadata."""
    version_dir = Path(version_dir)
    return (
        is_version_name(version_dir.name)
        and (version_dir / "saved_model.pb").is_file()
        and (version_dir / METADATA_FILE).is_file()
    )


def complete_versions(models_dir: str | Path, name: str) -> list[int]:
    """Versions of ``name`` whose folder ``is_complete``, in increasing order."""
    return [v for v in version_folders(models_dir, name) if is_complete(Path(models_dir) / name / str(v))]


def latest_version(models_dir: str | Path, name: str) -> int | None:
    """The highest complete version of ``name``, or None."""
    return max(complete_versions(models_dir, name), default=None)


def model_names(models_dir: str | Path) -> list[str]:
    """Names with at least one version folder."""
    if not Path(models_dir).is_dir():
        return []
    return sorted(p.name for p in Path(models_dir).iterdir() if version_folders(models_dir, p.name))


def next_version(models_dir: str | Path, name: str, version: int | None = None) -> int:
    """``version`` if free, else (None) the one after every numbered folder, complete or not."""
    if version is None:
        return max(version_folders(models_dir, name), default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    folder = Path(models_dir) / name / str(version)
    if folder.exists():
        raise FileExistsError(
            f"{folder} already exists and versions are never overwritten; omit --version to "
            f"export as {next_version(models_dir, name)}"
        )
    return version


# ------------------------------------------------------------------------------- metadata


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


def containment_problem(version_dir: str | Path, root: str | Path | None = None) -> str | None:
    """Why ``version_dir`` may not be loaded, or None: the one containment check of every load.

    With ``root`` (the model repository), ``version_dir`` is ``root/<name>/<version>`` and neither
    ``<name>`` nor ``<version>`` is a symbolic link (``root`` itself may be one: it is the
    operator's setting). Always: ``version_dir`` is a real folder and everything under it is a
    plain file or folder: no symbolic link (in or out), no FIFO, socket or device, which a reader
    would follow elsewhere or block on."""
    version_dir = Path(version_dir)
    if root is not None:
        try:
            relative = version_dir.relative_to(root)
        except ValueError:
            return f"{version_dir} is not inside the model repository {root}"
        step = Path(root)
        for part in relative.parts:
            step = step / part
            if part in ("", ".", "..") or step.is_symlink():
                return (
                    f"{step} is a symbolic link (or '..'); models are served only from inside the "
                    f"repository {root}"
                )
    if version_dir.is_symlink() or not version_dir.is_dir():
        return f"{version_dir} is not a folder (a symbolic link, or missing)"
    try:
        for folder, dirs, files in os.walk(version_dir, onerror=_raise):  # never follows links
            for entry in dirs + files:
                path = Path(folder) / entry
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file or folder"
                    return f"{printable(path)} is {kind}; a version folder holds only its own files"
    except OSError as error:
        return f"{version_dir} cannot be listed ({error.strerror or error}): changed while being read?"
    return None


def printable(path: str | Path) -> str:
    """``path`` for a log line: control characters escaped (a file named ``a\nFAKE LINE`` in a
    version folder must not start a line of its own)."""
    return _CONTROL.sub(lambda match: ascii(match.group())[1:-1], str(path))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _raise(error: OSError) -> None:
    raise error


SNAPSHOT_PREFIX = ".convzoo-load-"
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def snapshot(models_dir: str | Path, name: str, version: int) -> Path:
    """A private, fixed copy of ``models_dir/name/version`` to check and load, so that nothing
    swapped in the repository between the check and the load (a folder or file replaced by a
    symbolic link, then put back) is ever read: the walk opens each folder relative to its parent
    without following links (``O_NOFOLLOW``), and hard-links each plain file into a hidden sibling
    folder of the repository (``.convzoo-load-<pid>-*``: no bytes copied), or copies it to a
    temporary folder where links cannot be made (another file system, a read-only repository).
    ``InvalidExport`` for a link or a special file met on the way. The caller removes the copy
    (``shutil.rmtree``) once loaded."""
    _remove_stale_snapshots(Path(models_dir))
    root = os.open(models_dir, os.O_RDONLY | os.O_DIRECTORY)  # the operator's setting: may be a link
    try:
        model = _open_folder(name, root, Path(models_dir))
        try:
            folder = _open_folder(str(version), model, Path(models_dir, name))
        finally:
            os.close(model)
        try:
            target = Path(models_dir, f"{SNAPSHOT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            try:
                target.mkdir()
                _copy_tree(folder, target, Path(models_dir, name, str(version)), link=True)
            except OSError:  # no hard links here: a real copy, in the temporary folder
                shutil.rmtree(target, ignore_errors=True)
                target = Path(tempfile.mkdtemp(prefix=f"{SNAPSHOT_PREFIX}{os.getpid()}-"))
                _copy_tree(folder, target, Path(models_dir, name, str(version)), link=False)
        finally:
            os.close(folder)
    except BaseException:
        if "target" in locals():
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        os.close(root)
    return target


def _open_folder(name: str, parent: int, shown: Path) -> int:
    try:
        return os.open(name, _NOFOLLOW_DIR, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidExport(
                f"{printable(shown / name)} is a symbolic link or not a folder; models are served "
                "only from inside the repository"
            ) from None
        raise InvalidExport(f"{printable(shown / name)} cannot be opened ({error.strerror})") from None


def _copy_tree(folder: int, target: Path, shown: Path, *, link: bool, depth: int = 0) -> None:
    """Every plain file and folder under the open ``folder`` into ``target`` (``snapshot``)."""
    if depth > MAX_FOLDER_DEPTH:
        raise InvalidExport(f"{shown} nests more than {MAX_FOLDER_DEPTH} folders deep")
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            inner = _open_folder(entry.name, folder, shown)
            try:
                (target / entry.name).mkdir()
                _copy_tree(inner, target / entry.name, shown / entry.name, link=link, depth=depth + 1)
            finally:
                os.close(inner)
        elif entry.is_file(follow_symlinks=False) and link:
            os.link(entry.name, target / entry.name, src_dir_fd=folder, follow_symlinks=False)
            if not stat.S_ISREG((target / entry.name).lstat().st_mode):  # swapped meanwhile
                raise InvalidExport(f"{printable(shown / entry.name)} is not a plain file")
        elif entry.is_file(follow_symlinks=False):
            try:
                source = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            except OSError:
                raise InvalidExport(f"{printable(shown / entry.name)} is not a plain file") from None
            with os.fdopen(source, "rb") as reader:
                if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                    raise InvalidExport(f"{printable(shown / entry.name)} is not a plain file")
                with open(target / entry.name, "xb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
        else:
            kind = "a symbolic link" if entry.is_symlink() else "not a plain file or folder"
            raise InvalidExport(
                f"{printable(shown / entry.name)} is {kind}; a version folder holds only its own files"
            )


def _remove_stale_snapshots(models_dir: Path) -> None:
    """Snapshots left by a process that no longer runs (killed while loading)."""
    try:
        entries = [p for p in models_dir.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)]
    except OSError:
        return
    for path in entries:
        pid = path.name[len(SNAPSHOT_PREFIX) :].split("-", 1)[0]
        if pid.isascii() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def scan_versions(models_dir: str | Path, name: str) -> tuple[list[int], list[tuple[Path, str]]]:
    """What ``models_dir/name`` holds, as the server sees it: its version folders (increasing),
    and the entries it ignores, each with the reason: a name that is not a version
    (``is_version_name``: ``²``, ``007``), a symbolic link, a file. Hidden entries (a writer's
    ``.tmp-*``) are neither."""
    versions, ignored = [], []
    for path in sorted(Path(models_dir, name).iterdir()):
        if path.name.startswith("."):
            continue
        if not is_version_name(path.name):
            ignored.append((path, f"not a version (1 to {MAX_VERSION_DIGITS} ASCII digits, no leading zero)"))
        elif path.is_symlink():
            ignored.append((path, "a symbolic link; models are served only from inside the repository"))
        elif not path.is_dir():
            ignored.append((path, "not a folder"))
        else:
            versions.append(int(path.name))
    return sorted(versions), ignored


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


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: str | Path, exclude: tuple[str, ...] = ()) -> dict:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` (sorted), except
    the top-level entries named in ``exclude`` (files, or folders with all they hold)."""
    folder = Path(folder)
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.parts[0] in exclude or relative.parts[0].startswith("."):
            continue
        records[relative.as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    return records


def export_records(version_dir: str | Path) -> dict:
    """The files of the SavedModel export itself (not ``metadata.json``, not derived forms)."""
    return file_records(version_dir, exclude=(METADATA_FILE, "openvino"))


def checksum_problem(folder: str | Path, records: dict) -> str | None:
    """Why ``folder`` does not hold exactly the recorded files (one line), or None."""
    folder = Path(folder)
    if not records:
        return f"{folder}: no files recorded"
    for name, expected in records.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{file} has {file.stat().st_size} bytes, {expected['bytes']} recorded (truncated?)"
        if sha256(file) != expected["sha256"]:
            return f"{file} does not match its recorded SHA-256 (corrupt)"
    return None


# ------------------------------------------------------------------------------- atomic writes


def write_json(path: str | Path, data: dict) -> None:
    """Replace the JSON file ``path`` atomically (a sibling, fsynced, then renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    replace_file(tmp, path)


def replace_file(source: str | Path, target: str | Path) -> None:
    """Publish the finished file ``source`` (a sibling of ``target``) as ``target``: fsync it,
    rename it over ``target``, fsync the folder. A crash leaves the old file or the new one."""
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    os.replace(source, target)
    fsync_dir(Path(target).parent)


def fsync_tree(root: str | Path) -> None:
    """Flush every file and folder under ``root`` to disk (before a rename publishes them)."""
    for folder, _, files in os.walk(root):
        for file in files:
            with open(os.path.join(folder, file), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))


def fsync_dir(folder: str | Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_folder(tmp: str | Path, folder: str | Path) -> None:
    """Publish the finished folder ``tmp`` (a hidden sibling, e.g. ``.tmp-<name>-<pid>``) as ``folder``:
    everything in it is fsynced, then it is renamed into place and the parent folder fsynced.

    An existing ``folder`` is renamed aside first and removed last (a folder cannot be renamed over
    a non-empty one): a crash between the two renames leaves ``folder`` absent, never half-written,
    and the checksums recorded for it refuse it until it is written again."""
    tmp, folder = Path(tmp), Path(folder)
    fsync_tree(tmp)
    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
