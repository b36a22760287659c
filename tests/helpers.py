"""What the test modules share for serving: the service tests' small model, a real ``bentoml serve``
subprocess, the answers' checks, the monitoring contract and the data paths.

No test module imports another (tests/test_imports.py checks it): what two of them use lives here,
in tests/training_helpers.py (training data and CLI) or in tests/service_files.py (image files and
multipart bodies).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).parent / "bentoml"
MiB = 1024 * 1024

MODEL_NAME = "servicetest"
INPUT_SIZE = (48, 48)
LABELS = [
    "tench",
    "springer",
    "cassette player",
    "chain saw",
    "church",
    "french horn",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
]
TOLERANCE = 0.05
"""Largest difference allowed between a served probability and the in-process one."""

SERVER_SETTINGS = {
    "CONVZOO_MODEL": MODEL_NAME,
    "CONVZOO_MAX_IMAGES": "8",
    "CONVZOO_MAX_FILE_BYTES": str(2 * MiB),
    "CONVZOO_MAX_REQUEST_BYTES": str(6 * MiB),
    "CONVZOO_MAX_BATCH_SIZE": "16",
    # decode in the batch, in the model's thread (a lone quick request: on the event loop), the
    # default of a one-CPU process; the server of tests/test_reliability.py keeps the threads of a
    # process with several CPUs
    "CONVZOO_DECODE_THREADS": "0",
}


SHARED_DATA = REPO.parent / "shared" / "data" / "imagenette2-train"
"""The real Imagenette2 train folder beside the repo (tests that need it skip without it)."""


# ------------------------------------------------------------------------ the service tests' model


def export_test_model(models_dir: Path) -> Path:
    """A LeNet-5 end-to-end model at 48x48 with random weights, exported the project's way."""
    import keras

    from training.end_to_end import build_end_to_end
    from training.export import export_model

    keras.utils.set_random_seed(0)
    model = build_end_to_end("lenet5", num_classes=len(LABELS), image_size=INPUT_SIZE)
    sharpen(model)
    return export_model(
        model,
        name=MODEL_NAME,
        labels=LABELS,
        input_size=list(INPUT_SIZE),
        architecture="lenet5",
        dataset="synthetic",
        metrics={"top1": 0.0, "top5": 0.0},
        command="pytest",
        models_dir=models_dir,
    )


def sharpen(model, factor: float = 40.0) -> None:
    """Scale the classifier's logits so random weights give decisive, image-dependent answers."""
    import keras

    dense = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dense)][-1]
    dense.set_weights([weight * factor for weight in dense.get_weights()])


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


# ------------------------------------------------------------------------------- a real server


def server_env(exported_model: Path, bentoml_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        **SERVER_SETTINGS,
        "CONVZOO_MODELS_DIR": str(exported_model.parents[1]),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


class Server:
    """A ``bentoml serve`` subprocess (own process group) with its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [str(BENTOML), "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @classmethod
    def started(cls, args: list[str], env: dict[str, str], log: Path) -> Server:
        """A server that answers ``/readyz``; stopped again if it never does."""
        server = cls(args, env, log)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited early:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"bentoml serve not ready after {timeout}s:\n{self.log_tail()}")

    def refusal_lines(self, timeout: float = 120) -> list[str]:
        """For a server that must refuse to start: waits for it to exit with an error and returns
        the ``convzoo:`` lines it printed (the refusal is one such line)."""
        try:
            assert self.process.wait(timeout=timeout) != 0, self.log_tail()
        finally:
            self.stop()
        return [line for line in self.log_tail(50).splitlines() if line.startswith("convzoo:")]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group ``process`` leads (started with ``start_new_session``), then
    SIGKILL if it has not ended within 30 s; nothing if it ended already."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------- answers


def classify(server: Server, named_files: list[tuple[str, bytes]], **form) -> requests.Response:
    parts = [("images", (name, data)) for name, data in named_files]
    return requests.post(f"{server.url}/classify", files=parts, data=form, timeout=120)


def expect(response: requests.Response, status: int, server: Server):
    """The JSON body, after checking the status (the server log is shown when it is wrong)."""
    assert response.status_code == status, (
        f"expected {status}, got {response.status_code}: {response.text}\n"
        f"--- server log ---\n{server.log_tail()}"
    )
    return response.json()


def assert_matches(answer: dict, probabilities: np.ndarray, top_k: int = 5) -> None:
    """A served answer agrees with the in-process probabilities (see ``TOLERANCE``)."""
    best = int(np.argmax(probabilities))
    assert answer["label"] == LABELS[best]
    assert abs(answer["score"] - probabilities[best]) < TOLERANCE
    assert [entry["label"] for entry in answer["top_k"]][:1] == [LABELS[best]]
    assert len(answer["top_k"]) == top_k
    scores = [entry["score"] for entry in answer["top_k"]]
    assert scores == sorted(scores, reverse=True)
    for entry in answer["top_k"]:
        assert abs(entry["score"] - probabilities[LABELS.index(entry["label"])]) < TOLERANCE


# ---------------------------------------------------------------------------------- monitoring

PROMETHEUS = REPO / "deploy" / "prometheus"
CONTRACT = PROMETHEUS / "metrics.txt"
RULE_FILES = [PROMETHEUS / "recording-rules.yml", PROMETHEUS / "alerting-rules.yml"]
DASHBOARD = REPO / "deploy" / "grafana" / "convzoo-dashboard.json"


def contract() -> dict[str, dict]:
    """deploy/prometheus/metrics.txt as {name: {"type", "labels", "help"}} (NAME TYPE LABELS HELP)."""
    metrics = {}
    for number, line in enumerate(CONTRACT.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels, help_ = line.split(maxsplit=3)
        assert name not in metrics, f"metrics.txt:{number}: {name} twice"
        metrics[name] = {
            "type": kind,
            "labels": [] if labels == "-" else labels.split(","),
            "help": help_,
        }
    return metrics


def dashboard_panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def dashboard_expressions() -> list[str]:
    """Every panel query of the Grafana dashboard, with Grafana's variables replaced ($model: every
    model, $__rate_interval: 1m): ready to send to a real Prometheus (the live test does)."""
    return [
        target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
        for panel in dashboard_panels()
        for target in panel["targets"]
    ]
