"""The service's container image (``make container``): built once per session, run read-only as
a non-root user, classifying real photos; ``docker stop`` (SIGTERM) lets requests in flight finish.

Marked ``container`` (``make test-container``, and in ``make test-slow``); skipped when Docker is
absent or not running. Settings (environment):

- ``CONVZOO_TEST_IMAGE``: test this image instead of building one;
- ``BASE_IMAGE``, ``HOST_CA``, ``PACKAGES``: the build's settings (deploy/container.py); without
  ``BASE_IMAGE``, a local ``convzoo-base:bookworm`` (deploy/base-image/build.sh) is used when
  there is one, else BentoML's default base.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
LOCAL_BASE = "convzoo-base:bookworm"
MODEL = REPO / "models" / "imagenette" / "2"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )


@pytest.fixture(scope="session")
def docker_ready() -> None:
    if shutil.which(DOCKER) is None:
        pytest.skip("docker not installed")
    if docker("info", check=False).returncode != 0:
        pytest.skip("docker not running: start dockerd")


@pytest.fixture(scope="session")
def image(docker_ready, bentoml_home) -> str:
    """The image under test: built once (a few minutes: pip installs OpenVINO), tagged
    convzoo-test:* so that the user's convzoo:* stay as they are."""
    if os.environ.get("CONVZOO_TEST_IMAGE"):
        return os.environ["CONVZOO_TEST_IMAGE"]
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "CONVZOO_MODEL": "imagenette:2",
        "CONVZOO_MODELS_DIR": str(REPO / "models"),
        "IMAGE": "convzoo-test",
    }
    if not env.get("BASE_IMAGE") and docker("image", "inspect", LOCAL_BASE, check=False).returncode == 0:
        env["BASE_IMAGE"] = LOCAL_BASE
    build = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "container.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]
    return build.stdout.strip().splitlines()[-1]


class Container:
    """``docker run`` of the image: read-only root filesystem, /tmp a tmpfs, port on 127.0.0.1."""

    def __init__(self, image: str, *env: str) -> None:
        self.name = f"convzoo-test-{uuid.uuid4().hex[:8]}"
        options = [f"--env={e}" for e in env]
        docker(
            "run",
            "-d",
            "--name",
            self.name,
            "--read-only",
            "--tmpfs",
            "/tmp:rw,size=512m",
            "-p",
            "127.0.0.1::3000",
            *options,
            image,
        )
        port = docker("port", self.name, "3000/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", self.name).stdout.strip() != "true":
                break
            time.sleep(1)
        raise AssertionError(f"container not ready:\n{self.logs()}")

    def logs(self) -> str:
        result = docker("logs", "--tail", "80", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture(scope="module")
def container(image):
    running = Container(image)
    try:
        running.wait_ready()
        yield running
    finally:
        running.remove()


def photos(shared: Path, per_class: int) -> list[tuple[str, Path]]:
    """(expected label, photo): the first photos of each synset, labelled as the model names them
    (its labels follow the sorted synsets)."""
    labels = json.loads((MODEL / "metadata.json").read_text())["labels"]
    synsets = sorted(p for p in shared.iterdir() if p.is_dir())
    assert len(synsets) == len(labels)
    return [
        (label, photo)
        for label, synset in zip(labels, synsets, strict=True)
        for photo in sorted(synset.glob("*.JPEG"))[:per_class]
    ]


def classify(url: str, files: list[Path], timeout: float = 120) -> requests.Response:
    return requests.post(
        f"{url}/classify",
        files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in files],
        timeout=timeout,
    )


def test_image_runs_as_non_root_and_holds_the_model(image, container):
    assert docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip() == "bentoml"
    assert docker("exec", container.name, "id", "-u").stdout.strip() != "0"
    assert docker("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", container.name).stdout.strip() == "true"
    write = docker("exec", container.name, "touch", "/home/bentoml/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_readyz_livez_and_metadata(container):
    assert requests.get(f"{container.url}/readyz", timeout=5).status_code == 200
    assert requests.get(f"{container.url}/livez", timeout=5).status_code == 200
    metadata = requests.post(f"{container.url}/metadata", json={}, timeout=10).json()
    assert (metadata["name"], metadata["version"]) == ("imagenette", 2)
    assert metadata["bentoml_tag"] == "imagenette:2"
    assert (metadata["runtime"]["name"], metadata["runtime"]["precision"]) == ("openvino", "int8")


def test_the_cpu_image_carries_no_tensorflow(image, container):
    """bentofile.yaml packages OpenVINO only: TensorFlow is not in the image at all."""
    probe = docker(
        "exec",
        container.name,
        "sh",
        "-c",
        'python -c \'import importlib.util as u; print(u.find_spec("tensorflow"), '
        'u.find_spec("openvino") is not None)\'',
        check=False,
    )
    assert probe.stdout.split() == ["None", "True"], probe.stdout + probe.stderr


def test_classifies_real_photos(container, shared_imagenette):
    expected = photos(shared_imagenette, per_class=3)
    answer = classify(container.url, [p for _, p in expected])
    assert answer.status_code == 200, answer.text
    predicted = [p["label"] for p in answer.json()]
    right = sum(label == guess for (label, _), guess in zip(expected, predicted, strict=True))
    assert right >= 0.8 * len(expected), list(zip([e for e, _ in expected], predicted, strict=True))


def test_docker_stop_lets_requests_in_flight_finish(image, shared_imagenette):
    """SIGTERM while 32 requests of 32 photos each are being served: every one is answered."""
    running = Container(image, "CONVZOO_MAX_BATCH_SIZE=16")
    try:
        running.wait_ready()
        files = [p for _, p in photos(shared_imagenette, per_class=4)][:32]
        answers: list[object] = []
        answered_at: list[float] = []

        def client() -> None:
            try:
                answers.append(classify(running.url, files).status_code)
            except requests.RequestException as error:
                answers.append(repr(error))
            answered_at.append(time.monotonic())

        clients = [threading.Thread(target=client) for _ in range(32)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 30
        while not answered_at and time.monotonic() < deadline:  # serving has begun: stop now
            time.sleep(0.01)
        stop_started = time.monotonic()
        stop = subprocess.Popen([DOCKER, "stop", "-t", "60", running.name])
        for thread in clients:
            thread.join(timeout=120)
        stop.wait(timeout=120)
        stopped_in = time.monotonic() - stop_started
        assert answers == [200] * 32, f"{answers}\n{running.logs()}"
        after = sum(t > stop_started for t in answered_at)
        assert after >= 8, f"only {after} answered after the stop: too little was in flight"
        assert stopped_in < 55, running.logs()  # it stopped by itself, not killed after -t 60
    finally:
        running.remove()
