"""training.runs: the one reader of log.csv (crash-safe) and the time accounting built on it."""

from __future__ import annotations

from training import runs


def test_read_log_keeps_the_last_row_of_an_epoch_and_skips_a_cut_line(tmp_path):
    log_csv = tmp_path / "log.csv"
    log_csv.write_text(  # epoch 1 twice (a crash between its row and the backup), then a cut line
        "epoch,epoch_seconds,val_top1\n0,2.0,0.3\n1,1.0,0.55\n1,1.5,0.6\n2,1.0,NA\n3,1.2"
    )
    log = runs.read_log(log_csv)
    assert [row["epoch"] for row in log] == [0, 1, 2]
    assert [row["val_top1"] for row in log] == [0.3, 0.6, None]
    assert runs.best_logged(log_csv) == 0.6
    # --time-limit after a resume: the epoch trained again counts once.
    assert runs.logged_seconds(log_csv) == 4.5
    assert runs.read_log(tmp_path / "none.csv") == [] and runs.logged_seconds(tmp_path / "none.csv") == 0.0
    assert runs.best_logged(tmp_path / "none.csv") is None


def test_write_and_read_json(tmp_path):
    path = tmp_path / "a" / "run.json"
    runs.write_json(path, {"x": 1})
    assert runs.read_json(path) == {"x": 1} and runs.read_json(tmp_path / "missing.json") is None
