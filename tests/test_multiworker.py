"""``python -m training fit`` on two machines' worth of processes: two workers on localhost, named
by ``TF_CONFIG``, train a tiny model under ``MultiWorkerMirroredStrategy``, are killed mid-run and
resume; they agree on every figure, and only the chief writes the run and the export."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import make_folder

from training import distribute

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


CRASHING = Path(__file__).with_name("crashing_training.py")


def run_workers(
    argv: list[str], ports: list[int], cwd: Path, crash_at: str | None = None
) -> list[tuple[int, str]]:
    """Start one ``python -m training`` per port (worker i listens on ports[i]); (exit code, output).
    ``crash_at`` ("EPOCH:BATCH"): through ``tests/crashing_training.py``, which dies there."""
    command = [sys.executable, str(CRASHING), crash_at] if crash_at else [sys.executable, "-m", "training"]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(len(ports)):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            subprocess.Popen(
                [*command, *argv],
                cwd=cwd,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONPATH": str(REPO),
                    "TF_CONFIG": tf_config,
                    "CUDA_VISIBLE_DEVICES": "",
                },
            )
        )
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=240)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            process.kill()
    return results


def figures(output: str) -> list[str]:
    """What both workers must print alike: each epoch's end-of-epoch losses and metrics (times
    excluded), and the held-out test result."""
    epochs = re.findall(
        r"- (loss: [\d.]+ - top1: [\d.]+ - top5: [\d.]+ - val_loss: [\d.]+ - val_top1: [\d.]+)", output
    )
    test = re.findall(r"held-out test top-1 [\d.]+, top-5 [\d.]+", output)
    return epochs + test


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=16)  # 36 / 6 / 6 images


def test_tf_config_decides_the_strategy_and_the_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_workers() == 0 and distribute.is_chief()
    cluster = {"worker": ["a:1", "b:2"]}
    for task, chief in ((("worker", 0), True), (("worker", 1), False)):
        monkeypatch.setenv(
            "TF_CONFIG",
            json.dumps({"cluster": cluster, "task": dict(zip(("type", "index"), task, strict=True))}),
        )
        assert distribute.cluster_workers() == 2 and distribute.is_chief() is chief
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert distribute.cluster_workers() == 2 and not distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        distribute.tf_config()


def test_two_workers_train_agree_resume_and_export(folder, tmp_path):
    argv = [
        "fit",
        "--no-optimize",  # OpenVINO forms: test_runtimes, and test_fit's resume test
        "--arch",
        "lenet5",
        "--data",
        str(folder),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--runs-dir",
        "runs",
        "--models-dir",
        "models",
    ]
    run_dir = tmp_path / "runs" / f"lenet5_{folder.name}_32px"

    # Both die at the same step of epoch 2 (a worker alone would leave the other waiting).
    crashed = run_workers(argv, free_ports(2), tmp_path, crash_at="2:2")
    assert [code for code, _ in crashed] == [75, 75], crashed[0][1][-3000:] + crashed[1][1][-3000:]
    assert "MultiWorkerMirroredStrategy over 2 workers" in crashed[0][1]
    assert (run_dir / "backup" / "training_metadata.json").exists()  # the chief's
    assert (run_dir / "workertemp_1" / "backup" / "training_metadata.json").exists()  # worker 1's
    assert not (tmp_path / "models").exists()

    resumed = run_workers(argv, free_ports(2), tmp_path)
    (chief_code, chief), (worker_code, worker) = resumed
    assert (chief_code, worker_code) == (0, 0), chief[-3000:] + worker[-3000:]
    assert "resuming the unfinished run" in chief and "resuming this worker's backup" in worker
    assert figures(chief) and figures(chief) == figures(worker)  # one model, trained in step

    run = json.loads((run_dir / "run.json").read_text())
    assert run["device"].startswith("MultiWorkerMirroredStrategy over 2 workers")
    assert run["training"]["epochs_run"] == 1 and run["training"]["first_epoch"] == 2
    assert [row.split(",")[0] for row in (run_dir / "log.csv").read_text().splitlines()[1:]] == ["0", "1"]
    assert not (run_dir / "workertemp_1").exists() and not (run_dir / "backup").exists()
    exports = sorted(p.relative_to(tmp_path) for p in (tmp_path / "models").glob("*/*"))
    assert exports == [Path("models/lenet5/1")]  # the chief's, once
    metadata = json.loads((tmp_path / "models" / "lenet5" / "1" / "metadata.json").read_text())
    assert metadata["labels"] == run["labels"]
