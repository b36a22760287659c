"""Paths as shipped metadata records them: never a folder of the machine that wrote it.

An export's ``metadata.json`` travels (the default model is committed; a Bento carries it), so the
paths it names — the training command's ``--data`` / ``--runs-dir``..., the run folder, the data a
pack was made from, the data ``optimize`` measured on — are written by ``portable_path``: relative to
the repository when they lie inside it or beside it (the README's ``../shared/data/...`` layout),
else only the folder's or file's name (a dataset's name, for instance). ``local_path`` reads such a
path back: relative ones against the repository.

A leaf module (no imports from ``training``): ``training.export``, ``training.runs`` and
``training.optimize`` use it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def portable_path(path: str | Path) -> str:
    """``path`` (absolute, or relative to the working directory) relative to the repository when it
    lies inside the repository's parent folder, else its last part."""
    resolved = Path(os.path.abspath(path))
    if resolved.is_relative_to(REPO.parent):
        return Path(os.path.relpath(resolved, REPO)).as_posix()
    return resolved.name


def portable_command(command: str) -> str:
    """A recorded command line with every absolute path in it (``/x/y`` or ``--flag=/x/y``) made
    ``portable_path``; everything else as it was."""
    words = []
    for word in shlex.split(command):
        flag, equals, value = word.partition("=") if word.startswith("-") else ("", "", word)
        if value.startswith("/"):
            value = portable_path(value)
        words.append(f"{flag}{equals}{value}")
    return shlex.join(words)


def local_path(recorded: str | Path) -> Path:
    """A path ``portable_path`` recorded, on this machine: absolute ones as they are, relative ones
    against the repository (where ``portable_path`` made them relative)."""
    path = Path(recorded)
    return path if path.is_absolute() else REPO / path
