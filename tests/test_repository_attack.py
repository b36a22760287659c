"""Issue #31, "A second attack", the repository half: what the watcher and every load refuse, and
what they keep serving meanwhile. Real exports (copies of the repository's default model), a real
scratch repository, one real ``bentoml serve`` for the served tests (OpenVINO: it starts in
seconds, polls every second), and the checks in process where the hole is in a function.

- A refused new version never retires the served one (a folder holding only ``metadata.json``;
  3,000 empty numbered folders), on every protocol.
- A model folder that disappears is unloaded (``rm -rf models/other``).
- Containment: symbolic links (a model folder, a version folder, a file inside one) and paths or
  options in ``metadata.json`` that leave the version folder are refused, at start-up too, the
  default model included; nothing is written where metadata says.
- A folder named ``²`` is ignored with one log line, once; a model added afterwards still loads.
- An export is checked at load (labels against the outputs, input against ``input_size``), and
  its description is made once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import requests
import service_files as files
from helpers import REPO, Server

from service import repository
from service.config import ServiceConfig
from service.repository import InvalidExport
from service.serving.model_store import check_export, model_folder
from service.serving.registry import load_version, parse_models

DEFAULT_EXPORT = REPO / "models" / "imagenette" / "2"
POLL_S = 1


def export_copy(target: Path, **changes) -> Path:
    """A copy of the default model's export at ``target``, its ``metadata.json`` changed by
    ``changes`` (a key set to None is removed)."""
    shutil.copytree(DEFAULT_EXPORT, target)
    if changes:
        change_metadata(target, **changes)
    return target


def change_metadata(folder: Path, **changes) -> None:
    metadata = json.loads((folder / "metadata.json").read_text())
    for key, value in changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    (folder / "metadata.json").write_text(json.dumps(metadata))


def runtimes_with(entry_changes: dict) -> dict:
    """The default export's ``runtimes``, its ``openvino-int8`` entry changed."""
    runtimes = json.loads((DEFAULT_EXPORT / "metadata.json").read_text())["runtimes"]
    runtimes["openvino-int8"] = {**runtimes["openvino-int8"], **entry_changes}
    return runtimes


# ------------------------------------------------------------------------------- in process


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A repository with one export (``m/1``), and a copy of it outside (``outside/1``)."""
    root = tmp_path_factory.mktemp("scratch")
    export_copy(root / "repo" / "m" / "1")
    export_copy(root / "outside" / "1")
    return root


@pytest.mark.parametrize(
    "changes, reason",
    [
        (
            {"runtimes": runtimes_with({"path": "../../../outside/1/openvino/int8"})},
            "leaves the version folder",
        ),
        ({"runtimes": runtimes_with({"path": "/etc"})}, "not a relative path"),
        ({"runtimes": runtimes_with({"path": "openvino//int8"})}, "leaves the version folder"),
        ({"runtimes": runtimes_with({"config": {"CACHE_DIR": "/tmp/x"}})}, "CACHE_DIR"),
        ({"runtimes": runtimes_with({"config": {"INFERENCE_NUM_THREADS": 512}})}, "INFERENCE_NUM_THREADS"),
        ({"runtimes": runtimes_with({"runtime": "antigravity.x"})}, "names runtime"),
        ({"files": {"../../outside/1/saved_model.pb": {"bytes": 1, "sha256": "0"}}}, "leaves the version"),
        ({"files": {"/etc/hostname": {"bytes": 1, "sha256": "0"}}}, "not a relative path"),
        ({"input_size": [100_000, 100_000]}, "input_size"),  # warm-up would allocate terabytes
    ],
)
def test_metadata_never_names_a_path_or_option_outside_its_folder(scratch, tmp_path, changes, reason):
    """Attack 5: ``runtimes[...].path``, ``files`` and ``config`` from ``metadata.json`` that leave
    the folder or write elsewhere are refused before anything is read (schema, for every reader)."""
    folder = export_copy(tmp_path / "repo" / "m" / "1", **changes)
    with pytest.raises(InvalidExport, match=reason):
        check_export(folder)


def test_links_and_special_files_are_refused(scratch, tmp_path):
    """Attack 5: a version folder or model folder that is a symbolic link, a link inside a version
    folder (out, or even in), a FIFO (a reader would block on it)."""
    repo, outside = tmp_path / "repo", scratch / "outside" / "1"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "1").symlink_to(outside)
    with pytest.raises(InvalidExport, match="symbolic link"):
        check_export(repo / "m" / "1", repo)
    (repo / "n").symlink_to(scratch / "outside")
    with pytest.raises(InvalidExport, match="symbolic link"):
        check_export(repo / "n" / "1", repo)
    with pytest.raises(InvalidExport, match="symbolic link"):
        model_folder(repo, "n")
    inner = export_copy(repo / "k" / "1")
    shard = next((inner / "variables").glob("variables.data-*"))
    shard.unlink()
    shard.symlink_to(next((outside / "variables").glob("variables.data-*")))
    with pytest.raises(InvalidExport, match="variables.data-.* is a symbolic link"):
        check_export(inner, repo)
    with pytest.raises(InvalidExport, match="symbolic link"):
        check_export(inner)  # a store's copy, checked on its own
    named = export_copy(repo / "j" / "1")
    (named / "x\nFAKE LINE\x1b[2J").symlink_to("/etc/hostname")
    with pytest.raises(InvalidExport) as refused:
        check_export(named, repo)
    assert "x\\nFAKE LINE\\x1b[2J is a symbolic link" in str(refused.value)  # one line, no escape
    fifo = export_copy(repo / "f" / "1")
    os.mkfifo(fifo / "openvino" / "pipe")
    with pytest.raises(InvalidExport, match="not a plain file"):
        check_export(fifo, repo)
    assert check_export(scratch / "repo" / "m" / "1", scratch / "repo")["name"] == "imagenette"


def test_a_huge_metadata_file_is_refused_before_it_is_parsed(tmp_path):
    folder = export_copy(tmp_path / "m" / "1", notes="x" * (repository.MAX_METADATA_BYTES + 1))
    with pytest.raises(InvalidExport, match="MAX_METADATA_BYTES"):
        check_export(folder)


def test_version_policies_take_ascii_digits_only():
    """Attack 6/7 on settings: ``CONVZOO_MODELS`` with a fullwidth or superscript digit is refused
    (``'２'.isdigit()`` held and quietly meant version 2)."""
    for bad in ("a:２", "a:²", "a:latest=٢", "a:0", "a:1" + "0" * 9):
        with pytest.raises(ValueError, match="CONVZOO_MODELS"):
            parse_models(bad)
    assert str(parse_models("a:3+5")["a"]) == "3+5"


@pytest.fixture(scope="module")
def config() -> ServiceConfig:
    return ServiceConfig(max_batch_size=2, runtime="auto")


def test_an_export_is_checked_against_its_metadata_at_load(scratch, tmp_path, config):
    """Attack 9: labels against the output size, the input against ``input_size``, each refused
    with a one-line reason; a consistent copy loads."""
    few = export_copy(tmp_path / "few" / "1", labels=["a", "b"])
    with pytest.raises(InvalidExport, match=r"10\] for one image; metadata.json has 2 labels"):
        load_version(few, "few", 1, config)
    small = export_copy(tmp_path / "small" / "1", input_size=[64, 64])
    with pytest.raises(InvalidExport, match=r"input is \[None, 128, 128, 3\].*input_size"):
        load_version(small, "small", 1, config)


def test_the_description_is_made_once_per_version(tmp_path, config):
    """Attack 9: ``describe()`` (``/metadata``, v2 model metadata) is computed at load, not per request."""
    folder = export_copy(tmp_path / "big" / "1", notes=["/home/someone/x"] * 200_000)  # ~3.4 MB
    served = load_version(folder, "big", 1, config)
    started = time.perf_counter()
    first, second = served.describe(), served.describe()
    assert time.perf_counter() - started < 0.01
    assert first is second and first["notes"][0] == "x" and first["runtime"]["key"] == served.choice.key


# -------------------------------------------------------------------------------- served


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server on a scratch repository that, at start, holds: ``imagenette/2`` (default),
    ``other/2``, ``other/5`` (a symbolic link to an export outside), ``linked`` (a model folder
    that is a symbolic link), ``imagenette/²`` and ``other/٢`` (not versions)."""
    root = tmp_path_factory.mktemp("served")
    repo, outside = root / "repo", root / "outside"
    export_copy(repo / "imagenette" / "2")
    export_copy(repo / "other" / "2")
    export_copy(outside / "5")
    export_copy(outside / "linked" / "1")
    (repo / "other" / "5").symlink_to(outside / "5")
    (repo / "linked").symlink_to(outside / "linked")
    (repo / "imagenette" / "²").mkdir()
    (repo / "other" / "٢").mkdir()
    env = {
        **os.environ,
        "CONVZOO_MODEL": "imagenette",
        "CONVZOO_MODELS_DIR": str(repo),
        "CONVZOO_POLL_S": str(POLL_S),
        "CONVZOO_MAX_BATCH_SIZE": "4",
        "BENTOML_HOME": str(root / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    server = Server.started([], env, root / "serve.log")
    try:
        yield server, repo, outside
    finally:
        server.stop()


PHOTO = files.encode(files.photo((320, 240), seed=7), "JPEG", quality=90)


def answers(server: Server, name: str) -> dict[str, int]:
    """What each protocol answers for model ``name``: status codes, and the version served."""
    url = server.url
    classify = requests.post(
        f"{url}/classify", files={"images": ("p.jpg", PHOTO)}, data={"model": name}, timeout=30
    )
    metadata = requests.post(f"{url}/metadata", json={"model": name}, timeout=30)
    return {
        "classify": classify.status_code,
        "v2": requests.get(f"{url}/v2/models/{name}/ready", timeout=30).status_code,
        "v1": requests.get(f"{url}/v1/models/{name}", timeout=30).status_code,
        "version": metadata.json().get("version") if metadata.status_code == 200 else metadata.status_code,
    }


SERVING_2 = {"classify": 200, "v2": 200, "v1": 200, "version": 2}
GONE = {"classify": 404, "v2": 404, "v1": 404, "version": 404}


def log(server: Server) -> str:
    return server.log.read_text(errors="replace")


def wait_for(condition, what: str, server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s\n{server.log_tail()}")


def test_start_up_refuses_links_and_ignores_odd_names_once(served):
    """Attacks 5 and 7 at start-up: the linked version and the linked model are not served, the
    folders named ``²`` and ``٢`` are noted once each, and the rest is served."""
    server, repo, _ = served
    assert answers(server, "other") == SERVING_2
    assert answers(server, "linked") == GONE
    time.sleep(3 * POLL_S)
    text = log(server)
    for entry in ("imagenette/\\xb2: not a version", "other/\\u0662: not a version"):
        assert text.count(entry) == 1, text
    assert text.count(f"ignoring {repo}/other/5: a symbolic link") == 1, text
    assert text.count(f"ignoring {repo}/linked: a symbolic link") == 1, text


def test_a_refused_version_never_retires_the_served_one(served):
    """Attack 3: ``other/3`` with only ``metadata.json``, then 3,000 empty numbered folders."""
    server, repo, _ = served
    (repo / "other" / "3").mkdir()
    shutil.copy(DEFAULT_EXPORT / "metadata.json", repo / "other" / "3")
    wait_for(lambda: "refused other:3" in log(server), "other:3 refused", server)
    time.sleep(2 * POLL_S)
    assert answers(server, "other") == SERVING_2
    flood = [repo / "other" / str(v) for v in range(1000, 4000)]
    for folder in flood:
        folder.mkdir()
    try:
        wait_for(lambda: "refused other:3999" in log(server), "the flood seen", server)
        time.sleep(2 * POLL_S)
        assert answers(server, "other") == SERVING_2
        assert "retiring other:2" not in log(server)
        assert log(server).count("refused other:") < 30  # a few lines and a count, not 3,000
    finally:
        for folder in flood:
            folder.rmdir()
        shutil.rmtree(repo / "other" / "3")


def test_a_name_that_is_not_a_version_never_stops_the_watcher(served):
    """Attack 7 after start: ``mkdir imagenette/³``; a model added afterwards is served."""
    server, repo, _ = served
    (repo / "imagenette" / "³").mkdir()
    export_copy(repo / ".tmp-third" / "1")
    (repo / ".tmp-third").rename(repo / "third")
    wait_for(lambda: answers(server, "third")["v2"] == 200, "third served", server)
    time.sleep(3 * POLL_S)
    assert log(server).count("imagenette/\\xb3: not a version") == 1


def test_links_and_metadata_paths_out_are_refused_while_serving(served, tmp_path):
    """Attack 5 after start: a file of a version that is a link out, a runtime path out, a
    ``CACHE_DIR`` in metadata (no folder is created there); ``other:2`` serves throughout."""
    server, repo, outside = served
    staging = tmp_path / "staging"
    inner = export_copy(staging / "6")
    shard = next((inner / "variables").glob("variables.data-*"))
    shard.unlink()
    shard.symlink_to(next((outside / "5" / "variables").glob("variables.data-*")))
    export_copy(staging / "7", runtimes=runtimes_with({"path": "../../../outside/5/openvino/int8"}))
    cache = tmp_path / "written-here"
    export_copy(staging / "8", runtimes=runtimes_with({"config": {"CACHE_DIR": str(cache)}}))
    for version in (6, 7, 8):
        (staging / str(version)).rename(repo / "other" / str(version))
    for version in (6, 7, 8):
        wait_for(lambda v=version: f"refused other:{v}" in log(server), f"other:{version} refused", server)
    assert answers(server, "other") == SERVING_2
    assert not cache.exists()
    assert "is a symbolic link" in log(server).split("refused other:6", 1)[1].splitlines()[0]
    for version in (6, 7, 8):
        shutil.rmtree(repo / "other" / str(version))


def test_labels_that_do_not_match_the_outputs_are_refused(served):
    """Attack 9: a version whose ``labels`` has 2 entries for 10 outputs is refused with the
    reason, the working version of its model stays."""
    server, repo, _ = served
    export_copy(repo / "other" / ".tmp-9", labels=["a", "b"])
    (repo / "other" / ".tmp-9").rename(repo / "other" / "9")
    wait_for(lambda: "refused other:9" in log(server), "other:9 refused", server)
    line = log(server).split("refused other:9", 1)[1].splitlines()[0]
    assert "metadata.json has 2 labels" in line and "still serving" in line
    assert answers(server, "other") == SERVING_2
    shutil.rmtree(repo / "other" / "9")


def test_a_removed_model_folder_is_unloaded(served):
    """Attack 4: ``rm -rf models/other`` while it serves: unloaded, 404 on every protocol."""
    server, repo, _ = served
    assert answers(server, "other") == SERVING_2
    shutil.rmtree(repo / "other")
    wait_for(lambda: "unloaded other:2" in log(server), "other:2 unloaded", server)
    assert answers(server, "other") == GONE
    assert answers(server, "imagenette")["version"] == 2


@pytest.mark.parametrize("attack", ["link inside", "labels"])
def test_start_up_refuses_a_bad_default_model(tmp_path, attack):
    """Attacks 5 and 9 for the default model: its latest version holds a link out (the store's
    copy used to follow it), or 2 labels for 10 outputs: the server does not start, and says why
    in one line."""
    repo = tmp_path / "repo"
    export_copy(repo / "imagenette" / "2")
    if attack == "labels":
        export_copy(repo / "imagenette" / "3", labels=["a", "b"])
    else:
        inner = export_copy(repo / "imagenette" / "3")
        shard = next((inner / "variables").glob("variables.data-*"))
        outside = export_copy(tmp_path / "outside")
        shard.unlink()
        shard.symlink_to(next((outside / "variables").glob("variables.data-*")))
    env = {
        **os.environ,
        "CONVZOO_MODEL": "imagenette",
        "CONVZOO_MODELS_DIR": str(repo),
        "BENTOML_HOME": str(tmp_path / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    lines = Server([], env, tmp_path / "serve.log").refusal_lines()
    reason = "metadata.json has 2 labels" if attack == "labels" else "is a symbolic link"
    assert len(lines) == 1 and reason in lines[0], lines


def test_the_snapshot_copies_where_it_cannot_link(tmp_path):
    """``snapshot``'s other way (a read-only repository, another file system): a real copy, made
    through the same walk, refusing a link out the same way."""
    folder = export_copy(tmp_path / "repo" / "m" / "1")
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "copy").mkdir()
        repository._copy_tree(descriptor, tmp_path / "copy", folder, link=False)
        assert check_export(tmp_path / "copy")["name"] == "imagenette"
        assert (tmp_path / "copy" / "saved_model.pb").stat().st_ino != (
            folder / "saved_model.pb"
        ).stat().st_ino
        (folder / "fingerprint.pb").unlink()
        (folder / "fingerprint.pb").symlink_to("/etc/hostname")
        (tmp_path / "again").mkdir()
        with pytest.raises(repository.InvalidExport, match="fingerprint.pb is a symbolic link"):
            repository._copy_tree(descriptor, tmp_path / "again", folder, link=False)
    finally:
        os.close(descriptor)


def test_a_folder_replaced_by_a_link_after_load_is_retired(tmp_path, caplog):
    """Attack 5 after load: a served model folder (``other``) or version folder (``third/1``)
    swapped for a symbolic link to the same files: no longer in the repository, so retired (its
    requests finish first), noted once; the default model keeps its version whatever happens."""
    from service.serving.registry import Policy, Registry
    from service.serving.watcher import Watcher

    repo = tmp_path / "repo"
    for name in ("imagenette", "other", "third"):
        export_copy(repo / name / "1")
    config = ServiceConfig(models_dir=repo, max_batch_size=1, poll_s=1)
    registry = Registry(default="imagenette")
    registry.add(load_version(repo / "imagenette" / "1", "imagenette", 1, config))
    watcher = Watcher(registry, config, None, Policy())
    watcher.poll()
    assert registry.summary() == "imagenette:1 (default), other:1, third:1"
    for folder in (repo / "other", repo / "third" / "1", repo / "imagenette" / "1"):
        folder.rename(folder.with_name(f".real-{folder.name}"))
        folder.symlink_to(folder.with_name(f".real-{folder.name}"))
    with caplog.at_level("INFO", logger="bentoml.convzoo"):
        for _ in range(3):
            watcher.poll()
            watcher._release_finished()
    assert registry.summary() == "imagenette:1 (default)"
    assert caplog.text.count(f"ignoring {repo / 'other'}: a symbolic link") == 1
    assert caplog.text.count(f"ignoring {repo / 'third' / '1'}: a symbolic link") == 1
    assert "unloaded other:1" in caplog.text and "unloaded third:1" in caplog.text
