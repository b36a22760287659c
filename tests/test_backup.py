"""training/backup.py in process: what each kill instant leaves behind, and what a rerun resumes from.

The real processes killed with SIGKILL are in tests/test_crash_resume.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from training import backup
from training.backup import METADATA, CrashSafeBackup, CrashSafeCheckpoint

X = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
Y = (X.sum(axis=1, keepdims=True) > 0).astype("float32")


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    return m


def train(folder: Path, epochs: int, *callbacks) -> tuple[keras.Model, list[int]]:
    m = model()
    history = m.fit(
        X, Y, batch_size=8, epochs=epochs, callbacks=[*callbacks, CrashSafeBackup(folder)], verbose=0
    )
    return m, history.epoch


def record(folder: Path) -> dict:
    return json.loads((folder / METADATA).read_text())


def test_each_epoch_is_committed_beside_the_previous_one(tmp_path):
    folder = tmp_path / "backup"
    trained, epochs = train(folder, 3)
    assert epochs == [0, 1, 2]
    assert record(folder) == {
        "epoch": 3,
        "batch": 0,
        "weights": "epoch-0003.weights.h5",
        "previous": {"epoch": 2, "batch": 0, "weights": "epoch-0002.weights.h5"},
    }
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch-0002.weights.h5",
        "epoch-0003.weights.h5",
        METADATA,
    ]
    # A rerun resumes after epoch 3 with the same weights and optimizer state (step counter too).
    resumed, epochs = train(folder, 5)
    assert epochs == [3, 4]
    assert int(resumed.optimizer.iterations.numpy()) == 5 * 4


def test_a_damaged_backup_falls_back_to_the_previous_one_in_one_line(tmp_path, capsys):
    folder = tmp_path / "backup"
    train(folder, 3)
    (folder / "epoch-0003.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a cut-off file
    _, epochs = train(folder, 4)
    assert epochs == [2, 3]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("backup:")]
    assert len(lines) == 1
    assert lines[0].startswith("backup: epoch-0003.weights.h5 does not load (")
    assert lines[0].endswith("; resuming from epoch-0002.weights.h5 (epoch 2) instead")


def test_keras_own_damaged_backup_no_longer_loses_the_run(tmp_path, capsys):
    """The issue's state: keras' BackupAndRestore killed while writing latest.weights.h5."""
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x07" * 600)
    (folder / METADATA).write_text('{"epoch": 2, "batch": 0}')
    _, epochs = train(folder, 2)
    assert epochs == [0, 1]  # nothing loadable: from the start, rather than an OSError on every rerun
    out = capsys.readouterr().out
    assert "backup: latest.weights.h5 does not load (" in out and "training from the start" in out
    assert record(folder)["epoch"] == 2 and not (folder / "latest.weights.h5").exists()


def test_keras_own_good_backup_still_resumes(tmp_path):
    folder = tmp_path / "backup"
    m = model()
    m.fit(
        X,
        Y,
        epochs=2,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(folder, delete_checkpoint=False)],
    )
    _, epochs = train(folder, 3)
    assert epochs == [2]


def kill_at(monkeypatch, where: str):
    """Make the next backup die (like a SIGKILL: an exception out of fit) at ``where``."""

    class Killed(Exception):
        pass

    real_replace, real_save = backup.replace_file, keras.Model.save_weights

    def replace(source, target):
        if where == "weights-rename" and target.suffix == ".h5":
            raise Killed
        if where == "commit" and target.name == METADATA:
            raise Killed
        real_replace(source, target)

    def save_weights(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        if where == "weights-write":  # the file half written when the process died
            path = Path(filepath)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise Killed

    monkeypatch.setattr(backup, "replace_file", replace)
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    return Killed


@pytest.mark.parametrize("where", ["weights-write", "weights-rename", "commit"])
def test_a_kill_during_a_backup_leaves_the_previous_one_in_force(tmp_path, monkeypatch, where):
    folder = tmp_path / "backup"
    train(folder, 2)

    class Stop(keras.callbacks.Callback):  # the epoch's backup is the next thing to happen
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                killed_here.append(kill_at(monkeypatch, where))

    killed_here: list = []
    m = model()
    with pytest.raises(Exception) as raised:
        m.fit(X, Y, batch_size=8, epochs=4, callbacks=[Stop(), CrashSafeBackup(folder)], verbose=0)
    assert isinstance(raised.value, killed_here[0])
    monkeypatch.undo()
    assert record(folder)["epoch"] == 2  # epoch 3 was not committed: it is the one in progress
    _, epochs = train(folder, 4)
    assert epochs == [2, 3]
    assert record(folder)["epoch"] == 4
    assert not [p for p in folder.iterdir() if p.name.startswith(".partial-")]


def test_the_best_checkpoint_is_written_aside_then_renamed(tmp_path, monkeypatch):
    best = tmp_path / "best.keras"
    checkpoint = CrashSafeCheckpoint(best, monitor="loss", mode="min", save_best_only=True)
    train(tmp_path / "backup", 1, checkpoint)
    before = best.read_bytes()
    real_save = keras.Model.save

    def save(self, filepath, *args, **kwargs):  # killed half-way through writing the next one
        Path(filepath).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train(
            tmp_path / "other", 2, CrashSafeCheckpoint(best, monitor="loss", mode="min", save_best_only=True)
        )
    monkeypatch.setattr(keras.Model, "save", real_save)
    assert best.read_bytes() == before
    keras.models.load_model(best)


def test_a_first_backup_cut_before_its_commit_is_not_resumed(tmp_path):
    """Killed between the weights' rename and the record: the run never had a backup."""
    folder = tmp_path / "backup"
    m, _ = train(tmp_path / "elsewhere", 1)
    folder.mkdir()
    m.save_weights(str(folder / "epoch-0001.weights.h5"))
    _, epochs = train(folder, 2)
    assert epochs == [0, 1]  # from the start, as the trainer (runs.resumable: no record) expects
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch-0001.weights.h5",
        "epoch-0002.weights.h5",
        METADATA,
    ]
