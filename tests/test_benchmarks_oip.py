"""The load generator's OIP v2 requests and answer checks (``benchmarks.wire``), and the
``--compare`` report's headline, generator figures and issue 34's goals on synthetic steps.

The requests are parsed by convzoo's own ``/v2`` parser (``service.protocols.oip``), in process;
the answers checked are the ones convzoo's ``/v2`` builds. Fast: no server, no model.
"""

from __future__ import annotations

import argparse
import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
from starlette.datastructures import Headers

from benchmarks import load, wire
from benchmarks.ladder import GENERATOR_SATURATED, Step, exact_times, merge_steps
from benchmarks.report import (
    generator_note,
    generator_table,
    headline_table,
    issue34_goals,
    same_work_ceiling,
    verdict,
)
from benchmarks.servers import OIP_PEERS, SERVERS, ServerError, server_spec
from service.config import ServiceConfig
from service.protocols import oip
from service.serving.errors import ServiceError

JPEG_A = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3 + b"\xff\xd9"
JPEG_B = b"\xff\xd8\xff\xdb" + b"\x00\x01\x02|\xff" * 50 + b"\xff\xd9"


def parsed_by_convzoo(prepared: wire.Prepared) -> tuple[list[bytes], bool]:
    """The uploads convzoo's ``/v2`` parser takes out of ``prepared`` (and whether it answers
    in binary)."""
    config = ServiceConfig()
    header, binary = oip._split(
        prepared.body, Headers(prepared.headers).get("inference-header-content-length"), config
    )
    inputs, binary_output, _ = oip._parse(json.loads(header), binary, config.limits)
    assert list(inputs) == [oip.BYTES_INPUT]
    return [upload.data for upload in inputs[oip.BYTES_INPUT]], binary_output


@pytest.mark.parametrize("protocol", ["oip-binary", "oip-json"])
@pytest.mark.parametrize("files", [[JPEG_A], [JPEG_A, JPEG_B, JPEG_A]])
def test_oip_requests_round_trip_through_convzoos_parser(protocol, files):
    prepared = wire.build(protocol, [(f"f{i}.jpg", data) for i, data in enumerate(files)], "imagenette")
    assert prepared.path == "/v2/models/imagenette/infer" and prepared.images == len(files)
    uploads, binary_output = parsed_by_convzoo(prepared)
    assert uploads == files and binary_output is False  # the answer comes as JSON
    if protocol == "oip-binary":
        length = int(prepared.headers[wire.HEADER_LENGTH])
        header = json.loads(prepared.body[:length])
        assert header["inputs"][0]["parameters"]["binary_data_size"] == len(prepared.body) - length
        assert prepared.headers["Content-Type"] == "application/octet-stream"
    else:
        tensor = json.loads(prepared.body)["inputs"][0]
        assert tensor["parameters"] == {"content_type": "base64"}  # MLServer's convention
        assert [base64.b64decode(d) for d in tensor["data"]] == files
        assert wire.HEADER_LENGTH not in prepared.headers


@pytest.mark.parametrize("protocol", ["oip-binary", "oip-json"])
def test_a_column_of_bytes_as_triton_wants_it_parses_too(protocol):
    prepared = wire.build(protocol, [("a.jpg", JPEG_A), ("b.jpg", JPEG_B)], "m", column=True)
    header = prepared.body[: int(prepared.headers.get(wire.HEADER_LENGTH, len(prepared.body)))]
    assert json.loads(header)["inputs"][0]["shape"] == [2, 1]
    assert parsed_by_convzoo(prepared)[0] == [JPEG_A, JPEG_B]


def test_a_frame_cut_short_is_refused_by_convzoos_parser():
    """The builder's framing is what the parser checks: one byte less and it no longer fits."""
    prepared = wire.build("oip-binary", [("a.jpg", JPEG_A)], "m")
    with pytest.raises(ServiceError, match="binary_data_size"):
        parsed_by_convzoo(wire.Prepared(prepared.path, prepared.body[:-1], prepared.headers, 1))


def test_build_all_starts_one_request_at_each_file_and_wraps():
    files = [("a.jpg", JPEG_A), ("b.jpg", JPEG_B), ("c.jpg", JPEG_A + b"c")]
    prepared = wire.build_all("oip-binary", files, 2, "m")
    assert [parsed_by_convzoo(p)[0] for p in prepared] == [
        [JPEG_A, JPEG_B],
        [JPEG_B, JPEG_A + b"c"],
        [JPEG_A + b"c", JPEG_A],
    ]
    classify = wire.build("classify", files[:1])
    assert classify.path == "/classify" and classify.headers["Content-Type"].startswith("multipart/form-data")
    with pytest.raises(ValueError, match="model's name"):
        wire.build("oip-json", files)
    with pytest.raises(ValueError, match="unknown protocol"):
        wire.build("grpc", files, "m")


def convzoo_answer(probabilities: np.ndarray, binary: bool):
    served = SimpleNamespace(name="imagenette", version=3)
    return oip._answer(served, probabilities, binary, None)


@pytest.mark.parametrize("binary", [False, True])
def test_answers_count_as_ok_only_with_probabilities_of_the_right_size(binary):
    body, raw_headers = convzoo_answer(np.full((2, 10), 0.1, dtype=np.float32), binary)
    headers = Headers(raw=raw_headers)
    assert wire.check("oip-binary", 200, body, headers, 2, 10) is None
    assert wire.check("oip-binary", 200, body, headers, 2, None) is None
    assert "expected 2 x 9" in wire.check("oip-binary", 200, body, headers, 2, 9)
    assert "expected 1 x 10" in wire.check("oip-binary", 200, body, headers, 1, 10)
    assert wire.check("oip-json", 503, b'{"error":"busy"}', {}, 1, 10).startswith("HTTP 503")


def test_other_answers_are_failures_with_a_reason():
    nested = json.dumps({"outputs": [{"name": "probabilities", "data": [[0.5, 0.5]]}]}).encode()
    assert wire.check("oip-json", 200, nested, {}, 1, 2) is None  # nested data, as some servers send
    other = json.dumps({"outputs": [{"name": "logits", "data": [1.0]}]}).encode()
    assert "no output 'probabilities'" in wire.check("oip-json", 200, other, {}, 1, 1)
    assert "not JSON" in wire.check("oip-json", 200, b"<html>", {}, 1, 1)
    assert wire.check("classify", 200, b'[{"label": "tench"}]', {}, 1, None) is None
    assert "expected a list of 2" in wire.check("classify", 200, b'[{"label": "tench"}]', {}, 2, None)


def step(server: str, users: int, rate: float, p50: float, p99: float, cpu: float | None = 0.3) -> Step:
    return Step(
        server,
        users,
        20,
        int(rate * 20),
        0,
        rate,
        rate,
        p50,
        p50,
        p99,
        p50,
        generator_cpu=cpu,
        load_average=1.5,
    )


def ladder(server: str, rows, cpu: float | None = 0.3) -> list[Step]:
    return [step(server, users, rate, p50, p99, cpu) for users, rate, p50, p99 in rows]


BY_SERVER = {
    "bentoml-v2": ladder("bentoml-v2", [(1, 300, 3.2, 5), (32, 480, 66, 90), (64, 490, 130, 170)]),
    "bentoml": ladder("bentoml", [(1, 270, 3.6, 6), (32, 470, 68, 95), (64, 475, 140, 180)]),
    "triton": ladder("triton", [(1, 210, 4.6, 7), (32, 440, 72, 80), (64, 467, 137, 150)]),
}


def test_headline_has_a_row_per_server_and_says_why_one_is_missing():
    rows = [
        ("bentoml-v2", "convzoo /v2"),
        ("bentoml", "convzoo /classify"),
        ("triton", "Triton"),
        ("kserve", "KServe"),
    ]
    table = headline_table(
        rows, BY_SERVER, [1, 32, 64], 530.0, {"kserve": "its environment 'kserve' could not be built"}
    )
    lines = table.splitlines()
    assert lines[0].startswith(
        "| server | 1 client req/s, p50 | 32 clients req/s, p50 | 64 clients req/s, p50 |"
    )
    assert lines[0].endswith("| p99 per level (ms) | best ÷ in-process ceiling |")
    assert (
        lines[2]
        == "| convzoo /v2 | 300.0, 3.20 ms | 480.0, 66.00 ms | 490.0, 130.00 ms | 5 / 90 / 170 | 0.92 |"
    )
    assert lines[4].startswith("| Triton | 210.0, 4.60 ms |") and lines[4].endswith("| 0.88 |")
    assert "NOT MEASURED: its environment 'kserve' could not be built" in lines[5]
    assert lines[5].count("|") == lines[2].count("|")  # a well-formed row
    assert headline_table(rows[:1], BY_SERVER, [1], None, {}).splitlines()[2].endswith("| n/a |")
    generator = generator_table(rows, BY_SERVER, [1, 32, 64])
    assert "| convzoo /v2 | 0.30, 1.50 | 0.30, 1.50 | 0.30, 1.50 |" in generator
    assert "KServe" not in generator  # not measured: no generator figures


def test_goals_of_issue_34():
    goals = {g.name: g for g in issue34_goals(BY_SERVER, 530.0)}
    assert {name: verdict(g) for name, g in goals.items()} == {
        "convzoo /v2 ≥ Triton at every level": "pass",
        "convzoo /classify ≥ Triton at every level": "FAIL",  # 64 users: p50 140 ms > Triton's 137
        "convzoo /v2 ÷ ceiling": "pass",  # 490 / 530 = 0.92
        "convzoo /classify ÷ ceiling": "FAIL",  # 475 / 530 = 0.896
        "/v2 and /classify within 5 %": "pass",  # 490 vs 475: 3.1 %
    }
    assert "0.92 (64 users)" in goals["convzoo /v2 ÷ ceiling"].measured
    assert (
        "64: 475.0 vs 467.0 req/s, p50 140.00 vs 137.00 ms"
        in goals["convzoo /classify ≥ Triton at every level"].measured
    )
    assert "3.1 % apart" in goals["/v2 and /classify within 5 %"].measured
    slower = {**BY_SERVER, "bentoml": ladder("bentoml", [(1, 270, 3.6, 6), (64, 460, 130, 180)])}
    assert (
        verdict({g.name: g for g in issue34_goals(slower, 530.0)}["/v2 and /classify within 5 %"]) == "FAIL"
    )
    missing = {g.name: verdict(g) for g in issue34_goals({"bentoml": BY_SERVER["bentoml"]}, None)}
    assert set(missing.values()) == {"n/a"}


def test_generator_note_says_when_locust_set_the_pace():
    assert "not the bottleneck" in generator_note(BY_SERVER) and "0.30" in generator_note(BY_SERVER)
    busy = {"triton": ladder("triton", [(1, 210, 4.6, 7), (64, 470, 137, 150)], cpu=GENERATOR_SATURATED)}
    note = generator_note(busy)
    assert (
        "Locust saturated its core" in note and "triton at 1 users" in note and "triton at 64 users" in note
    )
    assert "not measured" in generator_note({"x": ladder("x", [(1, 1, 1, 1)], cpu=None)})


def test_same_work_ceiling_is_the_mean_of_the_runs_service_mode():
    assert same_work_ceiling([{"service_images_per_s": 520.0}, {"service_images_per_s": 540.0}]) == 530.0
    assert same_work_ceiling([{"e2e_images_per_s": 600.0}]) is None  # no service mode: not the same work


def test_exact_times_carry_the_generators_cpu(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {"count": 3, "p50_ms": 2.5, "p95_ms": 3, "p99_ms": 4, "mean_ms": 2.6, "generator_cpu": 0.41}
        )
    )
    assert exact_times(path) == {
        "p50_ms": 2.5,
        "p95_ms": 3.0,
        "p99_ms": 4.0,
        "mean_ms": 2.6,
        "generator_cpu": 0.41,
    }
    path.write_text(json.dumps({"count": 0, "generator_cpu": 0.02}))
    assert exact_times(path) == {"generator_cpu": 0.02}


def test_merged_windows_add_up_and_take_percentiles_over_every_response(tmp_path):
    """Two windows of one level (``--compare``'s A B B A): counts and seconds summed, rates from
    the sums, percentiles exact over both windows' response times, not an average of the two."""
    first = Step("bentoml", 32, 10, 4000, 0, 400, 400, 80, 90, 100, 81, generator_cpu=0.10, batch_size=20)
    second = Step(
        "bentoml", 32, 10, 3000, 30, 300, 297, 100, 120, 150, 101, generator_cpu=0.20, batch_size=30
    )
    paths = [tmp_path / "w1.json", tmp_path / "w2.json"]
    paths[0].write_text(json.dumps({"times_ms": [80.0] * 4000}))
    paths[1].write_text(json.dumps({"times_ms": [100.0] * 2970}))
    merged = merge_steps([(first, paths[0]), (second, paths[1])])
    assert (merged.requests, merged.failures, merged.seconds) == (7000, 30, 20)
    assert merged.requests_per_s == 350 and merged.images_per_s == pytest.approx((4000 + 2970) / 20)
    assert merged.ok_per_s == pytest.approx(6970 / 20)
    assert (merged.p50_ms, merged.p99_ms) == (80.0, 100.0)  # 4,000 at 80 ms, 2,970 at 100 ms
    assert merged.mean_ms == pytest.approx((4000 * 80 + 2970 * 100) / 6970)
    assert merged.generator_cpu == pytest.approx(0.15) and merged.batch_size == pytest.approx(
        (20 * 4 + 30 * 3) / 7
    )
    assert merged.windows == "400.0 / 297.0"
    paths[1].unlink()  # a window without its file: its figures from Locust's, percentiles from the rest
    assert merge_steps([(first, paths[0]), (second, paths[1])]).p99_ms == 80.0


def test_convzoos_two_protocols_share_one_server_unless_told():
    groups = load._groups(load._servers(compare_args("--compare")), compare_args("--compare"))
    assert groups == [["bentoml-v2", "bentoml"], ["triton"], ["mlserver"], ["kserve"], ["ray-oip"]]
    args = compare_args("--servers", "triton,bentoml,bentoml-v2")
    assert load._groups(load._servers(args), args) == [["triton"], ["bentoml", "bentoml-v2"]]
    args = compare_args("--compare", "--no-alternate")
    assert load._groups(load._servers(args), args)[:2] == [["bentoml-v2"], ["bentoml"]]
    args = compare_args("--servers", "bentoml,fastapi")
    assert load._groups(load._servers(args), args) == [["bentoml"], ["fastapi"]]


def compare_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    load.add_arguments(parser)
    args = parser.parse_args(list(argv))
    load._defaults(args)
    return args


def test_compare_runs_convzoo_then_the_oip_peers_on_its_own_ladder():
    args = compare_args("--compare")
    assert load._servers(args) == ["bentoml-v2", "bentoml", "triton", "mlserver", "kserve", "ray-oip"]
    assert (args.users, args.ceiling_batch_sizes, args.ceiling_modes) == ("1,32,64", "1,8,16,32", "service")
    assert (args.step_seconds, args.warmup_seconds, args.server_cpus, args.locust_cpus) == (20, 5, "1", "0")
    plain = compare_args("--servers", "bentoml-v2,triton,fastapi")
    assert load._servers(plain) == ["bentoml-v2", "triton", "fastapi"]
    assert plain.users == load.DEFAULT_USERS and plain.ceiling_modes is None
    with pytest.raises(ValueError, match="unknown servers"):
        load._servers(compare_args("--servers", "tgi"))
    assert "[extra: TensorFlow" in load._title("fastapi") and "extra" not in load._title("bentoml-v2")
    problems: dict[str, str] = {}
    load._prepare(["bentoml-v2", "bentoml", "tgi"], problems)  # convzoo's rows need no environment
    assert list(problems) == ["tgi"] and "no server 'tgi'" in problems["tgi"]


def test_convzoos_two_rows_and_the_peers_speak_oip():
    assert SERVERS["bentoml"].protocol == "classify" and SERVERS["bentoml-v2"].protocol == "oip-binary"
    with pytest.raises(ServerError, match="no server 'tgi'"):
        server_spec("tgi")
    try:
        from benchmarks.peers import PEERS
    except ImportError:
        pytest.skip("benchmarks.peers has no PEERS yet")
    for name in OIP_PEERS:
        spec = server_spec(name)  # "ray-oip": PEERS["ray"] where that name is the old peer's
        assert (
            spec.oip
            and spec.ready_path.startswith("/v2/")
            and spec.venv
            and spec.module in {peer.module for peer in PEERS.values()}
        )
