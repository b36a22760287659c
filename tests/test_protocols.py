"""The model repository served over three protocols, by a real ``bentoml serve``: convzoo's own
API, the Open Inference Protocol v2 (driven by NVIDIA's own client, ``tritonclient[http]``) and
TensorFlow Serving's REST API; two models at once; every bad input of the new endpoints.

The repository holds the committed default model (``imagenette:2``, ResNet-18, int8) and the
service tests' small LeNet-5 (``servicetest:1``, 48x48). Photos are the real phone and web photos
of ``../shared/data/photos-varied`` when they are there, else photo-like JPEGs made here. The server
requires an API key, so every call below also proves that the key is asked for and accepted.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import service_files as files
from helpers import REPO, Server, expect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.serving.images import Resize, prepare_image

tritonclient = pytest.importorskip("tritonclient.http")

KEY = "protocols-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
"""Passed as a copy: tritonclient adds its own headers to the dict it is given."""
PHOTOS = REPO.parent / "shared" / "data" / "photos-varied"
DEFAULT = "imagenette"
SMALL = "servicetest"


def photos(count: int = 4) -> list[tuple[str, bytes]]:
    """Real photos of varied sizes when ``../shared`` is there, else photo-like JPEGs."""
    found = sorted(p for p in PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if found:
        step = max(1, len(found) // count)
        return [(p.name, p.read_bytes()) for p in found[::step][:count]]
    sizes = [(500, 375), (640, 480), (333, 500), (1024, 768)]
    return [
        (f"made-{i}.jpg", files.encode(files.photo(sizes[i % 4], seed=i), "JPEG", quality=90))
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported_model) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(REPO / "models" / DEFAULT / "2", root / DEFAULT / "2")
    shutil.copytree(exported_model, root / SMALL / "1")
    return root


@pytest.fixture(scope="module")
def server(repository, bentoml_home, tmp_path_factory):
    env = {
        **__import__("os").environ,
        "CONVZOO_MODEL": DEFAULT,
        "CONVZOO_MODELS_DIR": str(repository),
        "CONVZOO_API_KEY": KEY,
        "CONVZOO_MAX_IMAGES": "8",
        "CONVZOO_MAX_REQUEST_BYTES": str(16 * files.MiB),
        "CONVZOO_POLL_S": "1",
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    server = Server.started([], env, tmp_path_factory.mktemp("logs") / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return tritonclient.InferenceServerClient(server.url.removeprefix("http://"))


def classify(server: Server, named: list[tuple[str, bytes]], model: str | None = None) -> np.ndarray:
    """/classify's probabilities, in label order, for ``named`` files."""
    data = {"top_k": "100", **({"model": model} if model else {})}
    answer = expect(
        requests.post(
            f"{server.url}/classify",
            files=[("images", item) for item in named],
            data=data,
            headers=dict(AUTH),
            timeout=60,
        ),
        200,
        server,
    )
    labels = metadata(server, model)["labels"]
    return np.array(
        [[dict((e["label"], e["score"]) for e in a["top_k"])[label] for label in labels] for a in answer]
    )


def metadata(server: Server, model: str | None = None) -> dict:
    body = {"model": model} if model else {}
    return expect(
        requests.post(f"{server.url}/metadata", json=body, headers=dict(AUTH), timeout=30), 200, server
    )


def infer_bytes(
    client, named: list[tuple[str, bytes]], model: str = DEFAULT, version: str = ""
) -> np.ndarray:
    tensor = tritonclient.InferInput("image_bytes", [len(named)], "BYTES")
    tensor.set_data_from_numpy(np.array([data for _, data in named], dtype=np.object_), binary_data=True)
    return client.infer(model, [tensor], model_version=version, headers=dict(AUTH)).as_numpy("probabilities")


def infer_pixels(client, pixels: np.ndarray, model: str = DEFAULT, binary: bool = True) -> np.ndarray:
    tensor = tritonclient.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [tritonclient.InferRequestedOutput("probabilities", binary_data=binary)]
    return client.infer(model, [tensor], outputs=outputs, headers=dict(AUTH)).as_numpy("probabilities")


SAME = 0.01
"""The int8 runtime is not bit-reproducible: the same batch twice differs by up to ~0.004
(OpenVINO's threads split the work differently); two answers to the same images agree within this."""


def assert_same_answers(actual, expected, atol: float = SAME) -> None:
    """Probabilities within ``atol`` and the same top-1 wherever it is clear (margin > 2 atol)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, atol=atol)
    top2 = np.sort(expected, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 2 * atol
    assert (actual.argmax(-1) == expected.argmax(-1))[clear].all()


def decoded(data: bytes) -> np.ndarray:
    """The photo decoded full size, upright, as the client's own pixels."""
    from service.serving.images import decode

    return np.asarray(decode(data, "photo"))


# ------------------------------------------------------------------------------ two models


def test_both_models_are_served_and_listed(server):
    served = metadata(server)["served"]
    assert [(s["name"], s["version"], s["default"]) for s in served] == [
        (DEFAULT, 2, True),
        (SMALL, 1, False),
    ]
    assert metadata(server)["name"] == DEFAULT and metadata(server)["input_size"] == [128, 128]
    small = metadata(server, f"{SMALL}:1")
    assert small["name"] == SMALL and small["version"] == 1 and small["input_size"] == [48, 48]


def test_the_optimize_hint_names_a_folder_that_exists(server, repository):
    """A version served without its faster forms says how to make them: the log's command names
    its folder in the repository (absolute here: the repository is outside the server's working
    directory), and ``/metadata`` the same folder as ``$CONVZOO_MODELS_DIR/...`` (it shows no
    absolute path; it used to cut it to ``optimize 1``)."""
    import re

    reason = metadata(server, f"{SMALL}:1")["runtime"]["reason"]
    assert f"`python -m training optimize $CONVZOO_MODELS_DIR/{SMALL}/1`" in reason, reason
    logged = re.findall(r"`python -m training optimize ([^`]+)`", server.log.read_text())
    assert logged and all(Path(folder).is_dir() for folder in logged), logged
    assert str(repository / SMALL / "1") in logged


def test_each_model_answers_for_itself(server):
    named = photos(2)
    default, small = classify(server, named), classify(server, named, SMALL)
    assert default.shape == small.shape == (2, 10)
    assert not np.allclose(default, small, atol=0.05)  # two different networks
    assert_same_answers(classify(server, named, f"{DEFAULT}:2"), default)


# -------------------------------------------------------------------------- Open Inference


def test_v2_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready(headers=dict(AUTH))
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200  # open, no key
    assert client.is_model_ready(DEFAULT, headers=dict(AUTH)) and client.is_model_ready(
        SMALL, "1", headers=dict(AUTH)
    )
    assert not client.is_model_ready(SMALL, "7", headers=dict(AUTH))
    meta = client.get_model_metadata(DEFAULT, headers=dict(AUTH))
    assert meta["versions"] == ["2"]
    assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {
        ("image_bytes", "BYTES", (-1,)),
        ("images", "UINT8", (-1, -1, -1, 3)),
    }
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["labels"] == metadata(server)["labels"]


def test_v2_and_v1_roots_answer_without_a_redirect(server, client):
    """``GET /v2`` is the server's metadata (tritonclient's ``get_server_metadata``), not a 307 to
    ``/v2/``; ``POST /v2/repository/index`` lists every version served (``get_model_repository_index``);
    ``GET /v1/models`` is a JSON 404 that says where to look, not a 307."""
    root = requests.get(f"{server.url}/v2", headers=dict(AUTH), allow_redirects=False, timeout=10)
    assert root.status_code == 200 and root.json()["name"] == "convzoo"
    meta = client.get_server_metadata(headers=dict(AUTH))
    assert meta["name"] == "convzoo" and "model_repository" in meta["extensions"]
    index = client.get_model_repository_index(headers=dict(AUTH))
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        (DEFAULT, "2", "READY"),
        (SMALL, "1", "READY"),
    ]
    listing = requests.get(f"{server.url}/v1/models", headers=dict(AUTH), allow_redirects=False, timeout=10)
    assert listing.status_code == 404 and "location" not in listing.headers
    assert "GET /v1/models/{name}" in listing.json()["error"]
    assert requests.get(f"{server.url}/v2", allow_redirects=False, timeout=10).status_code == 401


def test_v2_bytes_agree_with_classify_on_real_photos(server, client):
    named = photos(4)
    expected = classify(server, named)
    assert_same_answers(infer_bytes(client, named), expected)
    for one in named[:2]:  # one per request too
        assert_same_answers(infer_bytes(client, [one]), classify(server, [one]))
    np.testing.assert_allclose(
        infer_bytes(client, named, SMALL, "1"), classify(server, named, SMALL), atol=SAME
    )


def test_v2_pixels_agree_with_classify(server, client):
    named = photos(3)
    expected = classify(server, named)
    # the pixels /classify's decoder makes: the same input as /classify's
    at_size = np.stack([prepare_image(data, name, Resize(128, 128)) for name, data in named])
    assert_same_answers(infer_pixels(client, at_size), expected)
    assert_same_answers(infer_pixels(client, at_size, binary=False), expected)
    # the client's own full-size pixels, cropped and resized by the server: the same answers
    for (_, data), probabilities in zip(named, expected, strict=True):
        assert_same_answers(infer_pixels(client, decoded(data)[None])[0], probabilities, atol=0.05)


def test_v2_json_bytes_in_base64(server):
    name, data = photos(1)[0]
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(data).decode()],
                "parameters": {"content_type": "base64"},
            }
        ],
        "id": "request-7",
    }
    answer = expect(
        requests.post(f"{server.url}/v2/models/{DEFAULT}/infer", json=body, headers=dict(AUTH)), 200, server
    )
    assert answer["id"] == "request-7" and answer["model_version"] == "2"
    (output,) = answer["outputs"]
    assert output["shape"] == [1, 10] and output["datatype"] == "FP32"
    assert_same_answers(output["data"], classify(server, [(name, data)])[0])


# ----------------------------------------------------------------------- TensorFlow Serving


def test_tfserving_status_and_metadata(server):
    status = expect(requests.get(f"{server.url}/v1/models/{DEFAULT}", headers=dict(AUTH)), 200, server)
    assert status["model_version_status"] == [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    meta = expect(
        requests.get(f"{server.url}/v1/models/{SMALL}/versions/1/metadata", headers=dict(AUTH)), 200, server
    )
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert signatures["serve_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


def predict(server: Server, body: dict, path: str = DEFAULT) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{path}:predict", json=body, headers=dict(AUTH), timeout=60)


def test_tfserving_predict_agrees_with_classify(server):
    named = photos(3)
    expected = classify(server, named)
    b64 = [{"b64": base64.b64encode(data).decode()} for _, data in named]
    rows = expect(predict(server, {"signature_name": "serve_bytes", "instances": b64}), 200, server)
    assert_same_answers(rows["predictions"], expected)
    columns = expect(
        predict(server, {"signature_name": "serve_bytes", "inputs": {"image_bytes": b64}}), 200, server
    )
    assert_same_answers(columns["outputs"], expected)
    pixels = np.stack([prepare_image(data, name, Resize(128, 128)) for name, data in named])
    lists = expect(predict(server, {"instances": pixels.tolist()}, f"{DEFAULT}/versions/2"), 200, server)
    assert_same_answers(lists["predictions"], expected)
    named_rows = [{"images": p.tolist()} for p in pixels]
    named_answer = expect(
        predict(server, {"signature_name": "serving_default", "instances": named_rows}), 200, server
    )
    assert_same_answers(named_answer["predictions"], expected)


def test_tfserving_answers_what_tensorflow_serving_answers(server, repository):
    """One export, one request, two servers: the SavedModel's own signatures (what TF Serving runs)
    and convzoo (int8 here) give the same classes, probabilities within 0.05."""
    import tensorflow as tf

    saved = tf.saved_model.load(str(repository / DEFAULT / "2"))
    named = photos(3)
    b64 = [{"b64": base64.b64encode(data).decode()} for _, data in named]
    served = np.array(
        expect(predict(server, {"signature_name": "serve_bytes", "instances": b64}), 200, server)[
            "predictions"
        ]
    )
    strings = tf.constant([data for _, data in named])
    reference = saved.signatures["serve_bytes"](image_bytes=strings)["probabilities"].numpy()
    assert_same_answers(served, reference, atol=0.05)
    name, data = named[0]
    pixels = decoded(data)[None]
    served = np.array(expect(predict(server, {"instances": pixels.tolist()}), 200, server)["predictions"])
    reference = saved.signatures["serving_default"](images=tf.constant(pixels))["probabilities"].numpy()
    assert_same_answers(served, reference, atol=0.05)


# ---------------------------------------------------------------------------------- bad input


def post_v2(
    server: Server, body: bytes | dict, path: str = f"models/{DEFAULT}/infer", header: int | None = None
):
    headers = dict(AUTH)
    if header is not None:
        headers["Inference-Header-Content-Length"] = str(header)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}/v2/{path}", data=data, headers=headers, timeout=60)


def pixels_input(shape, **extra) -> dict:
    return {"inputs": [{"name": "images", "datatype": "UINT8", "shape": shape, **extra}]}


def test_unknown_models_and_versions_are_404_naming_what_is_served(server, client):
    for response in (
        requests.post(
            f"{server.url}/classify",
            files=[("images", photos(1)[0])],
            data={"model": "nope"},
            headers=dict(AUTH),
        ),
        requests.post(f"{server.url}/metadata", json={"model": f"{DEFAULT}:9"}, headers=dict(AUTH)),
        post_v2(server, pixels_input([1, 4, 4, 3], data=[0] * 48), "models/nope/infer"),
        post_v2(server, pixels_input([1, 4, 4, 3], data=[0] * 48), f"models/{DEFAULT}/versions/9/infer"),
        requests.get(f"{server.url}/v2/models/nope", headers=dict(AUTH)),
        requests.get(f"{server.url}/v1/models/nope", headers=dict(AUTH)),
        predict(server, {"instances": [[[[0, 0, 0]]]]}, f"{DEFAULT}/versions/3"),
    ):
        assert response.status_code == 404, response.text
        assert "imagenette:2 (default), servicetest:1" in response.json()["error"]


@pytest.mark.parametrize(
    "body, words",
    [
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 2, 2, 3], "data": [0.0] * 12}]},
            "must be UINT8",
        ),
        (pixels_input([1, 2, 2], data=[0] * 12), "shape [n, height, width, 3]"),
        (pixels_input([1, 2, 2, 4], data=[0] * 16), "shape [n, height, width, 3]"),
        (pixels_input([1, 2, 2, 3], data=[0] * 11), "12 values"),
        (pixels_input([1, 2, 2, 3], data=[0] * 11 + [256]), "0..255"),
        (pixels_input([1, 2, 2, 3], data=["a"] * 12), "0..255"),
        ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [1]}]}, "unknown input"),
        ({"inputs": []}, "one input"),
        ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [0], "data": []}]}, "no images"),
        ({"input": []}, "'inputs'"),
        ([1, 2], "'inputs'"),
        (
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2], "data": ["x"]}]},
            "needs 2 strings",
        ),
        (
            {"inputs": pixels_input([1, 2, 2, 3], data=[0] * 12)["inputs"], "outputs": [{"name": "logits"}]},
            "only output",
        ),
    ],
)
def test_bad_v2_tensors_are_400_saying_which(server, body, words):
    response = post_v2(server, body)
    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_bad_v2_framing_is_400(server):
    header = json.dumps(pixels_input([1, 2, 2, 3], parameters={"binary_data_size": 12})).encode()
    good = header + bytes(12)
    assert post_v2(server, good, header=len(header)).status_code == 200
    cases = {
        "not JSON": (b"{not json", None),
        "header longer than body": (good, len(good) + 1),
        "binary short": (header + bytes(11), len(header)),
        "binary left over": (header + bytes(13), len(header)),
        "header cut": (good, len(header) - 3),
    }
    for case, (body, length) in cases.items():
        response = post_v2(server, body, header=length)
        assert response.status_code == 400, (case, response.text)
    # a BYTES element whose length runs past the body
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    response = post_v2(server, header + struct.pack("<I", 2**31) + b"abcd", header=len(header))
    assert response.status_code == 400 and "claims 2147483648 bytes" in response.json()["error"]


def test_huge_declared_tensors_are_refused_before_anything_is_allocated(server):
    started = time.monotonic()
    header = json.dumps(pixels_input([1, 100_000, 100_000, 3], parameters={"binary_data_size": 12})).encode()
    response = post_v2(server, header + bytes(12), header=len(header))
    assert response.status_code == 413 and "CONVZOO_MAX_PIXELS" in response.json()["error"]
    response = post_v2(server, pixels_input([100, 2, 2, 3], data=[0] * 1200))
    assert response.status_code == 413 and "CONVZOO_MAX_IMAGES" in response.json()["error"]
    response = predict(server, {"instances": [[[[0, 0, 0]] * 3] * 2] * 9})
    assert response.status_code == 413 and "CONVZOO_MAX_IMAGES" in response.json()["error"]
    response = post_v2(server, b"x" * (17 * files.MiB), header=10)
    assert response.status_code == 413 and "CONVZOO_MAX_REQUEST_BYTES" in response.json()["error"]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "body, words",
    [
        ({"instances": [{"b64": "@@@"}], "signature_name": "serve_bytes"}, "not valid base64"),
        ({"instances": [[[[0, 0, 0]]]], "signature_name": "predict_images"}, "signature_name"),
        ({"instances": [[[[0, 0, 0]]]], "inputs": [[[[0, 0, 0]]]]}, "exactly one of"),
        ({"instances": [[[0, 0, 0]]]}, "pixel lists"),
        ({"instances": [[[[0, 0, 0]], [[0, 0]]]]}, "values"),
        ({"instances": [{"wrong": [[[0, 0, 0]]]}]}, "only input"),
        ({"instances": []}, "non-empty"),
        (
            {
                "instances": [{"b64": base64.b64encode(b"not an image").decode()}],
                "signature_name": "serve_bytes",
            },
            "image_bytes[0]",
        ),
    ],
)
def test_bad_tfserving_requests_are_400_saying_which(server, body, words):
    response = predict(server, body)
    assert response.status_code == 400, response.text
    assert words in json.dumps(response.json()), response.text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.binary(max_size=300)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.integers(-5, 300) | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "inputs",
                            "instances",
                            "name",
                            "datatype",
                            "shape",
                            "data",
                            "parameters",
                            "b64",
                            "signature_name",
                        ]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=30,
        ),
    ),
    header=st.none() | st.integers(-3, 400),
    route=st.sampled_from([f"v2/models/{DEFAULT}/infer", f"v1/models/{DEFAULT}:predict"]),
)
def test_random_bodies_on_the_new_endpoints_never_get_a_server_error(server, body, header, route):
    headers = {**AUTH, **({"Inference-Header-Content-Length": str(header)} if header is not None else {})}
    response = requests.post(f"{server.url}/{route}", data=body, headers=headers, timeout=60)
    assert response.status_code < 500 and "error" in response.json() or response.status_code == 200, (
        response.text
    )


def test_every_new_endpoint_asks_for_the_key(server):
    for method, path in [
        ("GET", "/v2"),
        ("GET", f"/v2/models/{DEFAULT}"),
        ("GET", f"/v2/models/{DEFAULT}/ready"),
        ("POST", f"/v2/models/{DEFAULT}/infer"),
        ("GET", f"/v1/models/{DEFAULT}"),
        ("GET", f"/v1/models/{DEFAULT}/metadata"),
        ("POST", f"/v1/models/{DEFAULT}:predict"),
    ]:
        response = requests.request(method, server.url + path, json={}, timeout=10)
        assert response.status_code == 401, (path, response.status_code)
    for path in ("/v2/health/live", "/v2/health/ready", "/livez", "/readyz"):
        assert requests.get(server.url + path, timeout=10).status_code == 200, path


def scrape(server: Server) -> list:
    """Every sample of ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", headers=dict(AUTH), timeout=10).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def test_per_model_metrics(server):
    samples = scrape(server)

    def labels(name: str, **match) -> list[dict]:
        return [
            s.labels
            for s in samples
            if s.name == name and s.value > 0 and all(s.labels.get(k) == v for k, v in match.items())
        ]

    ok = labels("convzoo_requests_total", model=DEFAULT, version="2", outcome="ok")
    assert {s["protocol"] for s in ok} == {"convzoo", "v2", "tfserving"}
    assert labels("convzoo_requests_total", model=SMALL, version="1", outcome="ok")
    assert labels("convzoo_requests_total", model="", outcome="unknown_model")
    assert labels("convzoo_requests_total", model=DEFAULT, outcome="invalid_input")
    assert labels("convzoo_model_info", model=DEFAULT, version="2", runtime="openvino-int8", default="true")
    assert labels("convzoo_model_info", model=SMALL, version="1", default="false")
    for family in ("queue_duration_seconds", "batch_size", "request_duration_seconds", "request_images"):
        assert labels(f"convzoo_{family}_count", model=SMALL, version="1"), family
    assert labels("convzoo_inference_duration_seconds_count", model=DEFAULT, runtime="openvino-int8")
    assert labels("convzoo_decode_duration_seconds_count", model=DEFAULT)
    assert labels("convzoo_model_loads_total", model=SMALL, outcome="loaded")
    assert labels("convzoo_process_resident_memory_bytes")
    assert labels("convzoo_http_refusals_total", status="401", reason="api_key")


def test_metrics_follow_the_contract_the_rules_rely_on(server):
    """Every metric of deploy/prometheus/metrics.txt is on /metrics with exactly its labels and type."""
    from helpers import contract
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", headers=dict(AUTH), timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, wanted in contract().items():
        base = name.removesuffix("_total") if wanted["type"] == "counter" else name
        family = families.get(base)
        assert family is not None, f"{name} is not on /metrics"
        assert family.type == wanted["type"], (name, family.type)
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, name
        for sample in samples:
            assert set(sample.labels) - {"le"} == set(wanted["labels"]), (name, sample.labels)


def test_still_serving_after_all_of_it(server, client):
    named = photos(2)
    assert_same_answers(infer_bytes(client, named), classify(server, named))
    assert "Traceback" not in server.log.read_text()
