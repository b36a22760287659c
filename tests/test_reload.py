"""Hot reload of the model repository, under Locust load, with a real ``bentoml serve``: a new
version goes live within the poll interval and load time, a corrupt one is refused while the
served one keeps serving, a removed one is retired; not one request fails meanwhile.

Plus the watcher and the version policies in process (``service.serving.watcher``,
``service.serving.registry``), with a stand-in loader: which versions each policy serves, a
refused folder tried again only once its files change, a retired version released only when its
last request has ended.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import service_files as files
from helpers import REPO, Server, expect

from service.config import ServiceConfig
from service.serving.registry import Policy, Registry, parse_models
from service.serving.watcher import Watcher

LOCUST = Path(sys.executable).parent / "locust"
RELOAD_DEADLINE_S = 30
"""The issue's limit: a new version answers within 30 s of its folder appearing."""


# ------------------------------------------------------------------------------- in process


def test_version_policies():
    available = [1, 2, 5, 7]
    assert Policy.parse("").select(available) == [7]
    assert Policy.parse("latest=2").select(available) == [5, 7]
    assert Policy.parse("all").select(available) == available
    assert Policy.parse("2+5+9").select(available) == [2, 5]
    assert parse_models("a, b:3, c:latest=2, d:all") == {
        "a": Policy(),
        "b": Policy("specific", versions=(3,)),
        "c": Policy("latest", 2),
        "d": Policy("all"),
    }
    assert parse_models(None) is None
    for bad in ("a:latest=0", "a:newest", "../x", "a:3+x"):
        with pytest.raises(ValueError, match="CONVZOO_MODELS"):
            parse_models(bad)


class Stand:
    """A stand-in for ``registry.load_version``: a ServedVersion-like object per folder, or the
    error a folder named in ``broken`` raises."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, folder: Path, name: str, version: int, config) -> object:
        self.calls.append(f"{name}:{version}")
        if f"{name}:{version}" in self.broken:
            raise ValueError(f"{folder}: checksum mismatch")
        return FakeVersion(name, version)


class FakeVersion:
    def __init__(self, name: str, version: int) -> None:
        self.name, self.version, self.in_flight = name, version, 0
        self.key = f"{name}:{version}"
        self.metadata = {"architecture": "x", "input_size": [8, 8]}
        self.labels = ["a"]
        self.batcher = type("B", (), {"close": lambda self: None})()
        self.choice = type(
            "C", (), {"key": "openvino-int8", "runtime": "openvino", "precision": "int8", "reason": "test"}
        )()

    def info_labels(self, default: bool) -> tuple[str, ...]:
        return (self.name, str(self.version), "openvino-int8", "int8", "x", str(default).lower())


def make_version(root: Path, name: str, version: int) -> None:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"x")


def test_the_watcher_follows_the_repository(tmp_path):
    make_version(tmp_path, "main", 1)
    make_version(tmp_path, "other", 1)
    make_version(tmp_path, "other", 2)
    registry = Registry(default="main")
    stand = Stand()
    config = ServiceConfig(models_dir=tmp_path, poll_s=1)
    watcher = Watcher(registry, config, parse_models("other:latest=2"), Policy(), loader=stand)
    watcher.poll()
    assert registry.summary() == "main:1 (default), other:1, other:2"
    # a new version of the default: served, and the old one retired
    make_version(tmp_path, "main", 2)
    watcher.poll()
    assert registry.summary() == "main:2 (default), other:1, other:2"
    assert [v.key for v in watcher.retiring] == ["main:1"]
    # a request still holds main:1: not released until it ends
    watcher.retiring[0].in_flight = 1
    watcher._release_finished()
    assert [v.key for v in watcher.retiring] == ["main:1"]
    watcher.retiring[0].in_flight = 0
    watcher._release_finished()
    assert watcher.retiring == []
    # a corrupt version is refused once, tried again only when its files change
    make_version(tmp_path, "main", 3)
    stand.broken.add("main:3")
    watcher.poll()
    watcher.poll()
    assert stand.calls.count("main:3") == 1 and registry.get().key == "main:2"
    stand.broken.clear()
    time.sleep(0.01)
    (tmp_path / "main" / "3" / "saved_model.pb").write_bytes(b"fixed")
    watcher.poll()
    assert registry.get().key == "main:3"
    # removed folders: their versions retire, but the default model keeps one
    shutil.rmtree(tmp_path / "other" / "1")
    for version in (1, 2, 3):
        shutil.rmtree(tmp_path / "main" / str(version))
    watcher.poll()
    assert registry.summary() == "main:3 (default), other:2"


def test_a_version_policy_on_the_default_model_serves_its_versions_beside_the_latest(tmp_path):
    """CONVZOO_MODELS=main:1+2 with an unpinned default: v1 beside v2 (the default's policy was
    ignored: only the latest was served); the default answers with the latest, and a pin
    (CONVZOO_MODEL=main:1) keeps only its version."""
    for version in (1, 2, 3):
        make_version(tmp_path, "main", version)
    config = ServiceConfig(models_dir=tmp_path, poll_s=1)
    registry = Registry(default="main")
    Watcher(registry, config, parse_models("main:1+2"), Policy(), loader=Stand()).poll()
    assert registry.summary() == "main:1 (default), main:2 (default), main:3 (default)"
    assert registry.get().key == "main:3"
    pinned = Registry(default="main")
    Watcher(
        pinned, config, parse_models("main:2+3"), Policy("specific", versions=(1,)), loader=Stand()
    ).poll()
    assert pinned.summary() == "main:1 (default)"


# -------------------------------------------------------------------------- served, under load


@pytest.fixture()
def repository(tmp_path) -> Path:
    shutil.copytree(REPO / "models" / "imagenette" / "2", tmp_path / "repo" / "imagenette" / "2")
    return tmp_path / "repo"


def put_in_place(repository: Path, version: int, corrupt: bool = False) -> None:
    """A new version the way writers do it: a hidden copy, then one rename."""
    hidden = repository / "imagenette" / f".tmp-{version}"
    shutil.copytree(repository / "imagenette" / "2", hidden)
    if corrupt:
        shard = next((hidden / "variables").glob("variables.data-*"))
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    hidden.rename(repository / "imagenette" / str(version))


def served_version(server: Server) -> int:
    return expect(requests.post(f"{server.url}/metadata", json={}, timeout=10), 200, server)["version"]


def wait_for(condition, timeout: float, what: str, server: Server) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s\n{server.log_tail()}")


def test_hot_reload_under_load_fails_no_request(repository, bentoml_home, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(files.encode(files.photo((640, 480), seed=5), "JPEG", quality=90))
    env = {
        **os.environ,
        "CONVZOO_MODEL": "imagenette",
        "CONVZOO_MODELS_DIR": str(repository),
        "CONVZOO_POLL_S": "2",
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    server = Server.started([], env, tmp_path / "serve.log")
    locust = subprocess.Popen(
        [str(LOCUST), "-f", str(Path(__file__).with_name("reload_locustfile.py")), "--headless"]
        + ["-u", "6", "-r", "6", "-t", "50s", "--host", server.url, "--csv", str(tmp_path / "load")]
        + ["--only-summary", "--stop-timeout", "10"],
        env={**os.environ, "RELOAD_PHOTO": str(photo)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(8)
        assert served_version(server) == 2
        put_in_place(repository, 3)
        reload_s = wait_for(lambda: served_version(server) == 3, RELOAD_DEADLINE_S, "version 3", server)
        wait_for(lambda: "unloaded imagenette:2" in server.log.read_text(), 20, "2 released", server)
        put_in_place(repository, 4, corrupt=True)
        wait_for(lambda: "refused imagenette:4" in server.log.read_text(), 20, "4 refused", server)
        time.sleep(3)
        assert served_version(server) == 3
        # the corrupt one goes, then version 3 too: the default model goes back to 2
        shutil.rmtree(repository / "imagenette" / "4")
        (repository / "imagenette" / "3").rename(repository / "imagenette" / ".removed-3")
        wait_for(lambda: served_version(server) == 2, RELOAD_DEADLINE_S, "back to 2", server)
        assert locust.wait(timeout=120) == 0
    finally:
        if locust.poll() is None:
            locust.kill()
        server.stop()
    with open(tmp_path / "load_stats.csv") as table:
        total = next(row for row in csv.DictReader(table) if row["Name"] == "Aggregated")
    log = server.log.read_text()
    count = total["Request Count"]
    print(f"reload: version 3 served {reload_s:.1f} s after its folder appeared; {count} requests, 0 failed")
    assert int(total["Request Count"]) > 200
    assert int(total["Failure Count"]) == 0, (tmp_path / "load_failures.csv").read_text()
    assert reload_s < RELOAD_DEADLINE_S
    refusals = [line for line in log.splitlines() if "refused imagenette:4" in line]
    assert len(refusals) == 1 and "still serving imagenette:3" in refusals[0]
    assert re.search(r"checksum|SHA-256|differs", refusals[0], re.IGNORECASE), refusals[0]
    assert "Traceback" not in log
