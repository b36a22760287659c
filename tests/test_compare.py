"""``python -m training compare``: two tiny architectures, one epoch, a handful of generated images."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from training_helpers import make_folder

from service.config import cpu_count
from training import __main__ as cli
from training import compare

ARCHS = ("lenet5", "mobilenet_v1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=8)  # 3 classes: 18 / 3 / 3 images


def compare_argv(folder: Path, out: Path, *options: str, archs=ARCHS) -> list[str]:
    return [
        "compare",
        "--archs",
        ",".join(archs),
        "--data",
        str(folder),
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--jit-compile",
        "off",
        "--repeats",
        "3",
        "--no-optimize",  # the OpenVINO forms are test_runtimes' subject
        "--out",
        str(out),
        *options,
    ]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_trains_measures_reports_and_a_rerun_skips(folder, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = compare_argv(folder, out, "--epochs", "1")
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2] lenet5: training" in printed and "[2/2] mobilenet_v1: training" in printed

    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == list(compare.COLUMNS)
    assert [row["arch"] for row in rows] == list(ARCHS)
    for row in rows:
        run = json.loads((out / row["arch"] / "run.json").read_text())
        metadata = json.loads((Path(row["export"]) / "metadata.json").read_text())
        assert Path(row["export"]) == out / "models" / row["arch"] / "1"  # not the repo's models/
        assert (Path(row["export"]) / "saved_model.pb").is_file()
        assert int(row["params"]) == metadata["params"] > 0 and int(row["flops"]) == metadata["flops"] > 0
        assert row["image_size"] == "32" and row["stopped"] == ""
        assert (row["epochs_done"], row["epochs_planned"]) == ("1", "1")
        assert float(row["train_images_per_s"]) > 0 and float(row["train_minutes"]) > 0
        assert float(row["test_top1"]) == pytest.approx(run["metrics"]["top1"])
        assert float(row["test_top5"]) == pytest.approx(run["metrics"]["top5"])
        assert float(row["latency_ms_batch1"]) > 0 and float(row["images_per_s_batch32"]) > 0
        reached = float(row["best_val_top1"]) >= 0.5
        assert row["epochs_to_target"] == ("1" if reached else "")
        assert run["command"].startswith(f"python -m training fit --arch {row['arch']} --data ")
        assert run["splits"] == {"train": 18, "validation": 3, "test": 3}
    recipes = [json.loads((out / arch / "run.json").read_text())["config"] for arch in ARCHS]
    for config in recipes:
        del config["arch"], config["run_name"], config["export_name"]
    assert recipes[0] == recipes[1]  # one recipe for both

    table = (out / "results.md").read_text()
    assert "python -m training compare --archs lenet5,mobilenet_v1" in table
    assert f"{cpu_count()} CPU cores" in table and "32×32 px, 1 epochs" in table
    assert "train 18, validation 3, test 3 images" in table
    assert "| lenet5 | 1998 |" in table and "| mobilenet_v1 | 2017 |" in table
    for name in ("accuracy_vs_latency.png", "accuracy_vs_training_time.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 400

    logs = {arch: (out / arch / "fit.log").stat().st_size for arch in ARCHS}
    measured = {arch: (out / arch / "measurements.json").read_text() for arch in ARCHS}
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipping training") == 2 and "training (log" not in printed
    assert {arch: (out / arch / "fit.log").stat().st_size for arch in ARCHS} == logs
    assert {arch: (out / arch / "measurements.json").read_text() for arch in ARCHS} == measured
    assert sorted(p.name for p in (out / "models" / "lenet5").iterdir()) == ["1"]
    assert read_csv(out / "results.csv") == rows

    # The same folder with another recipe is refused before anything trains.
    assert cli.main(compare_argv(folder, out, "--epochs", "2")) == 2
    assert "another recipe (differs in: epochs)" in capsys.readouterr().err


def test_a_crashed_architecture_is_reported_then_resumed_within_the_time_budget(
    folder, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "cmp"
    argv = compare_argv(folder, out, "--epochs", "3", archs=("lenet5",))
    crashing = Path(__file__).with_name("crashing_training.py")
    run = subprocess.run

    def run_crashing(command, **kwargs):  # compare's `python -m training fit`, dying in epoch 2
        if list(command[:3]) == [sys.executable, "-m", "training"]:
            command = [sys.executable, str(crashing), "2:1", *command[3:]]
        return run(command, **kwargs)

    monkeypatch.setattr(compare.subprocess, "run", run_crashing)
    assert cli.main(argv) == 1
    assert "[1/1] lenet5: FAILED (fit exit code 75)" in capsys.readouterr().out
    assert "Not finished (see their fit.log): lenet5." in (out / "results.md").read_text()
    assert read_csv(out / "results.csv") == []

    monkeypatch.undo()
    assert cli.main([*argv, "--time-budget", "0.001"]) == 0  # resumes epoch 2, then out of time
    assert "resuming the unfinished run" in (out / "lenet5" / "fit.log").read_text()
    [row] = read_csv(out / "results.csv")
    assert (row["epochs_done"], row["epochs_planned"], row["stopped"]) == ("2", "3", "time budget")
    epoch_seconds = [float(r["epoch_seconds"]) for r in read_csv(out / "lenet5" / "log.csv")]
    assert len(epoch_seconds) == 2 and float(row["train_minutes"]) == round(sum(epoch_seconds) / 60, 2)
    assert "| 2/3 (time budget) |" in (out / "results.md").read_text()


def test_log_reading_and_epochs_to_reach(tmp_path):
    log_csv = tmp_path / "log.csv"
    log_csv.write_text(  # epoch 1 written twice: a crash between the CSV row and the backup
        "epoch,epoch_seconds,val_top1\n0,2.0,0.3\n1,1.0,0.55\n1,1.5,0.6\n2,1.0,0.7\n"
    )
    log = compare.read_log(log_csv)
    assert [row["val_top1"] for row in log] == [0.3, 0.6, 0.7]
    assert sum(row["epoch_seconds"] for row in log) == 4.5
    assert compare.epochs_to_reach(log, 0.6) == 2 and compare.epochs_to_reach(log, 0.3) == 1
    assert compare.epochs_to_reach(log, 0.9) is None


def test_options_are_checked_before_training(tmp_path):
    with pytest.raises(compare.CompareError, match="inception_v3 needs images of at least 75 px"):
        compare.parse_archs("lenet5, inception_v3", image_size=64)
    with pytest.raises(compare.CompareError, match="unknown architecture 'resnet5'"):
        compare.parse_archs("resnet5", image_size=96)
    assert compare.parse_archs("lenet5,resnet18,lenet5", image_size=32) == ["lenet5", "resnet18"]
