"""Names, versions and version folders of the repository: the one parser of ``name[:version]``
(``parse_model_spec``, ``parse_version_spec``, ``parse_version``) and the folders that hold versions."""

from __future__ import annotations

import re
from pathlib import Path

METADATA_FILE = "metadata.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_FOLDER_DEPTH = 16
"""How deep a version folder may nest (an export nests 3 deep): ``snapshot`` holds one open folder
per level."""


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
