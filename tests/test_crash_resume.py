"""Real ``python -m training fit | fit-packed | compare`` processes killed with SIGKILL, then rerun.

Instants (``INSTANTS``):

- ``logged``: right after an epoch's row appears in ``log.csv`` (the best checkpoint, TensorBoard
  and the backup of that epoch are being written then);
- ``backup-write``: while the backup is being written (a ``.partial-*`` file in ``backup/``);
- ``backup-cut``: inside the backup write, deterministically: ``tests/killed_training.py`` makes the
  process SIGKILL itself with the weights file half written (the issue's damaged file);
- ``mid-epoch``: shortly after an epoch starts (``Epoch k/N`` printed), at a random delay;
- ``random``: a random delay after the start (start-up, data, compilation, any epoch).

After every kill: the committed backup never goes back, and it holds every logged epoch but at most
the one in progress. Every rerun resumes (``resuming the unfinished run``) from exactly the
committed epoch, without a fall-back line. Run to completion, the log holds each epoch once and
run.json the metrics. ``test_*_survives_a_few_kills`` run in ``make test`` (fit, under a minute); the
``slow`` ones kill each command many times (``CONVZOO_CRASH_KILLS``, ``CONVZOO_CRASH_SEED``) and print
a tally of the kills survived per instant (``pytest -s``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import make_folder

from training.backup import read_metadata
from training.runs import read_log

REPO = Path(__file__).resolve().parents[1]
KILLED_TRAINING = Path(__file__).with_name("killed_training.py")
INSTANTS = ("logged", "backup-write", "backup-cut", "mid-epoch", "random")
# --patience 0: no early stop, so every planned epoch runs (the patience counter restarts on resume)
TINY = [
    "--arch",
    "lenet5",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--jit-compile",
    "off",
    "--patience",
    "0",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=16)  # 36 / 6 / 6 images


def committed(run_dir: Path) -> int:
    record = read_metadata(run_dir / "backup")
    return int(record["epoch"]) if record else 0


def logged(run_dir: Path) -> int:
    return len(read_log(run_dir / "log.csv"))


def log_lines(run_dir: Path) -> int:
    """Lines of log.csv, an epoch trained again after a kill counted again (one row per epoch end)."""
    path = run_dir / "log.csv"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def partials(run_dir: Path) -> set[tuple[str, int]]:
    """The backup's files being written now (name, modification time)."""
    found = set()
    for path in (run_dir / "backup").glob(".partial-*"):
        with contextlib.suppress(OSError):
            found.add((path.name, path.stat().st_mtime_ns))
    return found


def finished(run_dir: Path) -> bool:
    """fit / compare: held-out metrics recorded; fit-packed (no evaluation): its training recorded."""
    path = run_dir / "run.json"
    if not path.is_file():
        return False
    run = json.loads(path.read_text())
    training = run.get("training") or {}
    return bool(run.get("metrics")) or (bool(training) and not training.get("interrupted"))


class Launch:
    """One ``python -m training ...`` process (its own process group: compare's fit dies with it)."""

    def __init__(self, argv: list[str], log: Path, cut_epoch: int | None = None):
        command = [sys.executable, "-m", "training"]
        if cut_epoch is not None:
            command = [sys.executable, str(KILLED_TRAINING), str(cut_epoch)]
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [*command, *argv],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    def text(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout)


def wait_until(launch: Launch, condition, timeout: float = 120, every: float = 0.001) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while launch.running() and time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (OSError, ValueError):  # a file being replaced under us
            pass
        time.sleep(every)
    return False


def epochs_started(text: str) -> list[int]:
    return [int(k) for k in re.findall(r"Epoch (\d+)/\d+", text)]


class Campaign:
    """Kill one command line again and again at the given instants, then run it to completion."""

    def __init__(self, argv, run_dirs: list[Path], epochs: int, log: Path, seed: int, child_log=False):
        self.argv, self.run_dirs, self.epochs, self.log = argv, run_dirs, epochs, log
        self.child_log = child_log  # compare: each fit's output goes to <run>/fit.log
        self.rng = random.Random(seed)
        self.survived: collections.Counter = collections.Counter()
        self.notes: list[str] = []

    def current(self) -> Path | None:
        """The run folder being trained (compare trains its architectures one after the other)."""
        return next((d for d in self.run_dirs if not finished(d)), None)

    def kill_once(self, instant: str) -> bool:
        """One launch killed at ``instant``; False when it finished first. Checks what it left."""
        run_dir = self.current()
        if run_dir is None:
            return False
        before = committed(run_dir)
        # The kill falls in the epoch in progress or the next one, so kills move the run on.
        target = min(self.epochs, before + 1 + self.rng.randint(0, 1))
        cut = target if instant == "backup-cut" else None
        lines, stale = log_lines(run_dir), partials(run_dir)  # before this launch
        launch = Launch(self.argv, self.log, cut_epoch=cut)
        output_of = self.output_reader(launch, run_dir)
        hit = True
        if instant == "logged":  # the row of epoch `target` written in this launch
            hit = wait_until(launch, lambda: log_lines(run_dir) >= lines + target - before)
        elif instant == "backup-cut":  # it kills itself
            launch.wait()
        elif instant == "backup-write":  # a backup file of this launch being written
            hit = wait_until(launch, lambda: bool(partials(run_dir) - stale))
        elif instant == "mid-epoch":
            hit = wait_until(launch, lambda: target in epochs_started(output_of()))
            time.sleep(self.rng.uniform(0.0, 0.3))
            hit = hit and log_lines(run_dir) < lines + target - before  # its row not yet written
        elif instant == "random":
            hit = wait_until(launch, lambda: False, timeout=self.rng.uniform(1.0, 14.0))
            hit = launch.running()
        launch.kill()
        code = launch.wait()
        output = output_of()
        if code != -signal.SIGKILL:  # it ended by itself before the kill: cleanly, at the end
            assert code == 0 and finished(run_dir), output[-3000:]
            return False
        if instant == "backup-cut":
            assert f"SIGKILL with .partial-epoch-{target:04d}.weights.h5 half written" in output, output[
                -3000:
            ]
        self.check_resumed(output, before)
        if finished(run_dir):  # compare finished it and was killed on the next architecture
            self.survived[f"{instant} (after finishing {run_dir.name})"] += 1
            return True
        after, rows = committed(run_dir), logged(run_dir)
        assert after >= before, f"{instant}: the backup went back from epoch {before} to {after}"
        assert rows - 1 <= after <= rows, f"{instant}: backup at epoch {after}, {rows} epochs logged"
        self.survived[instant if hit else f"{instant} (missed: later)"] += 1
        self.notes.append(f"{instant}@{run_dir.name}: epoch {before}->{after}, {rows} logged")
        return True

    def output_reader(self, launch: Launch, run_dir: Path):
        """What this launch's training process printed so far (compare: its fit's fit.log)."""
        if not self.child_log:
            return launch.text
        path = run_dir / "fit.log"
        offset = path.stat().st_size if path.exists() else 0

        def read() -> str:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")

        return lambda: read() if path.exists() else ""

    def check_resumed(self, output: str, before: int) -> None:
        assert "Traceback" not in output, output[-3000:]
        assert "backup:" not in output, output[-3000:]  # never a damaged backup to fall back from
        started = epochs_started(output)
        if before and started:  # (a kill during start-up leaves no output to check)
            assert "resuming the unfinished run" in output, output[-3000:]
            assert started[0] == before + 1, (before, started, output[-3000:])

    def run(self, kills: int, instants=INSTANTS) -> collections.Counter:
        for i in range(kills):
            if not self.kill_once(instants[i % len(instants)]):
                break
        if self.current() is not None:
            run_dir = self.current()
            before = committed(run_dir)
            launch = Launch(self.argv, self.log)
            output_of = self.output_reader(launch, run_dir)
            code = launch.wait()
            assert code == 0, launch.text()[-3000:]
            self.check_resumed(output_of(), before)
        for run_dir in self.run_dirs:
            assert finished(run_dir)
            assert [row["epoch"] for row in read_log(run_dir / "log.csv")] == list(range(self.epochs))
            assert not (run_dir / "backup").exists()
        return self.survived


def report(name: str, survived: collections.Counter, notes: list[str]) -> None:
    total = sum(survived.values())
    print(
        f"\n{name}: survived {total} SIGKILLs: " + ", ".join(f"{k} {v}" for k, v in sorted(survived.items()))
    )
    print("  " + "; ".join(notes))


def fit_argv(folder: Path, runs: Path, epochs: int) -> list[str]:
    return ["fit", *TINY, "--data", str(folder), "--epochs", str(epochs), "--runs-dir", str(runs)] + [
        "--run-name",
        "crash",
        "--no-export",
    ]


def test_fit_survives_a_few_kills(folder, tmp_path):
    """make test's variant: one kill inside the backup write (deterministic), one right after an
    epoch is logged, one mid-epoch; then the same command runs to the end."""
    runs = tmp_path / "runs"
    runs.mkdir()
    campaign = Campaign(fit_argv(folder, runs, 3), [runs / "crash"], 3, runs / "crash.out", seed=0)
    survived = campaign.run(3, instants=("backup-cut", "logged", "mid-epoch"))
    report("fit", survived, campaign.notes)
    assert sum(survived.values()) == 3


KILLS = int(os.environ.get("CONVZOO_CRASH_KILLS", "20"))
SEED = int(os.environ.get("CONVZOO_CRASH_SEED", "1"))


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), per_class=40)  # 84 / 18 / 18: longer epochs


@pytest.mark.slow
def test_fit_survives_many_kills(larger, tmp_path):
    folder = larger
    runs = tmp_path / "runs"
    runs.mkdir()
    epochs = KILLS // 2 + 2
    campaign = Campaign(fit_argv(folder, runs, epochs), [runs / "crash"], epochs, runs / "crash.out", SEED)
    survived = campaign.run(KILLS)
    report("fit", survived, campaign.notes)
    assert sum(survived.values()) >= KILLS * 3 // 4


@pytest.mark.slow
def test_fit_packed_survives_many_kills(larger, tmp_path):
    folder = larger
    from training import __main__ as cli

    pack = tmp_path / "tiny.npz"
    argv = ["pack", "--data", str(folder), "--image-size", "32", "--splits", "train", "--out", str(pack)]
    assert cli.main(argv) == 0
    runs = tmp_path / "runs"
    runs.mkdir()
    kills = max(5, KILLS // 2)
    epochs = kills // 2 + 2
    argv = ["fit-packed", *TINY, "--data", str(pack), "--epochs", str(epochs), "--runs-dir", str(runs)]
    argv += ["--run-name", "crash", "--workers", "1", "--augment", "strong"]
    campaign = Campaign(argv, [runs / "crash"], epochs, runs / "crash.out", SEED)
    survived = campaign.run(kills)
    report("fit-packed", survived, campaign.notes)
    assert sum(survived.values()) >= kills * 3 // 4


@pytest.mark.slow
def test_compare_survives_many_kills(folder, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    kills = max(5, KILLS // 3)
    epochs = 3
    argv = ["compare", "--archs", "lenet5,mobilenet_v1", "--data", str(folder), "--image-size", "32"]
    argv += [
        "--batch-size",
        "4",
        "--jit-compile",
        "off",
        "--epochs",
        str(epochs),
        "--repeats",
        "2",
        "--patience",
        "0",
    ]
    argv += ["--out", str(out)]
    campaign = Campaign(argv, [out / "lenet5", out / "mobilenet_v1"], epochs, out / "compare.out", SEED, True)
    survived = campaign.run(kills, instants=("logged", "backup-write", "mid-epoch", "random"))
    report("compare", survived, campaign.notes)
    assert sum(survived.values()) >= kills * 3 // 4
    assert (out / "results.csv").is_file()
