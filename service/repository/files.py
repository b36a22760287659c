"""Checksums of a version's files and atomic writes (``write_json``, ``replace_file``,
``replace_folder``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from service.repository.layout import METADATA_FILE


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
