"""A version changed in place is loaded again while it serves (``service.serving.watcher``), and
``python -m training optimize`` never lets a poll see its rewrite half done
(``training.optimize.publish``).

In process, with a stand-in loader: a served version whose files change is loaded again and
swapped in, the old load released after its last request; a change that does not load leaves the
old load serving with one refusal; a hidden file or an unchanged folder reloads nothing. The
exchange that publishes a rewrite: an observer never sees the folder absent or mixed.

Served (a real ``bentoml serve``, ``CONVZOO_POLL_S=1``; real photos from Imagenette beside the repo,
skipped without them): ``python -m training import --data`` into the running server ends with the
int8 form served, and ``optimize --rewrite`` of that served version is served without a restart,
while a client classifying in a loop meanwhile gets no failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import REPO, SHARED_DATA, Server, expect, server_env

from service.config import ServiceConfig
from service.serving.registry import Policy, Registry
from service.serving.watcher import Watcher

COLORS = ["red", "blue", "green"]
"""The served model's labels: output i is the mean of the channel ``CHANNELS[i]`` (not in
alphabetical order, as the issue's labels were not)."""
CHANNELS = (0, 2, 1)
PER_CLASS = 24
"""Photos per class folder (a test split of about 11, a training split of about 50)."""
MARGIN = 0.12
"""How much the dominant channel's mean exceeds the others' in every photo kept (0..1): the int8
form and the SavedModel then give the same answer on each, so int8 passes the accuracy gate."""


# ------------------------------------------------------------------------------- in process


class Loads:
    """A stand-in for ``registry.load_version``: a ServedVersion-like object per load, or the
    error while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = False
        self.calls = 0

    def __call__(self, folder: Path, name: str, version: int, config) -> Loaded:
        self.calls += 1
        if self.broken:
            raise ValueError(f"{folder}/metadata.json: model.bin does not match its recorded SHA-256")
        return Loaded(name, version, (folder / "metadata.json").read_text())


class Loaded:
    def __init__(self, name: str, version: int, content: str) -> None:
        self.name, self.version, self.content, self.in_flight = name, version, content, 0
        self.key = f"{name}:{version}"
        self.metadata = {"architecture": "x", "input_size": [8, 8]}
        self.labels = ["a"]
        self.closed = False
        self.batcher = type("B", (), {"close": lambda _: setattr(self, "closed", True)})()
        self.choice = type("C", (), {"key": content, "runtime": "openvino", "precision": content})()
        self.choice.reason = "test"

    def info_labels(self, default: bool) -> tuple[str, ...]:
        return (self.name, str(self.version), self.content, self.content, "x", str(default).lower())


def rewrite(folder: Path, content: str) -> None:
    """A writer's in-place change: a new ``metadata.json`` renamed over the old one."""
    hidden = folder / ".metadata.json.tmp"
    hidden.write_text(content)
    hidden.replace(folder / "metadata.json")


class Lines(logging.Handler):
    """The watcher's log lines (its logger's own handler: BentoML may stop them propagating)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def test_a_served_version_changed_in_place_is_loaded_again(tmp_path):
    folder = tmp_path / "main" / "1"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text("fp32")
    registry, loads = Registry(default="main"), Loads()
    watcher = Watcher(registry, ServiceConfig(models_dir=tmp_path, poll_s=1), None, Policy(), loader=loads)
    watcher.poll()
    first = registry.get()
    assert (first.content, loads.calls) == ("fp32", 1)
    watcher.poll()
    (folder / ".tmp-openvino").mkdir()  # a writer's hidden folder is not part of the version
    (folder / ".tmp-openvino" / "model.bin").write_bytes(b"half")
    watcher.poll()
    assert loads.calls == 1 and registry.get() is first
    # changed in place: loaded again and swapped in; the old load goes once its last request ends
    first.in_flight = 1
    rewrite(folder, "int8")
    watcher.poll()
    assert (registry.get().content, loads.calls) == ("int8", 2)
    assert first.closed and watcher.retiring == [first]
    watcher._release_finished()
    assert watcher.retiring == [first]
    first.in_flight = 0
    watcher._release_finished()
    assert watcher.retiring == []
    # a change that does not load: the load before keeps serving, one refusal, tried once
    loads.broken = True
    rewrite(folder, "bf16")
    lines = Lines()
    logging.getLogger("bentoml.convzoo").addHandler(lines)
    try:
        for _ in range(3):
            watcher.poll()
    finally:
        logging.getLogger("bentoml.convzoo").removeHandler(lines)
    refusals = [line for line in lines.seen if "refused" in line]
    assert len(refusals) == 1 and "still serving it as loaded before" in refusals[0], refusals
    assert (registry.get().content, loads.calls) == ("int8", 3)
    assert "SHA-256" in watcher.reasons[("main", 1)]
    # fixed: its files change again, and it loads
    loads.broken = False
    rewrite(folder, "fp32 again")
    watcher.poll()
    assert (registry.get().content, loads.calls) == ("fp32 again", 4)
    assert not watcher.refused and not watcher.reasons


def test_publish_exchanges_a_folder_in_one_step(tmp_path):
    """``publish`` as a poll sees it: every look finds the version whole, old or new, never
    absent and never a mix of the two."""
    from training.optimize import measured_aside

    folder = tmp_path / "mine" / "1"
    (folder / "openvino").mkdir(parents=True)
    for name in ("metadata.json", "openvino/model.bin", "saved_model.pb"):
        (folder / name).write_text("old")

    def measure(copy: Path) -> dict:
        for name in ("openvino/model.bin", "metadata.json"):  # replaced, as optimize does
            (copy / f"{name}.new").write_text("new")
            (copy / f"{name}.new").replace(copy / name)
            time.sleep(0.05)  # a poll in the middle of the rewrite
        return {"done": True}

    seen, stop = [], threading.Event()

    def observe() -> None:
        while not stop.is_set():
            try:
                inode = os.stat(folder).st_ino
            except FileNotFoundError:
                seen.append(("absent",))
                continue
            try:
                look = tuple((folder / n).read_text() for n in ("metadata.json", "openvino/model.bin"))
            except FileNotFoundError:
                look = ("absent",)
            if os.stat(folder).st_ino == inode:  # else exchanged during this look: two folders seen
                seen.append(look)

    observer = threading.Thread(target=observe)
    observer.start()
    try:
        assert measured_aside(folder, measure) == {"done": True}
        time.sleep(0.02)
    finally:
        stop.set()
        observer.join()
    assert set(seen) == {("old", "old"), ("new", "new")}, set(seen)
    assert (folder / "saved_model.pb").read_text() == "old"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["1"]  # the old version removed


# --------------------------------------------------------------------------------------- served


def color_photos(destination: Path) -> Path:
    """A class-folder dataset of real Imagenette photos, each in the folder of its dominant colour
    (``COLORS``), the dominance at least ``MARGIN``."""
    from PIL import Image

    found = {color: 0 for color in COLORS}
    classes = [sorted(folder.glob("*.JPEG")) for folder in sorted(SHARED_DATA.iterdir()) if folder.is_dir()]
    for path in (path for paths in itertools.zip_longest(*classes) for path in paths if path):
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            means = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
        order = np.argsort(means)
        color = COLORS[CHANNELS.index(int(order[-1]))]
        if means[order[-1]] - means[order[-2]] >= MARGIN and found[color] < PER_CLASS:
            (destination / color).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination / color / path.name)
            found[color] += 1
            if min(found.values()) == PER_CLASS:
                return destination
    pytest.skip(f"{SHARED_DATA} has fewer than {PER_CLASS} photos of each colour: {found}")


def color_model():
    """uint8 [any, any, 3] in; output i is the sharpened mean of channel ``CHANNELS[i]`` (a 1x1
    convolution, then the average: what int8 quantizes is the pixels, whose range every calibration
    photo covers, not the means, which a test photo may take outside the calibrated range)."""
    import keras

    inputs = keras.Input((None, None, 3), dtype="uint8", name="pixels")
    mix = keras.layers.Conv2D(3, 1, name="logits", use_bias=False)
    x = mix(keras.ops.cast(inputs, "float32") / 255)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="colors")
    mix.set_weights([30 * np.eye(3)[:, list(CHANNELS)].reshape(1, 1, 3, 3)])
    return model


def training(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.fixture(scope="module")
def served(exported_model, bentoml_home, tmp_path_factory):
    """(server, models folder, data folder, the color model's .keras and labels): a server of a
    repository holding the service tests' model only, polling every second."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real photos not found at {SHARED_DATA}")
    folder = tmp_path_factory.mktemp("served_reload")
    data = color_photos(folder / "data")
    color_model().save(folder / "colors.keras")
    (folder / "labels.txt").write_text("\n".join(COLORS) + "\n", encoding="utf-8")
    models = folder / "models"
    shutil.copytree(exported_model, models / exported_model.parent.name / exported_model.name)
    env = {**server_env(models / exported_model.parent.name / exported_model.name, bentoml_home)}
    env["CONVZOO_POLL_S"] = "1"
    server = Server.started([], env, folder / "serve.log")
    yield server, models, data, folder
    server.stop()


def metadata_of(server: Server, name: str) -> dict:
    return expect(requests.post(f"{server.url}/metadata", json={"model": name}, timeout=30), 200, server)


def wait_until(condition, timeout: float, what: str, server: Server) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except (requests.RequestException, AssertionError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s\n{server.log_tail()}")


def test_an_import_into_a_running_server_ends_with_int8_served(served):
    server, models, data, folder = served
    done = training(
        "import", folder / "colors.keras", "--labels", folder / "labels.txt", "--name", "mine",
        "--image-size", "24",
        "--models-dir", models, "--data", data, "--precisions", "int8", "--limit", "8",
        "--calibration", "20",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    waited = wait_until(
        lambda: metadata_of(server, "mine")["runtime"]["key"] == "openvino-int8", 20, "int8", server
    )
    metadata = metadata_of(server, "mine")
    assert metadata["version"] == 1 and metadata["metrics"]["top1"] is not None
    assert metadata["runtimes"]["openvino-int8"]["gate"]["passed"]
    model = expect(requests.get(f"{server.url}/v2/models/mine", timeout=30), 200, server)
    assert model["versions"] == ["1"], model
    log = server.log.read_text()
    assert log.count("serving mine:1 with") == 1, log  # loaded once, complete: never the SavedModel first
    print(f"import --data: mine:1 served with openvino int8 {waited:.1f} s after the command ended")


def test_optimize_rewrite_of_a_served_version_is_served_without_a_failed_request(served):
    server, models, data, folder = served
    version = models / "mine" / "1"
    if not version.is_dir():
        pytest.skip("needs the version the import test put in place")
    before = metadata_of(server, "mine")["runtimes"]["openvino-int8"]["test"]["images"]
    photo = next((data / "blue").iterdir()).read_bytes()
    answers: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(
                    f"{server.url}/classify", files=[("images", ("p.jpg", photo))], data={"model": "mine"}
                )
                wrong = response.status_code == 200 and response.json()[0]["label"] != "blue"
                answers.append(-1 if wrong else response.status_code)

    mixes = Mixes(version)
    threads = [threading.Thread(target=client), mixes]
    for thread in threads:
        thread.start()
    try:
        done = training(
            "optimize", version, "--rewrite", "--data", data, "--precisions", "int8", "--limit", "6",
            "--calibration", "30",  # other int8 weights: a mix of old and new files would show
        )  # fmt: skip
        ended = time.monotonic()
        assert done.returncode == 0, done.stderr
        mixes.stop.set()
        waited = wait_until(
            lambda: metadata_of(server, "mine")["runtimes"]["openvino-int8"]["test"]["images"] != before,
            20,
            "the rewritten metadata",
            server,
        )
        served_after = time.monotonic() - ended
        wait_until(lambda: "unloaded mine:1" in server.log.read_text(), 20, "the old load released", server)
        time.sleep(1)
    finally:
        stop.set()
        mixes.stop.set()
        for thread in threads:
            thread.join()
    metadata = metadata_of(server, "mine")
    assert metadata["runtime"]["key"] == "openvino-int8" and metadata["metrics"]["top1"] is not None
    failed = [status for status in answers if status != 200]
    log = server.log.read_text()
    print(
        f"optimize --rewrite: new metadata served {served_after:.1f} s after the command ended "
        f"(found within {waited:.1f} s of polling); {len(answers)} requests meanwhile, {len(failed)} "
        f"failed; {mixes.looks} looks at the folder during the rewrite, {mixes.mixed} mixed"
    )
    assert answers and not failed, failed[:5]
    assert mixes.looks > 10 and mixes.mixed == 0
    assert log.count("reloaded mine:1") == 1 and "refused" not in log, server.log_tail()
    assert "Traceback" not in log


class Mixes(threading.Thread):
    """Looks at a version folder as a poll would, every 10 ms: is every form that metadata.json
    records there with its recorded size and SHA-256 (else: a mix of old and new files)?"""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.looks, self.mixed, self.stop = folder, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            try:
                inode = os.stat(self.folder).st_ino
            except OSError:  # the version absent: as bad as a mix
                self.looks, self.mixed = self.looks + 1, self.mixed + 1
                continue
            try:
                mixed = self.mixed_now()
            except (OSError, ValueError):  # a file absent, metadata.json half written
                mixed = True
            with contextlib.suppress(OSError):
                if os.stat(self.folder).st_ino != inode:
                    continue  # exchanged during the look: this look saw two folders, not one
            self.looks += 1
            self.mixed += mixed

    def mixed_now(self) -> bool:
        metadata = json.loads((self.folder / "metadata.json").read_text())
        for entry in (metadata.get("runtimes") or {}).values():
            for name, record in (entry.get("files") or {}).items():
                data = (self.folder / entry["path"] / name).read_bytes()
                if len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
                    return True
        return False
