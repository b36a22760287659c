"""The one containment rule of every load (``containment_problem``) and the private snapshot a
version is loaded from (``snapshot``)."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from service.repository.layout import MAX_FOLDER_DEPTH
from service.repository.schema import InvalidExport


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
