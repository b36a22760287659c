"""benchmarks.server_metrics on /metrics text captured from a real ``bentoml serve`` (trimmed: a
few of its buckets and BentoML's own series kept, one more worker added to the memory gauge)."""

# ruff: noqa: E501 (the captured /metrics lines are as long as they are)

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import server_metrics
from benchmarks.ladder import Step, with_server_figures
from benchmarks.report import steps_table

BEFORE = """\
# HELP convzoo_process_resident_memory_bytes Resident memory of a worker
# TYPE convzoo_process_resident_memory_bytes gauge
convzoo_process_resident_memory_bytes{pid="11371"} 2.60681728e+08
# HELP bentoml_service_request_in_progress Multiprocess metric
# TYPE bentoml_service_request_in_progress gauge
bentoml_service_request_in_progress{endpoint="/classify",runner_name="convzoo",service_name="convzoo",\
service_version="not available"} 0.0
# HELP convzoo_queue_duration_seconds Time a request waits in the batcher's queue before its batch starts
# TYPE convzoo_queue_duration_seconds histogram
convzoo_queue_duration_seconds_bucket{le="0.001",model="imagenette",version="2"} 3.0
convzoo_queue_duration_seconds_bucket{le="+Inf",model="imagenette",version="2"} 3.0
convzoo_queue_duration_seconds_sum{model="imagenette",version="2"} 7.699399975535925e-05
convzoo_queue_duration_seconds_count{model="imagenette",version="2"} 3.0
# HELP convzoo_batch_size Images per model call
# TYPE convzoo_batch_size histogram
convzoo_batch_size_bucket{le="1.0",model="imagenette",version="2"} 3.0
convzoo_batch_size_bucket{le="+Inf",model="imagenette",version="2"} 3.0
convzoo_batch_size_sum{model="imagenette",version="2"} 3.0
convzoo_batch_size_count{model="imagenette",version="2"} 3.0
# HELP convzoo_inference_duration_seconds One model call (a batch)
# TYPE convzoo_inference_duration_seconds histogram
convzoo_inference_duration_seconds_bucket{le="0.01",model="imagenette",runtime="openvino-int8",version="2"} 3.0
convzoo_inference_duration_seconds_bucket{le="+Inf",model="imagenette",runtime="openvino-int8",version="2"} 3.0
convzoo_inference_duration_seconds_sum{model="imagenette",runtime="openvino-int8",version="2"} 0.0173792699997648
convzoo_inference_duration_seconds_count{model="imagenette",runtime="openvino-int8",version="2"} 3.0
# HELP convzoo_requests_total Requests that reached an API
# TYPE convzoo_requests_total counter
convzoo_requests_total{model="imagenette",outcome="ok",protocol="convzoo",version="2"} 3.0
"""

AFTER = """\
# HELP convzoo_process_resident_memory_bytes Resident memory of a worker
# TYPE convzoo_process_resident_memory_bytes gauge
convzoo_process_resident_memory_bytes{pid="11371"} 2.70532608e+08
convzoo_process_resident_memory_bytes{pid="11372"} 3.145728e+08
# HELP convzoo_queue_duration_seconds Time a request waits in the batcher's queue before its batch starts
# TYPE convzoo_queue_duration_seconds histogram
convzoo_queue_duration_seconds_bucket{le="0.001",model="imagenette",version="2"} 50.0
convzoo_queue_duration_seconds_bucket{le="+Inf",model="imagenette",version="2"} 103.0
convzoo_queue_duration_seconds_sum{model="imagenette",version="2"} 0.40007699399975535
convzoo_queue_duration_seconds_count{model="imagenette",version="2"} 103.0
convzoo_queue_duration_seconds_sum{model="imagenette",version="3"} 0.1
convzoo_queue_duration_seconds_count{model="imagenette",version="3"} 100.0
# HELP convzoo_batch_size Images per model call
# TYPE convzoo_batch_size histogram
convzoo_batch_size_bucket{le="1.0",model="imagenette",version="2"} 3.0
convzoo_batch_size_bucket{le="+Inf",model="imagenette",version="2"} 53.0
convzoo_batch_size_sum{model="imagenette",version="2"} 203.0
convzoo_batch_size_count{model="imagenette",version="2"} 53.0
# HELP convzoo_inference_duration_seconds One model call (a batch)
# TYPE convzoo_inference_duration_seconds histogram
convzoo_inference_duration_seconds_bucket{le="0.01",model="imagenette",runtime="openvino-int8",version="2"} 3.0
convzoo_inference_duration_seconds_bucket{le="+Inf",model="imagenette",runtime="openvino-int8",version="2"} 53.0
convzoo_inference_duration_seconds_sum{model="imagenette",runtime="openvino-int8",version="2"} 1.0173792699997648
convzoo_inference_duration_seconds_count{model="imagenette",runtime="openvino-int8",version="2"} 53.0
"""


def test_parse_keeps_every_sample_with_its_labels():
    snapshot = server_metrics.parse(BEFORE)
    assert snapshot.has_convzoo()
    assert snapshot.total("convzoo_queue_duration_seconds_count") == 3
    assert snapshot.total("convzoo_requests_total") == 3  # a counter keeps its _total
    assert snapshot.by_label("convzoo_process_resident_memory_bytes", "pid") == {"11371": 260681728.0}
    assert snapshot.total("no_such_metric") == 0
    assert not server_metrics.parse("# TYPE up gauge\nup 1\n").has_convzoo()


def test_between_gives_means_from_the_deltas():
    figures = server_metrics.between(server_metrics.parse(BEFORE), server_metrics.parse(AFTER))
    # queue: (0.40008 - 0.000077 + 0.1) s over (103 - 3 + 100) requests, both versions summed
    assert figures.queue_ms == pytest.approx(1000 * 0.5 / 200)
    assert figures.inference_ms == pytest.approx(1000 * 1.0 / 50)  # per model call
    assert figures.batch_size == pytest.approx(200 / 50)
    assert figures.batches == 50
    assert figures.rss_mib == pytest.approx(3.145728e8 / 2**20)  # the largest worker, after
    assert server_metrics.between(None, server_metrics.parse(AFTER)) is None


def test_a_step_without_batches_has_empty_means():
    same = server_metrics.parse(BEFORE)
    figures = server_metrics.between(same, same)
    assert math.isnan(figures.queue_ms) and math.isnan(figures.batch_size)
    step = with_server_figures(Step("bentoml", 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), figures)
    assert step.queue_ms is None and step.batch_size is None
    assert step.rss_mib == pytest.approx(260681728 / 2**20)


def test_the_table_shows_server_figures_and_leaves_peers_empty():
    served = with_server_figures(
        Step("bentoml", 4, 10, 100, 0, 10, 10, 20, 30, 40, 22),
        server_metrics.between(server_metrics.parse(BEFORE), server_metrics.parse(AFTER)),
    )
    peer = with_server_figures(Step("fastapi", 4, 10, 100, 0, 10, 10, 20, 30, 40, 22), None)
    header, _, served_row = steps_table([served]).splitlines()
    assert "| queue ms | inference ms/batch | batch size | worker RSS MiB |" in header
    assert served_row.endswith("| 2.5 | 20.0 | 4.00 | 300 |")
    assert steps_table([peer]).splitlines()[2].endswith("| 40 |  |  |  |  |")


class _Metrics(BaseHTTPRequestHandler):
    body = AFTER.encode()

    def do_GET(self):
        status = 200 if self.path == "/metrics" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(self.body if status == 200 else b"not found")

    def log_message(self, *_):
        pass


def test_read_fetches_and_refuses_what_is_not_convzoo():
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{http.server_port}"
        assert server_metrics.read(url).total("convzoo_batch_size_count") == 53
        _Metrics.body = b"# TYPE up gauge\nup 1\n"
        assert server_metrics.read(url) is None  # a peer's /metrics without convzoo's
        assert server_metrics.read(url + "/nothing-here") is None  # 404
    finally:
        _Metrics.body = AFTER.encode()
        http.shutdown()
    assert server_metrics.read("http://127.0.0.1:9", timeout=1) is None  # nothing listening


def test_soak_records_and_plots_worker_memory(tmp_path):
    """The soak's memory curve: samples by pid from /metrics, the report's line, the plot."""
    from PIL import Image

    from benchmarks import reliability

    http = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        samples = reliability.worker_memory(f"http://127.0.0.1:{http.server_port}", 5.0)
    finally:
        http.shutdown()
    assert samples == [(5.0, "11371", pytest.approx(258.0, abs=0.1)), (5.0, "11372", 300.0)]
    workers = samples + [(65.0, "11371", 260.0), (125.0, "11371", 261.0)]
    line = reliability.memory_line(workers)
    assert "pid 11371: 258 MiB at 0.1 min, 261 MiB at 2.1 min (max 261)" in line
    assert "pid 11372: 300 MiB" in line
    assert "none read" in reliability.memory_line([])
    log = tmp_path / "soak_requests.csv"
    log.write_text("start_s,latency_ms,ok\n" + "".join(f"{1000 + i},{20 + i % 7},1\n" for i in range(150)))
    reliability.plot_soak(tmp_path / "soak.png", log, workers, "soak", 2)
    with Image.open(tmp_path / "soak.png") as plot:
        assert plot.format == "PNG" and plot.width > 600
