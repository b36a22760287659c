"""Quiet by default (training/quiet.py): help and errors without TensorFlow's start-up noise."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import __main__ as cli
from training import quiet

REPO = Path(__file__).resolve().parents[1]


def run_training(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m training ARGV`` as a user runs it: none of TensorFlow's log variables set."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CONVZOO_TF_LOGS")}
    return subprocess.run(
        [sys.executable, "-m", "training", *argv],
        cwd=REPO,
        env={**clean, "PYTHONPATH": str(REPO), "COLUMNS": "100", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_zoo_help_prints_the_help_and_nothing_else():
    done = run_training("zoo", "--help")
    assert done.returncode == 0
    assert done.stderr == ""  # no absl / oneDNN / cuda lines
    assert done.stdout.startswith("usage: python -m training zoo [-h]")
    assert done.stdout.rstrip().endswith("--num-classes NUM_CLASSES")


def test_a_user_error_is_one_line_without_a_traceback():
    done = run_training("zoo", "--pattern", "alexnet", "--size", "66")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: alexnet needs images of at least 67x67 pixels (its downsampling stages would shrink "
        "smaller maps to nothing); got 66x66"
    ]
    assert "|" not in done.stdout  # no table


def test_fit_help_lists_nesterov_and_randaugment_and_keeps_the_examples_lines(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "Nesterov" in text and "RandAugment" in text
    lines = text.splitlines()
    assert "    python -m training fit --arch resnet18 --data /work/shared/data/imagenette2-train \\" in lines
    assert "        --image-size 128 --epochs 40 --batch-size 64 --optimizer adamw --lr 1e-3 \\" in lines


NOISY = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796197752.655173    7912 port.cc:153] oneDNN custom operations are on. You may see\n"
    b"I0000 00:00:1796197752.655816    7912 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n"
    b"E0000 00:00:1796198211.206848   16124 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
    b"E0000 00:00:1796198211.206848   16124 something.cc:1] a real error\n"
    b"a line of our own\n"
)


def test_tensorflows_start_up_lines_are_held_back_and_the_rest_passed_on(capfd, monkeypatch):
    monkeypatch.delenv("CONVZOO_TF_LOGS", raising=False)
    with quiet.held_stderr():
        os.write(2, NOISY)
    assert capfd.readouterr().err == (
        "E0000 00:00:1796198211.206848   16124 something.cc:1] a real error\na line of our own\n"
    )


def test_convzoo_tf_logs_turns_them_back_on(capfd, monkeypatch):
    monkeypatch.setenv("CONVZOO_TF_LOGS", "1")
    with quiet.held_stderr():
        os.write(2, NOISY)
    assert capfd.readouterr().err == NOISY.decode()


def test_error_lines_and_the_traceback_switch(monkeypatch, capsys):
    monkeypatch.delenv("CONVZOO_TRACEBACK", raising=False)
    assert quiet.error_line(KeyError("unknown architecture 'x'")) == "unknown architecture 'x'"
    wrapped = ValueError(
        "Exception encountered when calling MixUp.call().\n\n\x1b[1mbad dtype\x1b[0m\n\nArgs"
    )
    assert quiet.error_line(wrapped) == "bad dtype"

    def fail():
        raise ValueError("--image-size 3 is too small\nsecond line")

    assert quiet.one_line_errors(fail) == 2
    assert capsys.readouterr().err == "error: --image-size 3 is too small\n"
    monkeypatch.setenv("CONVZOO_TRACEBACK", "1")
    with pytest.raises(ValueError):
        quiet.one_line_errors(fail)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert quiet.progress_verbosity() == 1
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert quiet.progress_verbosity() == 2
