"""`make serve` on a developer's machine listens on 127.0.0.1 only, unless BENTOML_HOST says
otherwise (the service has no API key by default: a laptop's model server must not be open to its
network). Containers bind every interface instead (tests/test_deploy.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
needs_venv = pytest.mark.skipif(
    not (VENV / "bin" / "bentoml").exists(), reason="no .venv (make serve and make test create it)"
)


def serve_command(**env: str) -> list[str]:
    """The command line `make serve` runs, as its shell resolves it with ``env``."""
    plan = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "serve"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = [line for line in plan.splitlines() if "bentoml serve" in line]
    clean = {k: v for k, v in os.environ.items() if k not in {"BENTOML_HOST", "BENTOML_PORT"}}
    resolved = subprocess.run(
        ["bash", "-c", f'for word in {line}; do printf "%s\\n" "$word"; done'],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return resolved.splitlines()


def test_make_serve_binds_localhost_unless_told():
    command = serve_command()
    assert command[-5:] == ["serve", "--host", "127.0.0.1", "--port", "3000"]
    assert serve_command(BENTOML_HOST="0.0.0.0", BENTOML_PORT="8080")[-4:] == [
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]
    # A hostile value stays one argument (quoted), for bentoml to refuse.
    assert serve_command(BENTOML_HOST="127.0.0.1 --reload")[-3] == "127.0.0.1 --reload"


def listening(port: int) -> set[str]:
    """The local addresses that listen on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


@needs_venv
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_make_serve_listens_on_127_0_0_1(bentoml_home, tmp_path):
    """The real `make serve`, with the repository's default model: ready on 127.0.0.1, and that is
    the only address its port listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOST"}
    env.update(BENTOML_HOME=str(bentoml_home), BENTOML_PORT=str(port), BENTOML_DO_NOT_TRACK="true")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        ["make", "-o", ".venv/.installed", "serve"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert listening(port) == {"127.0.0.1"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
