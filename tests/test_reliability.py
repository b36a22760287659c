"""The service under hostile clients, overload and faults: a real ``bentoml serve`` with tight limits.

One server for the module (the model of tests/helpers.py), started with an API key and a
concurrency limit of ``MAX_CONCURRENCY`` so that a burst of a few dozen requests overloads it:

- authentication: every path but the health probes answers 401 without the key, which never
  appears in an answer or the server log;
- Schemathesis on the server's own OpenAPI document and random multipart bodies: never a 5xx;
- an overload burst is shed at once with JSON 429s, the accepted requests are answered correctly,
  and single requests are fast again right after;
- a client trickling a large upload does not hold up the others;
- (slow) ``kill -9`` of the model worker: BentoML restarts it and the service recovers.

Without a server: model names never leave the repository (``../``, absolute paths, symlinks), and
an incomplete or corrupt export stops the service at start-up with one line naming the folder.
Exports are atomic (tests/test_export.py::test_a_process_killed_mid_export_leaves_no_valid_looking_version)
and training resumes after a kill (tests/test_fit.py::test_killed_mid_epoch_then_the_same_command_resumes).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
import schemathesis
import service_files as files
from helpers import BENTOML, MODEL_NAME, REPO, Server, server_env
from hypothesis import HealthCheck, given, settings

from service.config import ServiceConfig
from service.repository import InvalidExport, parse_model_spec, version_folders
from service.serving.model_store import check_export, resolve_model

MiB = 1024 * 1024
KEY = f"convzoo-test-{secrets.token_hex(12)}"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CONCURRENCY = 4
TIMEOUT_S = 20
SETTINGS = {
    "CONVZOO_API_KEY": KEY,
    "CONVZOO_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
    "CONVZOO_TIMEOUT_S": str(TIMEOUT_S),
    "CONVZOO_MAX_IMAGES": "4",
    "CONVZOO_MAX_REQUEST_BYTES": str(2 * MiB),
    "CONVZOO_MAX_FILE_BYTES": str(1 * MiB),
}
PHOTO = files.encode(files.photo((320, 240), seed=7), "JPEG", quality=90)


@pytest.fixture(scope="module")
def guarded(exported_model, bentoml_home, tmp_path_factory):
    """The server of this module: API key on, ``MAX_CONCURRENCY`` requests in flight at most."""
    env = {**server_env(exported_model, bentoml_home), **SETTINGS}
    server = Server([], env, tmp_path_factory.mktemp("logs") / "reliability.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def post_photo(server: Server, headers: dict | None = None, timeout: float = 60) -> requests.Response:
    return requests.post(
        f"{server.url}/classify",
        files=[("images", ("photo.jpg", PHOTO))],
        headers=AUTH if headers is None else headers,
        timeout=timeout,
    )


def timed(call) -> tuple[requests.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def assert_same_answer(answer: list[dict], expected: list[dict]) -> None:
    """Same labels in the same order, scores equal up to batching's float rounding."""
    assert [a["label"] for a in answer] == [e["label"] for e in expected]
    for got, want in zip(answer, expected, strict=True):
        assert [x["label"] for x in got["top_k"]] == [x["label"] for x in want["top_k"]]
        for x, y in zip(got["top_k"], want["top_k"], strict=True):
            assert abs(x["score"] - y["score"]) < 1e-4


# ------------------------------------------------------------------------------ authentication


def test_health_probes_are_open_everything_else_needs_the_key(guarded):
    for probe in ("/livez", "/readyz"):
        assert requests.get(guarded.url + probe, timeout=10).status_code == 200
    wrong = {"Authorization": f"Bearer {KEY}x"}
    not_bearer = {"Authorization": KEY}
    for headers in ({}, wrong, not_bearer):
        answers = [
            requests.get(f"{guarded.url}/metrics", headers=headers, timeout=10),
            requests.get(f"{guarded.url}/docs.json", headers=headers, timeout=10),
            requests.post(f"{guarded.url}/", headers=headers, timeout=10),
            requests.post(f"{guarded.url}/metadata", json={}, headers=headers, timeout=10),
            post_photo(guarded, headers),
        ]
        for answer in answers:
            assert answer.status_code == 401, (answer.request.url, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert "API key" in answer.json()["error"] and KEY not in answer.text
    assert requests.get(f"{guarded.url}/metrics", headers=AUTH, timeout=10).status_code == 200
    assert requests.get(f"{guarded.url}/docs.json", headers=AUTH, timeout=10).status_code == 200
    # the API page (static; it asks /docs.json with the key the browser page keeps) is open
    page = requests.get(f"{guarded.url}/", timeout=10)
    assert page.status_code == 200 and MODEL_NAME not in page.text
    metadata = requests.post(f"{guarded.url}/metadata", json={}, headers=AUTH, timeout=10)
    assert metadata.json()["name"] == MODEL_NAME and KEY not in metadata.text
    assert post_photo(guarded).status_code == 200


def test_the_key_never_reaches_the_log(guarded):
    post_photo(guarded)
    post_photo(guarded, {"Authorization": f"Bearer {KEY[:-1]}"})
    assert KEY not in guarded.log.read_text(errors="replace")
    assert KEY[:-1] not in guarded.log.read_text(errors="replace")


# -------------------------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def openapi(guarded):
    document = requests.get(f"{guarded.url}/docs.json", headers=AUTH, timeout=10).json()
    return schemathesis.openapi.from_dict(document)


def test_generated_requests_from_the_openapi_document_never_get_a_server_error(guarded, openapi):
    """Schemathesis: 25 generated requests per operation of ``/docs.json``, each answered < 500."""
    operations = [result.ok() for result in openapi.get_all_operations()]
    assert {"/classify", "/metadata"} <= {operation.path for operation in operations}
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        check_operation(operation, guarded.url, statuses)
    print(f"\nstatuses per operation: {statuses}")
    assert 200 in statuses["POST /metadata"]


def check_operation(operation, url: str, statuses: dict[str, set[int]]) -> None:
    """25 generated requests for one operation of the OpenAPI document: none gets a 5xx."""

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def call(case):
        response = case.call(base_url=url, headers=AUTH, timeout=30)
        statuses.setdefault(operation.label, set()).add(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])

    call()


@settings(max_examples=40, deadline=None, database=None)
@given(body=files.fuzz_bodies)
def test_random_multipart_bodies_over_http_never_get_a_server_error(guarded, body):
    response = requests.post(
        f"{guarded.url}/classify",
        data=body,
        timeout=30,
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={files.FUZZ_BOUNDARY}"},
    )
    assert response.status_code in (200, 400, 413), response.text[:300]
    assert "error" in response.json() or response.status_code == 200


# ------------------------------------------------------------------------------------- overload


def test_an_overload_burst_is_shed_explicitly_and_latency_recovers_at_once(guarded):
    """60 simultaneous requests against a limit of 4: the excess gets JSON 429s at once, every
    accepted request gets the right answer, and a single request right after is fast again."""
    expected = post_photo(guarded).json()
    baseline = sorted(timed(lambda: post_photo(guarded))[1] for _ in range(5))[2]

    with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
        burst = list(
            pool.map(lambda _: timed(lambda: post_photo(guarded, timeout=TIMEOUT_S + 10)), range(60))
        )
    statuses = [response.status_code for response, _ in burst]
    accepted = [(r, s) for r, s in burst if r.status_code == 200]
    shed = [(r, s) for r, s in burst if r.status_code != 200]
    print(
        f"\nburst of 60: {statuses.count(200)} accepted, {statuses.count(429)} shed with 429; "
        f"slowest accepted {max(s for _, s in accepted):.2f} s, slowest refusal "
        f"{max(s for _, s in shed):.2f} s; baseline {baseline * 1000:.0f} ms"
    )
    assert set(statuses) <= {200, 429, 503} and shed and accepted
    for response, _ in shed:
        assert response.json()["error"]
    for response, _ in accepted:
        assert_same_answer(response.json(), expected)
    assert max(seconds for _, seconds in burst) < TIMEOUT_S

    recovered_after = None
    start = time.monotonic()
    while recovered_after is None and time.monotonic() - start < 10:
        response, seconds = timed(lambda: post_photo(guarded))
        if response.status_code == 200 and seconds <= max(3 * baseline, baseline + 0.5):
            recovered_after = time.monotonic() - start
    assert recovered_after is not None and recovered_after < 5


def test_a_client_trickling_a_large_upload_does_not_block_the_others(guarded):
    """One connection sends 1.5 MiB at 20 KiB/s; meanwhile others are answered as fast as usual."""
    baseline = sorted(timed(lambda: post_photo(guarded))[1] for _ in range(5))[2]
    stop = threading.Event()
    sent = trickle(guarded.port, 3 * MiB // 2, stop)
    try:
        time.sleep(0.5)
        others = [timed(lambda: post_photo(guarded)) for _ in range(10)]
    finally:
        stop.set()
    print(
        f"\nwhile {sent():.0f} bytes trickled in: others took "
        f"{max(s for _, s in others):.2f} s at most (baseline {baseline:.2f} s)"
    )
    assert all(response.status_code == 200 for response, _ in others)
    assert max(seconds for _, seconds in others) < max(5 * baseline, 2.0)


def trickle(port: int, length: int, stop: threading.Event):
    """Open a connection, announce a ``length``-byte upload and send it 1 KiB per 50 ms (thread)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={files.FUZZ_BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    part = (
        f'--{files.FUZZ_BOUNDARY}\r\nContent-Disposition: form-data; name="images"; '
        'filename="slow.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    sock.sendall(head + part)
    total = [len(part)]

    def run() -> None:
        with sock:
            while not stop.is_set() and total[0] < length:
                try:
                    sock.sendall(b"\0" * 1024)
                except OSError:
                    return
                total[0] += 1024
                time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
    return lambda: total[0]


# --------------------------------------------------------------------- model folders (no server)


def config_for(models_dir: Path, model: str) -> ServiceConfig:
    return dataclasses.replace(ServiceConfig(), model=model, models_dir=models_dir)


@pytest.mark.parametrize(
    "spec",
    [
        "../servicetest",
        "/etc/passwd",
        "a/b",
        "..",
        ".hidden",
        "servicetest:../1",
        "servicetest:/1",
        "~root",
        "servicetest/1",
    ],
)
def test_a_model_name_is_never_a_path(spec):
    with pytest.raises(ValueError, match="not allowed|positive integer"):
        parse_model_spec(spec)


def test_symlinks_out_of_the_repository_are_refused(exported_model, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(exported_model, outside / "elsewhere" / "1")
    models = tmp_path / "models"
    shutil.copytree(exported_model, models / MODEL_NAME / "1")
    (models / "elsewhere").symlink_to(outside / "elsewhere")
    (models / MODEL_NAME / "2").symlink_to(outside / "elsewhere" / "1")
    for spec in ("elsewhere", f"{MODEL_NAME}:2", MODEL_NAME):  # MODEL_NAME: 2 is the latest
        with pytest.raises(InvalidExport, match="symbolic link.*only from inside the (model )?repository"):
            resolve_model(config_for(models, spec))


CORRUPTIONS = {
    "metadata.json is missing": lambda f: (f / "metadata.json").unlink(),
    "not valid JSON": lambda f: (f / "metadata.json").write_text('{"name": "x", '),
    "'labels'": lambda f: (f / "metadata.json").write_text(json.dumps({"input_size": [8, 8]})),
    "saved_model.pb is missing": lambda f: (f / "saved_model.pb").unlink(),
    "corrupt or truncated": lambda f: _truncate(f / "saved_model.pb"),
    "variables.index is missing": lambda f: (f / "variables" / "variables.index").unlink(),
    "lacks variables.data-00000": lambda f: next((f / "variables").glob("*.data-*")).rename(
        f / "variables" / "variables.data-00001-of-00002"
    ),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("reason", sorted(CORRUPTIONS))
def test_an_incomplete_or_corrupt_export_is_refused_naming_folder_and_reason(
    exported_model, tmp_path, reason
):
    models = tmp_path / "models"
    shutil.copytree(exported_model, models / MODEL_NAME / "1")
    shutil.copytree(exported_model, models / MODEL_NAME / "2")
    check_export(models / MODEL_NAME / "2")
    CORRUPTIONS[reason](models / MODEL_NAME / "2")
    with pytest.raises(InvalidExport, match=reason) as refused:
        check_export(models / MODEL_NAME / "2")
    assert str(models / MODEL_NAME / "2") in str(refused.value)
    # the latest version is broken: no silent fallback to version 1
    with pytest.raises(InvalidExport, match=reason):
        resolve_model(config_for(models, MODEL_NAME))


def test_a_leftover_temporary_export_folder_is_not_a_version(exported_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(exported_model, models / MODEL_NAME / "1")
    shutil.copytree(exported_model, models / MODEL_NAME / ".tmp-2-12345")
    (models / MODEL_NAME / ".tmp-2-12345" / "saved_model.pb").unlink()
    assert version_folders(models, MODEL_NAME) == [1]


def test_the_service_refuses_to_start_on_a_corrupt_export_with_one_line(exported_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(exported_model, models / MODEL_NAME / "1")
    _truncate(models / MODEL_NAME / "1" / "saved_model.pb")
    env = {**server_env(exported_model, tmp_path / "bentoml_home"), "CONVZOO_MODELS_DIR": str(models)}
    started = subprocess.run(
        [str(BENTOML), "serve", "--port", "1", "--host", "127.0.0.1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (started.stdout + started.stderr).strip()
    assert started.returncode != 0
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "convzoo" in line]
    assert line.startswith(f"convzoo: cannot serve a model: {models / MODEL_NAME / '1'}: ")
    assert "saved_model.pb is corrupt or truncated" in line


# ---------------------------------------------------------------------- worker killed (last)


MODEL_WORKER = "_bentoml_impl.worker.service"
"""In the command line of the service's worker process, which holds the model (service/service.py)."""


@pytest.mark.slow  # the model worker reloads TensorFlow: 10-30 s on 2 cores
def test_a_killed_model_worker_is_restarted_and_the_service_recovers(guarded):
    expected = post_photo(guarded).json()
    [worker] = [
        p
        for p in psutil.Process(guarded.process.pid).children(recursive=True)
        if MODEL_WORKER in " ".join(p.cmdline())
    ]
    outcomes: list[tuple[float, int | str, float]] = []  # (sent at, status, seconds)
    start = time.monotonic()
    worker.kill()  # SIGKILL
    while time.monotonic() - start < 120:
        sent = time.monotonic() - start
        try:
            response, seconds = timed(lambda: post_photo(guarded, timeout=TIMEOUT_S + 10))
            outcomes.append((sent, response.status_code, seconds))
            ok = response.status_code == 200
            if ok:
                assert_same_answer(response.json(), expected)
        except requests.RequestException as error:
            outcomes.append((sent, type(error).__name__, time.monotonic() - start - sent))
            ok = False
        if ok and len(outcomes) >= 5 and all(o[1] == 200 for o in outcomes[-5:]):
            break
    failed = [o for o in outcomes if o[1] != 200]
    window = (failed[-1][0] + failed[-1][2] - failed[0][0]) if failed else 0.0
    print(
        f"\nkill -9 of the model worker: {len(failed)} of {len(outcomes)} requests failed "
        f"({sorted({str(o[1]) for o in failed})}) over {window:.1f} s; "
        f"slowest {max(o[2] for o in outcomes):.1f} s"
    )
    assert all(o[1] == 200 for o in outcomes[-5:])
    assert max(o[2] for o in outcomes) < TIMEOUT_S + 5  # no hang past the configured timeout
    assert any(
        MODEL_WORKER in " ".join(p.cmdline())
        for p in psutil.Process(guarded.process.pid).children(recursive=True)
    )
