"""The data plane in process: each protocol adapter (``/classify`` behind the real
``RequestGuard``, ``/v2``, ``/v1``) driven over ASGI, with the real exported test model and its
real runtime, no server. The three are translations of one life cycle: the same image gives the
same probabilities, the same refusal the same status and ``{"error"}`` body, and every request is
counted once in ``convzoo_requests_total`` with its outcome."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import service_files as files
from helpers import MODEL_NAME
from prometheus_client import REGISTRY

from service.config import Limits, ServiceConfig
from service.http.body import RequestGuard
from service.protocols.convzoo import ClassifyRoute
from service.protocols.oip import oip_app
from service.protocols.tfserving import tfserving_app
from service.serving.dataplane import DataPlane

LIMITS = Limits(max_images=4, max_pixels=4096 * 4096)


@pytest.fixture(scope="module")
def plane(exported_model: Path, tmp_path_factory):
    """The test model served from a repository of its own, beside a version that is refused."""
    root = tmp_path_factory.mktemp("dataplane")
    shutil.copytree(exported_model, root / MODEL_NAME / "1")
    broken = root / MODEL_NAME / "2"
    shutil.copytree(exported_model, broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    config = ServiceConfig(models_dir=str(root), model=MODEL_NAME, limits=LIMITS)
    plane = DataPlane(config)
    plane.start(root / MODEL_NAME / "1", f"{MODEL_NAME}:1")
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def apps(plane):
    from service.service import Classifier

    async def not_found(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    classify = ClassifyRoute(not_found, plane=plane, spec=Classifier.apis["classify"].input_spec)
    guarded = RequestGuard(
        classify,
        upload_path="/classify",
        file_field="images",
        max_upload_bytes=8 * 2**20,
        max_body_bytes=2**20,
        body_timeout_s=10,
        activity=plane.activity,
    )
    return {"convzoo": guarded, "v2": oip_app(plane), "tfserving": tfserving_app(plane)}


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, timeout=60, **kwargs)

    return asyncio.run(go())


def requests_total(protocol: str, outcome: str, version: str) -> float:
    labels = {"model": MODEL_NAME, "version": version, "protocol": protocol, "outcome": outcome}
    return REGISTRY.get_sample_value("convzoo_requests_total", labels) or 0.0


def by_protocol(apps, data: bytes, count: int = 1, model: str = MODEL_NAME, version: str | None = None):
    """The same request in the three protocols' words: (protocol, response) for each."""
    path_version = f"/versions/{version}" if version else ""
    field = f"{model}:{version}" if version else model
    b64 = base64.b64encode(data).decode()
    return [
        (
            "convzoo",
            call(
                apps["convzoo"],
                "POST",
                "/classify",
                files=[("images", (f"{i}.png", data)) for i in range(count)],
                data={"model": field, "top_k": "10"},
            ),
        ),
        (
            "v2",
            call(
                apps["v2"],
                "POST",
                f"/models/{model}{path_version}/infer",
                json={
                    "inputs": [
                        {
                            "name": "image_bytes",
                            "datatype": "BYTES",
                            "shape": [count],
                            "data": [b64] * count,
                            "parameters": {"content_type": "base64"},
                        }
                    ]
                },
            ),
        ),
        (
            "tfserving",
            call(
                apps["tfserving"],
                "POST",
                f"/models/{model}{path_version}:predict",
                json={"signature_name": "serve_bytes", "instances": [{"b64": b64}] * count},
            ),
        ),
    ]


def probabilities(protocol: str, response: httpx.Response, labels: list[str]) -> np.ndarray:
    body = response.json()
    if protocol == "convzoo":
        return np.array(
            [[{e["label"]: e["score"] for e in a["top_k"]}[label] for label in labels] for a in body]
        )
    if protocol == "v2":
        (output,) = body["outputs"]
        return np.array(output["data"]).reshape(output["shape"])
    return np.array(body["predictions"])


def test_the_three_protocols_answer_alike(plane, apps):
    version = str(int(plane.registry.get().version))
    labels = plane.registry.get().labels
    data = files.valid_files()["rgb.png"][0]
    before = {p: requests_total(p, "ok", version) for p in apps}
    answers = {p: probabilities(p, r, labels) for p, r in by_protocol(apps, data, count=2, version="latest")}
    assert all(a.shape == (2, len(labels)) for a in answers.values())
    np.testing.assert_allclose(answers["convzoo"], answers["v2"], atol=1e-6)
    np.testing.assert_allclose(answers["v2"], answers["tfserving"], atol=1e-6)
    assert {p: requests_total(p, "ok", version) - before[p] for p in apps} == dict.fromkeys(apps, 1.0)


@pytest.mark.parametrize(
    "case, status, outcome",
    [("unknown model", 404, None), ("too many", 413, "too_large"), ("bad version", 400, None)],
)
def test_the_three_protocols_refuse_alike(plane, apps, case, status, outcome):
    version = str(int(plane.registry.get().version))
    data = files.valid_files()["rgb.png"][0]
    kwargs = {
        "unknown model": {"model": "nope"},
        "too many": {"count": LIMITS.max_images + 1},
        "bad version": {"version": "２"},
    }[case]
    before = {p: requests_total(p, outcome or "", version) for p in apps}
    answers = by_protocol(apps, data, **kwargs)
    messages = set()
    for protocol, response in answers:
        assert response.status_code == status, (protocol, response.text)
        assert response.headers["content-type"] == "application/json"
        messages.add(response.json()["error"])
    assert len(messages) == 1, messages  # the one error, worded once
    if outcome:  # counted once per request, with the model's labels
        assert {p: requests_total(p, outcome, version) - before[p] for p in apps} == dict.fromkeys(apps, 1.0)


def test_the_repository_index_lists_served_and_refused_versions(plane, apps):
    """``POST /v2/repository/index`` (Triton's model repository extension): every version, its state
    and, for one the watcher refused, why; ``{"ready": true}`` keeps those served."""
    index = call(apps["v2"], "POST", "/repository/index").json()
    ready = {"name": MODEL_NAME, "version": "1", "state": "READY", "reason": ""}
    assert index[0] == ready and len(index) == 2
    assert index[1]["version"] == "2" and index[1]["state"] == "UNAVAILABLE" and index[1]["reason"]
    assert call(apps["v2"], "POST", "/repository/index", json={"ready": True}).json() == [ready]
    assert call(apps["v2"], "POST", "/repository/index", content=b"[").status_code == 400


@pytest.mark.parametrize(
    "shape",
    ["pixel lists", "flat numbers", "small strings", "base64", "many objects", "empty lists", "deep"],
)
def test_json_memory_bounds_what_parsing_takes(shape):
    """``jsonbody.json_memory`` (counted from the text, before parsing) is at least the memory
    ``json.loads`` takes for it (tracemalloc's peak), for the shapes tensor requests take and a few
    that make many small objects."""
    import json
    import tracemalloc

    from service.serving.jsonbody import json_memory

    value = {
        "pixel lists": [[[[i % 256, 7, 255] for i in range(64)] for _ in range(64)]],
        "flat numbers": list(range(100_000)),
        "small strings": ["a"] * 50_000,
        "base64": [base64.b64encode(bytes(30_000)).decode()] * 4,
        "many objects": [{"b64": "x"} for _ in range(20_000)],
        "empty lists": [[] for _ in range(50_000)],
        "deep": [[[[1]]]] * 20_000,
    }[shape]
    text = json.dumps(value).encode()
    tracemalloc.start()
    try:
        parsed = json.loads(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed == value and peak <= json_memory(text), (peak, json_memory(text))


def test_json_memory_at_most_bounds_json_memory_from_the_length_alone():
    """``json_memory_at_most`` (what ``DataPlane.parse_json`` checks a small text against before
    counting it) is never below ``json_memory`` of a text of that length, the dearest included."""
    from service.serving.jsonbody import JSON_COSTS, json_memory, json_memory_at_most

    texts = [b"", b"{}", b'{"inputs": [{"name": "image_bytes"}]}', b"{" * 16384]
    texts += [char * 1000 for char in JSON_COSTS]
    for text in texts:
        assert json_memory(text) <= json_memory_at_most(len(text))
    assert json_memory(b"{" * 16384) == json_memory_at_most(16384)


def v2_binary(
    images: list[bytes], binary_output: bool = True, name: str = "image_bytes"
) -> tuple[bytes, int]:
    """A ``/v2`` request in the binary data extension, as tritonclient writes it."""
    import json

    data = b"".join(len(image).to_bytes(4, "little") + image for image in images)
    tensor = {"name": name, "shape": [len(images)], "datatype": "BYTES"}
    header = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}]}
    if binary_output:
        header["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    text = json.dumps(header).encode()
    return text + data, len(text)


def test_the_infer_route_answers_as_the_v2_mount(plane):
    """``oip.InferRoute`` (in front of BentoML's context and Starlette's routing under ``bentoml
    serve``) gives the very answers of the ``/v2`` mount's endpoint, refusals included, and leaves
    every other request to the app behind it."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from service.protocols.oip import InferRoute

    behind: list[str] = []
    mounted = Starlette(routes=[Mount("/v2", app=oip_app(plane))])

    async def mount(scope, receive, send):
        behind.append(scope["path"])
        await mounted(scope, receive, send)

    def guarded(app):
        return RequestGuard(
            app,
            upload_path="/classify",
            file_field="images",
            tensor_paths=("/v2/models/",),
            binary_paths=("/v2/models/",),
            max_upload_bytes=8 * 2**20,
            max_body_bytes=2**20,
            body_timeout_s=10,
            activity=plane.activity,
        )

    fast, slow = guarded(InferRoute(mount, plane=plane)), guarded(mount)
    image = files.valid_files()["rgb.jpg"][0]
    body, length = v2_binary([image, image])
    cases = {
        "binary": ("{model}/infer", body, length),
        "binary, JSON output": ("{model}/versions/1/infer", *v2_binary([image], binary_output=False)),
        "JSON only": ("{model}/infer", body[:length], None),
        "header past the body": ("{model}/infer", body, len(body) + 1),
        "unknown model": ("nope/infer", body, length),
        "bad version": ("{model}/versions/x/infer", body, length),
        "unknown input": ("{model}/infer", *v2_binary([image], name="pixels")),
        "not an infer route": ("{model}/ready", body, length),
    }
    for case, (path, content, header) in cases.items():
        path = "/v2/models/" + path.format(model=MODEL_NAME)
        headers = {"Inference-Header-Content-Length": str(header)} if header is not None else {}
        behind.clear()
        answers = [call(app, "POST", path, content=content, headers=headers) for app in (fast, slow)]
        assert behind == ([path, path] if case == "not an infer route" else [path]), case
        (a, b) = answers
        assert (a.status_code, a.headers.get("content-type")) == (
            b.status_code,
            b.headers.get("content-type"),
        ), case
        assert a.headers.get("inference-header-content-length") == b.headers.get(
            "inference-header-content-length"
        )
        if a.status_code != 200 or "json" in a.headers["content-type"]:
            assert a.json() == b.json(), case
        else:
            split = int(a.headers["inference-header-content-length"])
            assert a.content[:split] == b.content[:split], case
            np.testing.assert_allclose(
                np.frombuffer(a.content[split:], "<f4"), np.frombuffer(b.content[split:], "<f4"), atol=1e-6
            )
