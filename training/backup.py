"""Crash-safe checkpoints: a training run killed at any instant resumes from its last finished epoch.

Keras' ``BackupAndRestore`` overwrites ``backup/latest.weights.h5`` in place: a process killed while
it writes leaves a damaged file, and every later run fails on it (``OSError: Unable to
synchronously open file (bad object header version number)``): the run is lost.
``CrashSafeBackup`` writes each backup beside the last one and commits it in two renames:

1. the weights and optimizer state go to ``backup/.partial-epoch-NNNN.weights.h5``, which is
   flushed to disk (fsync) and renamed to ``backup/epoch-NNNN.weights.h5``;
2. ``backup/training_metadata.json`` (Keras' name, which ``training.runs.resumable`` looks for) is
   replaced atomically (a sibling, fsynced, renamed): ``{"epoch": N, "batch": 0, "weights":
   "epoch-NNNN.weights.h5", "previous": {...the backup before}}``. This rename is the commit;
3. only then are older files removed; the previous backup is kept as a fall-back.

A kill before the commit leaves the previous backup in force (a stray ``.partial-*`` file is
removed by the next backup); a kill after it leaves the new one. On restore, a backup that does not
load (damaged on disk, or a ``latest.weights.h5`` of Keras' own callback cut by a kill) is skipped
with one line saying so, and the previous good one is loaded; with none left, training starts
over from epoch 1 (the CSV log is appended to, and ``training.runs.read_log`` keeps the last row
of an epoch trained twice).

``CrashSafeCheckpoint`` is ``keras.callbacks.ModelCheckpoint`` whose file (``best.keras``) is
written aside and renamed the same way, so a kill while it saves never leaves a best checkpoint
that cannot be loaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import keras

from service.repository import replace_file
from training.quiet import error_line

METADATA = "training_metadata.json"  # Keras' name for it
LEGACY_WEIGHTS = "latest.weights.h5"  # what keras.callbacks.BackupAndRestore writes
PARTIAL = ".partial-"
WEIGHTS = re.compile(r"epoch-(\d+)(?:-batch-(\d+))?\.weights\.h5")


def weights_name(epoch: int, batch: int = 0) -> str:
    return f"epoch-{epoch:04d}" + (f"-batch-{batch}" if batch else "") + ".weights.h5"


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically: a ``.partial-`` sibling, fsynced, renamed over it."""
    partial = path.with_name(PARTIAL + path.name)
    partial.write_text(json.dumps(data) + "\n", encoding="utf-8")
    replace_file(partial, path)


def read_metadata(backup_dir: Path) -> dict | None:
    """The committed backup's record, None without one; a damaged record raises ValueError."""
    path = Path(backup_dir) / METADATA
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        int(record["epoch"])
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path.name} is unreadable ({first_line(error)})") from None
    return record


def first_line(error: BaseException, limit: int = 160) -> str:
    """``error`` as one line (``training.quiet.error_line``), cut to ``limit`` characters."""
    text = error_line(error)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CrashSafeBackup(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` (same arguments and behaviour, the same
    ``training_metadata.json``) whose backups survive a kill at any instant (see the module)."""

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=False):
        super().__init__(str(backup_dir), save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.backup_path = Path(backup_dir)

    # ------------------------------------------------------------------ save

    def _save_model(self):
        folder = self.backup_path
        folder.mkdir(parents=True, exist_ok=True)
        epoch, batch = self._current_epoch, self._last_batch_seen
        name = weights_name(epoch, batch)
        partial = folder / (PARTIAL + name)
        self.model.save_weights(str(partial), overwrite=True)
        replace_file(partial, folder / name)
        try:
            committed = read_metadata(folder)
        except ValueError:
            committed = None
        previous = None
        if committed and committed.get("weights", LEGACY_WEIGHTS) == name:  # this epoch, saved again
            previous = committed.get("previous")
        elif committed:
            previous = {key: committed[key] for key in ("epoch", "batch") if key in committed}
            previous["weights"] = committed.get("weights", LEGACY_WEIGHTS)
        if previous and not (folder / previous["weights"]).is_file():
            previous = None
        record = {"epoch": epoch, "batch": batch, "weights": name}
        if previous:
            record["previous"] = previous
        write_json(folder / METADATA, record)  # the commit
        keep = {name, METADATA} | ({previous["weights"]} if previous else set())
        for path in folder.iterdir():
            if path.name not in keep and (path.name.startswith(PARTIAL) or path.name.endswith(".h5")):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ restore

    def candidates(self) -> tuple[list[tuple[int, Path]], list[str]]:
        """The backups to try, best first, as (epoch, weights file); and the problems met on the way.

        Without a record nothing was committed (the first backup was cut short): nothing to resume,
        as ``training.runs.resumable`` says too; a file it left is removed by the next backup."""
        folder, problems = self.backup_path, []
        if not (folder / METADATA).exists():
            return [], []
        try:
            record = read_metadata(folder)
        except ValueError as error:
            record = None
            problems.append(str(error))
        found: list[tuple[int, Path]] = []
        for entry in (record, (record or {}).get("previous")):
            if entry:
                found.append((int(entry["epoch"]), folder / entry.get("weights", LEGACY_WEIGHTS)))
        # Then complete files the record does not name (a kill between the two renames, or a
        # damaged record), newest first.
        named = {path.name for _, path in found}
        others = []
        for path in folder.glob("epoch-*.weights.h5"):
            match = WEIGHTS.fullmatch(path.name)
            if match and path.name not in named:
                others.append((int(match[1]), path))
        return found + sorted(others, reverse=True), problems

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, your model must be built before you call `fit()`."
            )
        if not self.backup_path.is_dir():
            return
        found, problems = self.candidates()
        if not found:
            if problems:
                print(f"backup: {problems[0]}; no backup to resume from: training from the start", flush=True)
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = list(self.model.weights) + (list(optimizer.variables) if optimizer is not None else [])
        initial = [keras.ops.convert_to_numpy(v) for v in variables]  # in case nothing loads
        for epoch, path in found:
            try:
                if not path.is_file():
                    raise FileNotFoundError("missing")
                self.model.load_weights(str(path))
            except Exception as error:  # a damaged file: h5py's OSError, a KeyError, a ValueError...
                problems.append(f"{path.name} does not load ({first_line(error)})")
                continue
            if problems:
                print(f"backup: {problems[0]}; resuming from {path.name} (epoch {epoch}) instead", flush=True)
            self.model._initial_epoch = epoch
            return
        for variable, value in zip(variables, initial, strict=True):
            variable.assign(value)
        print(f"backup: {problems[0]}; no loadable backup left: training from the start", flush=True)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and self.backup_path.is_dir():
            shutil.rmtree(self.backup_path, ignore_errors=True)


class CrashSafeCheckpoint(keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` (a fixed file path) whose file is written aside, flushed
    and renamed into place: a kill while it saves leaves the previous checkpoint whole."""

    def _save_model(self, epoch, batch, logs):
        final = Path(self.filepath)
        partial = final.with_name(PARTIAL + final.name)
        self.filepath = str(partial)
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = str(final)
        if partial.is_file():
            replace_file(partial, final)
