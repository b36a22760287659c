"""The servers under test: how to start each, wait until it is ready, check it, and stop it.

Every server serves the same export (``models/<name>/<version>``) over the same HTTP contract, is
started as a child process (optionally under ``taskset -c CPUS``, which its own children inherit)
and logs to a file. ``ServerSpec`` entries are plain data; ``SERVERS`` lists them by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import yaml

from benchmarks.modelrepo import REPO, ModelRef

READY_POLL_S = 0.5
WORKER_EXIT_S = 15


@dataclass(frozen=True)
class ServerSpec:
    name: str
    title: str
    module: str | None  # a ``python -m`` peer module; None for the BentoML service
    ready_timeout_s: float
    env: tuple[tuple[str, str], ...] = ()  # settings of its own (over the caller's environment)
    runtime: str | None = None  # what runs the model (``service.runtimes``); None: CONVZOO_RUNTIME

    def model_runtime(self) -> str:
        """The runtime whose in-process ceiling this server is judged against."""
        return self.runtime or os.environ.get("CONVZOO_RUNTIME") or "auto"


SERVERS = {
    "bentoml": ServerSpec("bentoml", "BentoML service (service/), its default runtime", None, 300),
    "bentoml-tf": ServerSpec(
        "bentoml-tf",
        "BentoML service with CONVZOO_RUNTIME=tensorflow",
        None,
        300,
        env=(("CONVZOO_RUNTIME", "tensorflow"),),
        runtime="tensorflow",
    ),
    "fastapi": ServerSpec(
        "fastapi",
        "FastAPI + uvicorn, one model call per request (peer)",
        "benchmarks.peers.fastapi_server",
        180,
        runtime="tensorflow",
    ),
    "ray": ServerSpec(
        "ray", "Ray Serve with @serve.batch (peer)", "benchmarks.peers.ray_server", 300, runtime="tensorflow"
    ),
}


class ServerError(RuntimeError):
    """A server did not start, did not become ready, or serves something else than asked."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_prefix(cpus: str | None) -> list[str]:
    """``taskset -c CPUS`` as a command prefix, or nothing when not pinning."""
    return ["taskset", "-c", cpus] if cpus else []


def bentoml_target(repo: Path = REPO) -> str:
    """The service import path, from ``bentofile.yaml``'s ``service`` field."""
    bentofile = repo / "bentofile.yaml"
    if not bentofile.is_file():
        raise ServerError(f"{bentofile} not found: the BentoML service is not there to measure")
    target = (yaml.safe_load(bentofile.read_text()) or {}).get("service")
    if not target:
        raise ServerError(f"{bentofile} has no 'service' field")
    return target


def command(spec: ServerSpec, ref: ModelRef, models_dir: Path, port: int, repo: Path = REPO) -> list[str]:
    if spec.module is None:
        return [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            bentoml_target(repo),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    return [
        sys.executable,
        "-m",
        spec.module,
        "--model",
        ref.spec,
        "--models-dir",
        str(models_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


class RunningServer:
    """A started server process; use as a context manager so it is always stopped."""

    def __init__(
        self,
        spec: ServerSpec,
        ref: ModelRef,
        models_dir: Path,
        cpus: str | None,
        log_path: Path,
        repo: Path = REPO,
    ):
        """``repo``: the checkout to run the server from (another one: ``benchmarks.ab``)."""
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = pin_prefix(cpus) + command(spec, ref, models_dir, self.port, repo)
        env = {
            **os.environ,
            **dict(spec.env),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CONVZOO_MODEL": ref.spec,
            "CONVZOO_MODELS_DIR": str(models_dir),
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, cwd=repo, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self) -> float:
        """Poll ``/readyz`` until it answers 200; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < self.spec.ready_timeout_s:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.spec.name} exited with code {self.process.returncode} "
                    f"before it was ready; last log lines:\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
            time.sleep(READY_POLL_S)
        raise ServerError(
            f"{self.spec.name} not ready after {self.spec.ready_timeout_s:.0f} s; "
            f"last log lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server, which stops its workers; then kill any of them still running.

        BentoML and Ray start workers in sessions of their own, so the process tree is listed
        before stopping and leftovers are killed one by one, by pid.
        """
        try:
            workers = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _, alive = psutil.wait_procs(workers, timeout=WORKER_EXIT_S)
        for worker in alive:
            worker.kill()
        psutil.wait_procs(alive, timeout=WORKER_EXIT_S)
        self._log.close()


def check_metadata(url: str, ref: ModelRef | None) -> dict:
    """``POST /metadata``; raises ``ServerError`` when the server serves another model than ``ref``."""
    response = requests.post(f"{url}/metadata", json={}, timeout=30)
    if response.status_code != 200:
        raise ServerError(f"{url}/metadata answered {response.status_code}: {response.text[:200]}")
    metadata = response.json()
    if ref is not None and (metadata.get("name"), str(metadata.get("version"))) != (
        ref.name,
        str(ref.version),
    ):
        raise ServerError(f"{url} serves {metadata.get('name')}:{metadata.get('version')}, not {ref.spec}")
    return metadata


def warm_up(url: str, images: list[Path]) -> None:
    """Classify every image once, one request each; raises ``ServerError`` on any bad answer."""
    for path in images:
        files = [("images", (path.name, path.read_bytes(), "image/jpeg"))]
        response = requests.post(f"{url}/classify", files=files, timeout=120)
        if response.status_code != 200:
            raise ServerError(
                f"warm-up request with {path.name} answered {response.status_code}: {response.text[:300]}"
            )
