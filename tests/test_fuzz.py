"""Hostile uploads, in process: the decode/validate layer and the upload guard under fuzzing.

- ``service.serving.images.prepare_image`` on mutated JPEG / PNG / GIF / WebP / BMP files (bit flips,
  truncations, insertions, deletions, huge integers written over the header) either returns a
  model-ready array or raises ``InvalidImage`` (never anything else), within ``SECONDS_PER_IMAGE``;
  a separate process decodes a seeded corpus of the same mutations and must not grow its peak
  memory beyond what the pixel limit allows.
- Decompression bombs of every format are refused from the header, at once.
- ``service.http.body.RequestGuard`` in front of Starlette's own form parser (what BentoML uses,
  answering 500 when it fails) on random and mutated multipart bodies: a 2xx/4xx answer, never a
  5xx or an exception.

The same guard and decoder are fuzzed over HTTP against a real server in tests/test_reliability.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import service_files as files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.config import Limits
from service.http.body import RequestGuard
from service.http.forms import FormInspector, split_plain_form
from service.serving.images import InvalidImage, Resize, prepare_image

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
RESIZE = Resize(48, 48)
LIMITS = Limits(max_file_bytes=1 * MiB, max_pixels=4_000_000)
SECONDS_PER_IMAGE = 2.0
"""Generous for a shared 2-core machine; a mutated seed decodes in milliseconds."""
PEAK_MEMORY_MIB = 160
"""Peak-memory growth allowed while decoding the mutated corpus at ``LIMITS``: 4 Mpx is 16 MiB as
RGBA, a few working copies of that, plus the allocator's slack."""


def seeds() -> dict[str, bytes]:
    """Small valid files of every format and several modes: the material mutations start from."""
    base = files.photo((64, 48), seed=1)
    return {
        "photo.jpg": files.encode(base, "JPEG", quality=90),
        "gray.jpg": files.encode(base.convert("L"), "JPEG"),
        "cmyk.jpg": files.encode(base.convert("CMYK"), "JPEG"),
        "photo.png": files.encode(base, "PNG"),
        "rgba.png": files.encode(base.convert("RGBA"), "PNG"),
        "gray16.png": files.sixteen_bit_gray_png(32, 24),
        "palette.gif": files.encode(base.convert("P"), "GIF"),
        "anim.gif": files.animated_gif(),
        "lossy.webp": files.encode(base, "WEBP", quality=80),
        "lossless.webp": files.encode(base, "WEBP", lossless=True),
        "photo.bmp": files.encode(base, "BMP"),
    }


SEEDS = seeds()


@st.composite
def mutated_files(draw) -> tuple[str, bytes]:
    """A seed file with 1 to 8 random edits."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 8))):
        edit = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header_int"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "truncate":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "header_int" and len(data) > 4:
            at = draw(st.integers(0, min(len(data), 200) - 4))  # where sizes and lengths live
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[at : at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
    return name, bytes(data)


def decode_or_refuse(name: str, data: bytes) -> str:
    """``prepare_image`` on one file: "ok" or "refused", after checking the result or error."""
    start = time.perf_counter()
    try:
        array = prepare_image(data, name, RESIZE, LIMITS)
    except InvalidImage as error:
        assert error.filename == name and error.reason
        outcome = "refused"
    else:
        assert array.shape == (48, 48, 3) and array.dtype == np.uint8
        outcome = "ok"
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_IMAGE, f"{name}: {elapsed:.2f} s for {len(data)} bytes"
    return outcome


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutated_images_decode_or_raise_only_invalid_image(upload):
    decode_or_refuse(*upload)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from(["x.jpg", "x.png", "", "../../etc/passwd"]))
def test_random_bytes_are_refused_as_invalid_image(data, name):
    assert decode_or_refuse(name, data) == "refused"


def _patched(data: bytes, offset: int, layout: str, *values: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(layout, patched, offset, *values)
    return bytes(patched)


def bombs() -> dict[str, bytes]:
    """Small files whose headers claim far more pixels than ``LIMITS`` (or PIL's own cap) allow."""
    base = files.photo((64, 48))
    jpeg = files.encode(base, "JPEG")
    start_of_frame = jpeg.index(b"\xff\xc0")
    webp = files.encode(base, "WEBP", quality=80)  # lossy: "VP8 " chunk, 14-bit sizes at 26
    return {
        "bomb.png": files.png_bomb(100_000, 100_000),
        "just_over_limit.png": files.png_bomb(2001, 2000),
        "bomb.jpg": _patched(jpeg, start_of_frame + 5, ">HH", 65_500, 65_500),
        "bomb.gif": _patched(files.encode(base, "GIF"), 6, "<HH", 65_535, 65_535),
        "bomb.bmp": _patched(files.encode(base, "BMP"), 18, "<ii", 30_000, 30_000),
        "bomb.webp": _patched(webp, 26, "<HH", 16_383, 16_383),
    }


@pytest.mark.parametrize("name", sorted(bombs()))
def test_decompression_bombs_are_refused_from_the_header(name):
    start = time.perf_counter()
    with pytest.raises(InvalidImage) as refused:
        prepare_image(bombs()[name], name, RESIZE, LIMITS)
    assert time.perf_counter() - start < 0.5
    assert "pixels" in refused.value.reason


MEMORY_PROBE = """
import json, re, sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {repo!r}]
from test_fuzz import LIMITS, RESIZE, SEEDS
from service.serving.images import InvalidImage, prepare_image

def peak_mib():  # this process's own high-water mark (ru_maxrss would include its parent's)
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024

for name, data in sorted(SEEDS.items()):
    prepare_image(data, name, RESIZE, LIMITS)  # every decoder loaded and warm
before = peak_mib()
outcomes = {{"ok": 0, "refused": 0}}
for path in sorted(Path({corpus!r}).iterdir()):
    try:
        prepare_image(path.read_bytes(), path.name, RESIZE, LIMITS)
        outcomes["ok"] += 1
    except InvalidImage:
        outcomes["refused"] += 1
print(json.dumps({{"before_mib": before, "after_mib": peak_mib(), **outcomes}}))
"""


def memory_corpus(folder: Path, count: int = 600) -> None:
    """Bombs, the largest images ``LIMITS`` allow, and seeded header mutations, as files."""
    rng = random.Random(0)
    largest = files.photo((2000, 1999), seed=4)  # 3 998 000 pixels, just under the limit
    corpus = {
        **bombs(),
        "under_limit.png": files.png_bomb(2000, 1999),
        "largest.jpg": files.encode(largest, "JPEG"),
        "largest.png": files.encode(largest, "PNG"),
    }
    for i in range(count):
        name, data = rng.choice(sorted(SEEDS.items()))
        data = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(min(len(data), 200) - 4)
            if rng.random() < 0.5:  # one big integer, or a plausible width and height
                packed = struct.pack(rng.choice(["<I", ">I"]), rng.choice([0xFFFF, 0x7FFFFFFF, 2000]))
            else:
                packed = struct.pack(rng.choice(["<HH", ">HH"]), 2000, 1999)
            data[at : at + 4] = packed
        corpus[f"{i:03d}-{name}"] = bytes(data)
    for name, data in corpus.items():
        (folder / name).write_bytes(data)


def test_memory_per_image_is_bounded_by_the_pixel_limit(tmp_path):
    """Headers claiming up to (and beyond) ``LIMITS.max_pixels``: peak memory stays bounded.

    Decoded in a fresh process, whose peak resident size (``VmHWM``) shows every allocation the
    corpus made, C-level ones of PIL included (this test process may hold TensorFlow).
    """
    memory_corpus(tmp_path)
    code = MEMORY_PROBE.format(tests=str(REPO / "tests"), repo=str(REPO), corpus=str(tmp_path))
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"\nmemory probe: {result}")
    assert result["ok"] >= 2 and result["refused"] > 0  # the largest images decoded, bombs not
    assert result["after_mib"] - result["before_mib"] < PEAK_MEMORY_MIB, result


# ------------------------------------------------------------------ multipart bodies, in process


async def _read_form(request: Request) -> JSONResponse:
    """Parse the form like BentoML does, and like BentoML answer 500 when the parser fails."""
    try:
        async with request.form() as form:
            return JSONResponse({"images": len(form.getlist("images"))})
    except HTTPException as error:
        return JSONResponse({"error": f"parser failed: {error.detail}"}, status_code=500)


def guarded_app(max_bytes: int) -> RequestGuard:
    app = Starlette(routes=[Route("/classify", _read_form, methods=["POST"])])
    return RequestGuard(
        app,
        upload_path="/classify",
        file_field="images",
        max_upload_bytes=max_bytes,
        max_body_bytes=64 * 1024,
        body_timeout_s=10,
    )


GUARDED_APP = guarded_app(max_bytes=64 * 1024)


@settings(max_examples=300, deadline=None)
@given(files.fuzz_bodies, st.booleans())
def test_random_multipart_bodies_get_an_answer_never_an_error(body, chunked):
    response = asyncio.run(_post(GUARDED_APP, body, chunked))
    assert response.status_code in (200, 400, 413), (response.status_code, response.text)
    if response.status_code != 200:
        assert response.headers["content-type"].startswith(("application/json", "text/plain"))


FORMS_STARLETTE_FAILS_ON = {
    "nameless part": files.fuzz_multipart(
        [(b'form-data; name="images"; filename="a.jpg"', b"x"), (b"form-data", b"y")]
    ),
    "text over 1 MiB": files.fuzz_multipart(
        [
            (b'form-data; name="images"; filename="a.jpg"', b"x"),
            (b'form-data; name="top_k"', b"5" * (MiB + 1)),
        ]
    ),
    "1001 fields": files.fuzz_multipart(
        [(b'form-data; name="images"; filename="a.jpg"', b"x")] + [(b'form-data; name="note"', b"1")] * 1001
    ),
}


@pytest.mark.parametrize("case", sorted(FORMS_STARLETTE_FAILS_ON))
def test_forms_the_parser_would_fail_on_are_refused_first(case):
    response = asyncio.run(_post(guarded_app(4 * MiB), FORMS_STARLETTE_FAILS_ON[case], False))
    assert response.status_code == 400 and response.json()["error"], response.text


def _inspect(body: bytes, plain: bool) -> tuple:
    """(problem, files, fields) of ``FormInspector`` on the whole ``body``: through ``feed_body``
    (the plain split where it applies), or through python-multipart alone."""
    inspector = FormInspector(files.FUZZ_BOUNDARY.encode(), "images")
    problem = inspector.feed_body(body) if plain else inspector.feed(body, last=True)
    if problem:
        return problem, None, None
    form = inspector.form()
    return None, form.files, form.fields


plain_headers = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([b"Content-Disposition", b"content-disposition", b"Content-Type", b"X-a"]),
            files.fuzz_dispositions,
        ),
        st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=40)),
    ),
    max_size=10,
)


@st.composite
def plain_forms(draw) -> bytes:
    """Bodies near the plain shape: arbitrary header lines and contents, optional padding and
    epilogues, delimiters inside the contents; mutated now and then."""
    boundary = files.FUZZ_BOUNDARY.encode()
    body = draw(st.sampled_from([b"", b"\r\n", b"preamble\r\n"]))
    for headers, content in draw(
        st.lists(st.tuples(plain_headers, st.binary(max_size=64)), min_size=1, max_size=4)
    ):
        body += b"--" + boundary + draw(st.sampled_from([b"", b" ", b"\t"])) + b"\r\n"
        body += b"".join(
            name + b":" + draw(st.sampled_from([b"", b" ", b"  "])) + value + b"\r\n"
            for name, value in headers
        )
        body += (
            b"\r\n" + content + draw(st.sampled_from([b"", b"\r\n--" + boundary + b"x", b"\r\n"])) + b"\r\n"
        )
    body += b"--" + boundary + b"--" + draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue", b"--"]))
    if draw(st.booleans()):
        body = files.splice(body, draw(st.integers(0, 10_000)), draw(st.binary(min_size=1, max_size=4)))
    return body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(files.fuzz_bodies, plain_forms()))
def test_the_plain_split_finds_what_python_multipart_finds(body):
    """``split_plain_form`` (the fast path of the upload guard) takes a body only when it finds the
    same parts, headers and data as python-multipart's streaming parser: the same problem, files
    and fields come out of the guard's checks either way."""
    assert _inspect(body, plain=True) == _inspect(body, plain=False)


def test_what_clients_send_takes_the_plain_split():
    """The fast path applies to what real clients send: this project's benchmark encoder, httpx
    (requests-style), and a form with a text field the way browsers and curl write it."""
    from benchmarks.multipart import encode_multipart

    jpeg = files.encode(files.photo((32, 24)), "JPEG")
    ours, content_type = encode_multipart([("a.jpg", jpeg), ("b.jpg", jpeg)])
    request = httpx.Request(
        "POST", "http://x/classify", files=[("images", ("a.jpg", jpeg))], data={"top_k": "3"}
    )
    browser = files.fuzz_multipart(
        [(b'form-data; name="images"; filename="a.jpg"', jpeg), (b'form-data; name="top_k"', b"2")]
    )
    for body, header in [
        (ours, content_type),
        (request.read(), request.headers["content-type"]),
        (browser, f"multipart/form-data; boundary={files.FUZZ_BOUNDARY}"),
    ]:
        boundary = header.split("boundary=")[1].encode()
        assert split_plain_form(body, boundary) is not None, body[:200]


async def _post(app: RequestGuard, body: bytes, chunked: bool) -> httpx.Response:
    """POST ``body`` to the guarded ``app`` in process; an exception in the app propagates."""

    async def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        return await client.post(
            "/classify",
            content=chunks() if chunked else body,
            headers={"Content-Type": f"multipart/form-data; boundary={files.FUZZ_BOUNDARY}"},
        )


# ----------------------------------------------------------------- the protocols' parsers

V2_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, 2, 2, 3],
                "parameters": {"binary_data_size": 12},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
).encode()


def _mutate(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data)) if data else 0
        choice = rng.random()
        if choice < 0.4 and data:
            data[at] = rng.randrange(256)
        elif choice < 0.7:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif data:
            del data[at : at + rng.randint(1, 8)]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), cut=st.integers(-20, 20), raw=st.binary(max_size=64))
def test_v2_requests_parse_or_raise_only_api_errors(seed, cut, raw):
    """Mutated Open Inference Protocol requests (JSON header and binary part): parsed, or an
    ``ServiceError`` 4xx; never another exception."""
    from service.config import ServiceConfig
    from service.protocols.oip import _parse, _split
    from service.serving.errors import ServiceError
    from service.serving.jsonbody import parse_json

    body = _mutate(V2_HEADER, seed) + bytes(12) + raw
    length = str(len(V2_HEADER) + cut)
    try:
        header, binary = _split(body, length, ServiceConfig(limits=LIMITS))
        parse_json(header, lambda parsed: _parse(parsed, binary, LIMITS))
    except ServiceError as error:
        assert 400 <= error.status < 500 and error.message


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-300, 300) | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
        max_leaves=40,
    ),
    signature=st.sampled_from(["serving_default", "serve_bytes", "x"]) | st.lists(st.integers(), max_size=2),
    rows=st.booleans(),
)
def test_tfserving_requests_parse_or_raise_only_api_errors(value, signature, rows):
    """Arbitrary JSON values as TF Serving predict requests: parsed, or a ``ServiceError`` 4xx."""
    from service.protocols.tfserving import _inputs
    from service.serving.errors import ServiceError

    body = {"signature_name": signature, "instances" if rows else "inputs": value}
    try:
        _inputs(body, LIMITS)
    except ServiceError as error:
        assert 400 <= error.status < 500 and error.message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, indent=st.sampled_from([None, 0, 2]), step=st.sampled_from([1, 40, 4096]))
def test_loads_in_steps_reads_what_json_loads_reads(value, indent, step):
    """``service.serving.jsonbody.loads_in_steps`` (the JSON tensor routes' parser) against ``json.loads``:
    the same value for any JSON text, walked in steps of any size."""
    from service.serving import jsonbody as core

    text = json.dumps(value, indent=indent).encode()
    saved = core.STEP_BYTES, core.MAX_SMALL_STEPS
    core.STEP_BYTES, core.MAX_SMALL_STEPS = step, 2
    try:
        assert core.loads_in_steps(text) == json.loads(text)
    finally:
        core.STEP_BYTES, core.MAX_SMALL_STEPS = saved


@settings(max_examples=500, deadline=None)
@given(value=JSON_VALUES, seed=st.integers(0, 2**32 - 1), step=st.sampled_from([1, 40]))
def test_loads_in_steps_refuses_what_json_loads_refuses(value, seed, step):
    """Mutated JSON texts: ``loads_in_steps`` raises a ValueError exactly when ``json.loads`` does
    (RecursionError included), and otherwise reads the same value."""
    from service.serving import jsonbody as core

    text = bytearray(json.dumps(value).encode())
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text) + 1)
        choice = rng.random()
        if choice < 0.4 and text:
            del text[min(at, len(text) - 1)]
        elif choice < 0.8:
            text[at:at] = bytes([rng.choice(b'[]{},:" 0a\\-.eE')])
        else:
            text[at:at] = b"[" * 1200
    saved = core.STEP_BYTES, core.MAX_SMALL_STEPS
    core.STEP_BYTES, core.MAX_SMALL_STEPS = step, 2
    try:
        try:
            expected = json.loads(bytes(text))
        except (ValueError, RecursionError) as error:
            with pytest.raises(type(error) if isinstance(error, RecursionError) else ValueError):
                core.loads_in_steps(bytes(text))
        else:
            assert core.loads_in_steps(bytes(text)) == expected
    finally:
        core.STEP_BYTES, core.MAX_SMALL_STEPS = saved
