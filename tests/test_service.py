"""The HTTP service end to end: a real ``bentoml serve`` on a free port, real files, real model.

A small zoo model (random weights, sharpened so its answers are decisive) is exported into a
temporary model repository; the server imports it into a temporary BENTOML_HOME (never
~/bentoml). Answers are checked against the SavedModel's own in-process prediction on the same
decoded file: same top-1, probabilities within ``TOLERANCE``. They cannot be bit-identical: the
service resizes with PIL on the API side (antialiased bilinear, like the model's ``Resizing``
layer, measured in tests/test_images.py at < 0.5 gray levels mean difference), the reference lets
the model's TensorFlow layer resize the full image.

The tests in this module share one server and run in file order; the last one checks that the
server still answers correctly after the whole refusal battery.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import service_files as files
from helpers import (
    BENTOML,
    INPUT_SIZE,
    LABELS,
    MODEL_NAME,
    REPO,
    TOLERANCE,
    Server,
    assert_matches,
    classify,
    expect,
    server_env,
)

from service.serving.images import decode


@pytest.fixture(scope="session")
def reference(exported_model):
    """The SavedModel's own prediction on a decoded file: ``reference(data, name) -> probs``."""
    import tensorflow as tf

    serving_default = tf.saved_model.load(str(exported_model)).signatures["serving_default"]

    def predict(data: bytes, name: str) -> np.ndarray:
        image = np.asarray(decode(data, name))[None]
        return serving_default(images=tf.constant(image))["probabilities"].numpy()[0]

    return predict


@pytest.fixture(scope="session")
def server(exported_model, bentoml_home, tmp_path_factory):
    server = Server(
        [], server_env(exported_model, bentoml_home), tmp_path_factory.mktemp("logs") / "serve.log"
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------- tests


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs a process that may run on two CPUs or more",
)
def test_decoding_threads_default_to_none_on_one_cpu():
    """One CPU per worker: decode in the batch, in the model's thread (threads only add hand-offs);
    more: 4 threads. Two workers on two CPUs have one CPU each."""
    code = "from service.config import load_config; print(load_config().decode_threads)"

    def threads(*prefix: str, **env: str) -> str:
        return subprocess.run(
            [*prefix, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, **env},
        ).stdout.strip()

    assert threads() == "4"
    assert threads("taskset", "-c", "0") == "0"
    assert threads("taskset", "-c", "0", CONVZOO_DECODE_THREADS="2") == "2"
    assert threads(CONVZOO_WORKERS="2") == "0"
    refused = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "CONVZOO_DECODE_THREADS": "-1"},
    )
    assert refused.returncode != 0 and "CONVZOO_DECODE_THREADS must be at least 0" in refused.stderr


def test_workers_and_threads_follow_the_cpu_count(monkeypatch):
    """Without GPUs: one worker per 6 CPUs, each worker's model on its share of them, decoding in
    as many threads (at least 4) or, on one CPU, in the batch."""
    from service import config

    for cpus, workers, share, decoders in [
        (1, 1, 1, 0),
        (2, 1, 2, 4),
        (4, 1, 4, 4),
        (12, 2, 6, 6),
        (64, 10, 6, 6),
    ]:
        monkeypatch.setattr(config, "cpu_count", lambda cpus=cpus: cpus)
        assert config.default_cpu_workers() == workers, cpus
        assert config.worker_cpus(workers) == share, cpus
        assert config.default_decode_threads(share) == decoders, cpus


def test_importing_the_service_does_no_work():
    """The environment is read by service.config alone; the model is resolved and the runtime
    chosen when the server starts, never when the module is imported: a model that exists nowhere
    does not stop an import, and nothing is loaded."""
    code = (
        "import sys, service.service as s\n"
        "loaded = any(m.startswith(('tensorflow', 'openvino')) for m in sys.modules)\n"
        "print('reference' in vars(s.MODEL), loaded)"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "CONVZOO_MODEL": "no-such-model", "BENTOML_DO_NOT_TRACK": "true"},
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.split() == ["False", "False"]


def test_metadata_names_the_served_model(server, exported_model):
    metadata = expect(requests.post(f"{server.url}/metadata", json={}, timeout=30), 200, server)
    assert (metadata["name"], metadata["version"]) == (MODEL_NAME, int(exported_model.name))
    assert metadata["labels"] == LABELS and metadata["input_size"] == list(INPUT_SIZE)
    assert metadata["limits"]["max_images"] == 8


@pytest.mark.parametrize("name", sorted(files.valid_files()))
def test_every_kind_of_image_is_classified_like_in_process(server, reference, name):
    data, _ = files.valid_files()[name]
    [answer] = expect(classify(server, [(name, data)]), 200, server)
    assert_matches(answer, reference(data, name))


def test_many_images_in_one_request_answer_in_order(server, reference):
    names = ["rgb.png", "gray.jpg", "tiny_1x1.png", "cmyk.jpg"]
    sent = [(name, files.valid_files()[name][0]) for name in names]
    answers = expect(classify(server, sent, top_k=3), 200, server)
    assert len(answers) == len(names)
    for (name, data), answer in zip(sent, answers, strict=True):
        assert_matches(answer, reference(data, name), top_k=3)


def test_bentoml_client_classifies_files_on_disk(server, reference, exported_model, tmp_path):
    """BentoML's own clients call ``/classify`` with every parameter (they send form fields
    JSON-encoded, ``"servicetest:1"``) and get exactly what curl's plain fields get; ``latest``
    names the highest version; an unknown model is refused naming it as the client wrote it."""
    import asyncio

    import bentoml

    paths = []
    for name in ["rgb.jpg", "rgb.webp"]:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(files.valid_files()[name][0])
    sent = [(path.name, path.read_bytes()) for path in paths]
    version = int(exported_model.name)
    with bentoml.SyncHTTPClient(server.url) as client:
        answers = client.classify(images=paths, top_k=2)
        pinned = client.classify(images=paths, top_k=2, model=f"{MODEL_NAME}:{version}")
        latest = client.classify(images=paths, top_k=2, model=f"{MODEL_NAME}:latest")
        metadata = client.metadata()
        pinned_metadata = client.metadata(model=f"{MODEL_NAME}:{version}")
        with pytest.raises(bentoml.exceptions.BentoMLException) as unknown:
            client.classify(images=paths, model="nope")
    assert metadata["name"] == MODEL_NAME and pinned_metadata["version"] == version
    for path, answer in zip(paths, answers, strict=True):
        assert_matches(answer, reference(path.read_bytes(), path.name), top_k=2)
    with_curl = expect(classify(server, sent, top_k="2", model=f"{MODEL_NAME}:{version}"), 200, server)
    assert pinned == latest == answers == with_curl
    assert "no model 'nope' is served" in str(unknown.value)

    async def with_the_async_client():
        async with bentoml.AsyncHTTPClient(server.url) as client:
            return await client.classify(images=paths, top_k=2, model=f"{MODEL_NAME}:{version}")

    assert asyncio.run(with_the_async_client()) == with_curl


def test_latest_names_the_highest_version_everywhere(server, exported_model):
    """``name:latest`` in a form field and ``versions/latest`` in a URL path resolve alike."""
    data = files.valid_files()["rgb.png"][0]
    version = str(int(exported_model.name))
    by_field = expect(classify(server, [("a.png", data)], model=f"{MODEL_NAME}:latest"), 200, server)
    assert by_field == expect(classify(server, [("a.png", data)]), 200, server)
    v2 = requests.get(f"{server.url}/v2/models/{MODEL_NAME}/versions/latest", timeout=30)
    assert v2.status_code == 200 and v2.json()["versions"] == [version]
    v1 = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/versions/latest", timeout=30)
    assert v1.status_code == 200 and [s["version"] for s in v1.json()["model_version_status"]] == [version]


def test_phone_photo_is_classified_upright(server):
    upright = files.photo((96, 72), seed=5)
    sent = [
        ("upright.jpg", files.encode(upright, "JPEG", quality=95)),
        ("phone.jpg", files.exif_rotated_jpeg(upright)),
    ]
    upright_answer, phone_answer = expect(classify(server, sent, top_k=10), 200, server)
    assert phone_answer["label"] == upright_answer["label"]
    upright_scores = {e["label"]: e["score"] for e in upright_answer["top_k"]}
    for entry in phone_answer["top_k"]:
        assert abs(entry["score"] - upright_scores[entry["label"]]) < TOLERANCE


def test_top_k_is_bounded(server):
    data = files.valid_files()["rgb.png"][0]
    assert len(expect(classify(server, [("a.png", data)], top_k=100), 200, server)[0]["top_k"]) == 10
    for bad in (0, 101, "many"):
        body = expect(classify(server, [("a.png", data)], top_k=bad), 400, server)
        assert "top_k" in json.dumps(body)


@pytest.mark.parametrize("name", sorted(files.refused_files()))
def test_bad_file_is_refused_naming_file_and_reason(server, name):
    data, reason_part = files.refused_files()[name]
    body = expect(classify(server, [(name, data)]), 400, server)
    [refusal] = body["files"]
    assert refusal["file"] == name and refusal["index"] == 0
    assert reason_part in refusal["reason"]


def test_one_bad_image_refuses_the_whole_request_and_says_which(server):
    good = files.valid_files()["rgb.png"][0]
    sent = [("a.png", good), ("notes.jpg", b"not a picture at all"), ("b.png", good)]
    body = expect(classify(server, sent), 400, server)
    assert body["files"] == [{"index": 1, "file": "notes.jpg", "reason": body["files"][0]["reason"]}]
    assert "nothing was classified" in body["error"]


def test_request_level_limits(server):
    good = files.valid_files()["rgb.png"][0]
    url = f"{server.url}/classify"
    too_many = expect(classify(server, [(f"{i}.png", good) for i in range(9)]), 413, server)
    assert "limit is 8" in too_many["error"]
    big = [(f"{i}.bin", files.refused_files()["oversized.jpg"][0]) for i in range(3)]
    assert "exceeds the limit" in expect(classify(server, big), 413, server)["error"]
    # the same body streamed without Content-Length (chunked) is cut off as well
    prepared = requests.Request("POST", url, files=[("images", (n, d)) for n, d in big]).prepare()
    chunks = (prepared.body[i : i + 65536] for i in range(0, len(prepared.body), 65536))
    chunked = requests.post(
        url, data=chunks, timeout=60, headers={"Content-Type": prepared.headers["Content-Type"]}
    )
    assert "exceeds the limit" in expect(chunked, 413, server)["error"]
    no_field = requests.post(url, files=[("image", ("a.png", good))], timeout=30)
    assert "'images'" in expect(no_field, 400, server)["error"]
    text_value = requests.post(url, files=[("images", (None, "https://example.com/a.jpg"))], timeout=30)
    assert "not text" in expect(text_value, 400, server)["error"]
    assert expect(requests.post(url, json={"images": []}, timeout=30), 415, server)["error"]
    assert expect(
        requests.post(url, data=good, timeout=30, headers={"Content-Type": "text/plain"}), 415, server
    )["error"]


def test_a_raw_image_body_is_classified_like_an_upload(server, reference):
    """``Content-Type: image/...`` (or application/octet-stream): the body is the file; ``top_k``
    and ``model`` in the query. The same answer as the multipart upload of the same file."""
    data, _ = files.valid_files()["rgb.jpg"]
    url = f"{server.url}/classify"
    for content_type in ("image/jpeg", "application/octet-stream"):
        raw = expect(
            requests.post(f"{url}?top_k=3", data=data, headers={"Content-Type": content_type}, timeout=60),
            200,
            server,
        )
        (answer,) = raw
        assert_matches(answer, reference(data, "rgb.jpg"), top_k=3)
    empty = requests.post(url, data=b"", headers={"Content-Type": "image/png"}, timeout=30)
    assert "empty" in expect(empty, 400, server)["error"]
    bad_top_k = requests.post(f"{url}?top_k=0", data=data, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert "top_k" in expect(bad_top_k, 400, server)["error"]
    not_an_image = requests.post(url, data=b"hello", headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert expect(not_an_image, 400, server)["files"][0]["file"] == "body"


def test_concurrent_clients_are_served_in_batches(server, reference):
    """Many clients sending one image each: the model sees batches (> 1), answers stay right."""
    sent = [(f"{i}.png", files.encode(files.photo((64, 48), seed=i), "PNG")) for i in range(8)]
    for name, data in sent * 2:
        expect(classify(server, [(name, data)]), 200, server)
    before = batch_histogram(server)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda item: classify(server, [item]), sent * 12))
    for (name, data), response in zip(sent * 12, responses, strict=True):
        assert_matches(expect(response, 200, server)[0], reference(data, name))
    after = batch_histogram(server)
    batches = after["count"] - before["count"]
    batched = batches - (after["le_1"] - before["le_1"])
    print(
        f"\n{len(responses)} requests from 16 threads -> {batches:.0f} model calls, "
        f"{batched:.0f} of them batches > 1, mean batch {len(responses) / batches:.2f}"
    )
    assert batched > 0 and batches < len(responses)


def test_a_lone_costly_image_leaves_the_event_loop_answering(server):
    """``Batcher(at_once)`` runs a lone request on the event loop's thread only when its decoding is
    quick (``service.serving.dataplane.QUICK_DECODE_BYTES``): while a lone 36-megapixel 16-bit PNG decodes
    (288 MB, a third of a second or more), ``/livez`` keeps answering at once. Run on the event
    loop, it held every probe for the whole decoding (337 ms against 0.9 ms, benchmarks/README.md)."""
    png = files.sixteen_bit_gray_png(6000, 6000, value=0)
    probes: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.perf_counter()
                session.get(f"{server.url}/livez", timeout=30)
                probes.append(time.perf_counter() - started)
                stop.wait(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    took = []
    try:
        for _ in range(3):
            started = time.perf_counter()
            answer = classify(server, [("big.png", png)])
            took.append(time.perf_counter() - started)
            expect(answer, 200, server)
    finally:
        stop.set()
        prober.join()
    print(f"\nlone 36 MP PNG: {min(took) * 1e3:.0f} ms; /livez meanwhile at most {max(probes) * 1e3:.1f} ms")
    assert max(probes) < 0.5 * min(took), (max(probes), took)


def test_server_still_serves_correctly_after_everything(server, reference):
    data = files.valid_files()["rgb.jpg"][0]
    [answer] = expect(classify(server, [("again.jpg", data)]), 200, server)
    assert_matches(answer, reference(data, "again.jpg"))
    assert server.process.poll() is None


@pytest.mark.slow  # about a minute: bentoml build, then a second server
def test_built_bento_packages_and_serves_the_model(exported_model, bentoml_home, reference, tmp_path):
    """``bentoml build`` (bentofile.yaml) packages the model; ``bentoml serve TAG`` serves it
    even with an empty model repository."""
    env = server_env(exported_model, bentoml_home)
    build = subprocess.run(
        [str(BENTOML), "build", "--output", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    tag = re.search(r"convzoo:[a-z0-9]+", build.stdout).group(0)
    bento_yaml = subprocess.run(
        [str(BENTOML), "get", tag, "--output", "yaml"], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert f"tag: {MODEL_NAME}:1" in bento_yaml
    empty_repository = tmp_path / "no_models"
    empty_repository.mkdir()
    env = {**env, "CONVZOO_MODELS_DIR": str(empty_repository)}
    env.pop("CONVZOO_MODEL")
    bento_server = Server([tag], env, tmp_path / "bento_serve.log")
    try:
        bento_server.wait_ready()
        metadata = expect(
            requests.post(f"{bento_server.url}/metadata", json={}, timeout=30), 200, bento_server
        )
        assert metadata["name"] == MODEL_NAME and metadata["version"] == 1
        data = files.valid_files()["rgb.jpg"][0]
        [answer] = expect(classify(bento_server, [("rgb.jpg", data)]), 200, bento_server)
        assert_matches(answer, reference(data, "rgb.jpg"))
    finally:
        bento_server.stop()


def batch_histogram(server: Server) -> dict[str, float]:
    """``convzoo_batch_size`` (images per model call) from /metrics: count and le=1."""
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    totals = {"count": 0.0, "le_1": 0.0}
    for line in text.splitlines():
        if not line.startswith("convzoo_batch_size"):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("convzoo_batch_size_count"):
            totals["count"] += value
        elif re.search(r'_bucket\{.*le="1\.0"', line):
            totals["le_1"] += value
    return totals
