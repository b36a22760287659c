"""The servers under test: how to start each, wait until it is ready, check it, and stop it.

Every server serves the same export (``models/<name>/<version>``), is started as a child process
(optionally under ``taskset -c CPUS``, which its own children inherit) and logs to a file.
``ServerSpec`` entries are plain data; ``SERVERS`` lists convzoo's own (``bentoml``: ``/classify``;
``bentoml-v2``: the same server measured on ``/v2``, OIP with the binary extension) and the old
TensorFlow peers; ``server_spec`` also knows the peers of ``benchmarks.peers.PEERS`` (Triton,
MLServer, KServe, Ray Serve on the Open Inference Protocol), each run by the Python of its own
virtual environment (``benchmarks.peers.envs.ensure_env``, built on first use).

A server speaks one protocol (``benchmarks.wire``): ``/classify``, or OIP v2 (binary extension
where the server accepts it, else JSON with base64 ``BYTES``). Readiness is ``GET /readyz`` for
convzoo's and the old peers, ``GET /v2/health/ready`` for the OIP peers; the served-model check
is ``POST /metadata`` or ``GET /v2/models/<name>/versions/<v>`` (else ``/v2/models/<name>``).
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

from benchmarks import wire
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
    protocol: str = "classify"  # what the load generator sends (``benchmarks.wire.PROTOCOLS``)
    ready_path: str = "/readyz"
    venv: str | None = None  # the peer's own virtual environment (``benchmarks.peers.envs``)
    column: bool = False  # ``image_bytes`` as ``[n, 1]`` (Triton with batching), not ``[n]``

    @property
    def oip(self) -> bool:
        return self.protocol != "classify"

    def model_runtime(self) -> str:
        """The runtime whose in-process ceiling this server is judged against."""
        return self.runtime or os.environ.get("CONVZOO_RUNTIME") or "auto"


SERVERS = {
    "bentoml": ServerSpec("bentoml", "convzoo `/classify` (BentoML), multipart upload", None, 300),
    "bentoml-v2": ServerSpec(
        "bentoml-v2", "convzoo `/v2` (BentoML), OIP binary tensor extension", None, 300, protocol="oip-binary"
    ),
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


OIP_PEERS = ("triton", "mlserver", "kserve", "ray-oip")
"""The peers of ``benchmarks.peers.PEERS`` that ``--compare`` measures, in its order."""


class ServerError(RuntimeError):
    """A server did not start, did not become ready, or serves something else than asked."""


def _field(spec, name: str, default=None):
    """A field of a plain-data peer spec (a dataclass, a named tuple or a dict)."""
    if isinstance(spec, dict):
        return spec.get(name, default)
    return getattr(spec, name, default)


def peer_specs() -> dict[str, ServerSpec]:
    """``benchmarks.peers.PEERS`` as ``ServerSpec`` entries (empty when that module has none)."""
    try:
        from benchmarks.peers import PEERS
    except ImportError:
        return {}
    return {
        # a peer named as one of the old TensorFlow servers ("ray") is this run's "ray-oip"
        (f"{name}-oip" if name in SERVERS else name): ServerSpec(
            name,
            _field(spec, "title", name),
            _field(spec, "module"),
            float(_field(spec, "ready_timeout_s", 300)),
            protocol="oip-binary" if _field(spec, "binary", False) else "oip-json",
            ready_path=_field(spec, "ready_path", None) or "/v2/health/ready",
            venv=_field(spec, "env"),
            column=len(_field(spec, "shape", None) or (1,)) == 2,
        )
        for name, spec in PEERS.items()
    }


def server_spec(name: str) -> ServerSpec:
    """The server called ``name``: convzoo's own and the old peers (``SERVERS``), then
    ``benchmarks.peers.PEERS``; ``ServerError`` when neither knows it."""
    if name in SERVERS:
        return SERVERS[name]
    peers = peer_specs()
    if name in peers:
        return peers[name]
    raise ServerError(f"no server {name!r}: benchmarks.peers.PEERS has {sorted(peers) or 'no peers'}")


def known_servers() -> list[str]:
    return [*SERVERS, *(name for name in peer_specs() if name not in SERVERS)]


def peer_python(spec: ServerSpec) -> str:
    """The Python that runs ``spec``: its own virtual environment's (built here on first use;
    ``ServerError`` when it cannot be), else this one."""
    if spec.venv is None:
        return sys.executable
    try:
        from benchmarks.peers.envs import ensure_env

        return str(ensure_env(spec.venv))
    except (Exception, SystemExit) as error:  # pip, venv, a missing wheel: not measured, the run goes on
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise ServerError(f"its environment {spec.venv!r} could not be built: {message}") from error


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


def command(
    spec: ServerSpec, ref: ModelRef, models_dir: Path, port: int, repo: Path = REPO, python: str | None = None
) -> list[str]:
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
        python or sys.executable,
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
        self.ready_path = spec.ready_path.format(name=ref.name)  # a peer's: its model's readiness
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        python = peer_python(spec)  # before anything is opened: may raise ServerError
        self.argv = pin_prefix(cpus) + command(spec, ref, models_dir, self.port, repo, python)
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
        """Poll the readiness route until it answers 200; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < self.spec.ready_timeout_s:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.spec.name} exited with code {self.process.returncode} "
                    f"before it was ready; last log lines:\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}{self.ready_path}", timeout=5).status_code == 200:
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


def check_oip_model(url: str, ref: ModelRef) -> dict:
    """The OIP model metadata of ``ref``: ``GET /v2/models/<name>/versions/<v>``, else (a server
    that does not route versions) ``GET /v2/models/<name>`` listing that version or none, else
    (no metadata routes) the model's readiness, versioned or not; ``ServerError`` when the server
    serves another model or version."""
    answered = []
    for path in (f"/v2/models/{ref.name}/versions/{ref.version}", f"/v2/models/{ref.name}"):
        response = requests.get(f"{url}{path}", timeout=30)
        answered.append(f"{path}: {response.status_code}")
        if response.status_code != 200:
            continue
        try:
            metadata = response.json()
        except ValueError:
            raise ServerError(
                f"{url}{path} answered something else than JSON: {response.text[:200]}"
            ) from None
        versions = [str(v) for v in metadata.get("versions") or []]
        if metadata.get("name") != ref.name or (versions and str(ref.version) not in versions):
            raise ServerError(
                f"{url}{path} describes {metadata.get('name')} versions {versions}, not {ref.spec}"
            )
        return metadata
    # A server without the metadata routes (the Ray peer): the model's own readiness, for a
    # server started with --model NAME:VERSION; the warm-up then checks every answer.
    for path in (f"/v2/models/{ref.name}/versions/{ref.version}/ready", f"/v2/models/{ref.name}/ready"):
        response = requests.get(f"{url}{path}", timeout=30)
        answered.append(f"{path}: {response.status_code}")
        if response.status_code == 200:
            return {"name": ref.name, "versions": [str(ref.version)], "checked": path}
    raise ServerError(f"{url} does not describe {ref.spec} ({', '.join(answered)})")


def check_served(url: str, ref: ModelRef | None, spec: ServerSpec | None = None) -> dict:
    """The served-model check of the server's own protocol (``check_metadata`` for ``/classify``,
    ``check_oip_model`` for OIP)."""
    if spec is not None and spec.oip and ref is not None:
        return check_oip_model(url, ref)
    return check_metadata(url, ref)


def warm_up(
    url: str,
    images: list[Path],
    protocol: str = "classify",
    model: str | None = None,
    classes: int | None = None,
    column: bool = False,
) -> None:
    """Send every image once, one request each, in ``protocol`` (``benchmarks.wire``); raises
    ``ServerError`` on any answer the load generator would count as failed."""
    for path in images:
        prepared = wire.build(protocol, [(path.name, path.read_bytes())], model, column)
        response = requests.post(
            f"{url}{prepared.path}", data=prepared.body, headers=prepared.headers, timeout=120
        )
        problem = wire.check(protocol, response.status_code, response.content, response.headers, 1, classes)
        if problem is not None:
            raise ServerError(f"warm-up request with {path.name}: {problem[:300]}")
