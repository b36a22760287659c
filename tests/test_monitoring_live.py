"""Watch it run: a real ``bentoml serve``, a real Prometheus scraping it every second with the
repository's own rule files (deploy/prometheus/recording-rules.yml and alerting-rules.yml, loaded
as they are: 1-minute windows), a real Locust load, then a forced fault.

1. Clean run: 4 paced Locust users (``benchmarks/soak_locustfile.py``, 4 requests/s each, one
   photo per request) for ~66 s. Locust records every request (start time, latency, ok).
2. The recording rules agree with Locust over the same window, the minute that ends at the last
   full second of the run (the rules' ``[1m]`` window):

   - images/s: ``model:convzoo_images:rate1m`` and ``job:convzoo_images:rate1m`` against the
     successful Locust requests started in that minute x images per request (1), within 15 %;
   - latency: Locust measures on the client, so its latency also holds the HTTP path and the
     client's own time (its socket and event loop, BentoML's ASGI stack and the multipart parsing
     before the handler starts, the answer's way back), while ``convzoo_request_duration_seconds``
     starts in the handler: ``model:convzoo_request_duration_seconds:p50_1m`` is systematically
     lower than Locust's p50 (by 25-30 %: seen 16.6 vs 22.3 ms on a quiet machine, 39.3 vs
     50.1 ms with another benchmark on the same 2 CPUs). So like is compared with like, each
     within 15 %:

     * means, exact (``rate(_sum) / rate(_count)``, no buckets): BentoML's own
       ``bentoml_service_request_duration_seconds`` (its HTTP middleware: the whole server-side
       request) against Locust's mean; what remains between them is the client's share, a time of
       its own rather than a share (Locust's client, the TCP round trip, the CPU waking between
       paced requests), so this one is within 15 % plus ``CLIENT_MS``: on a 2-core Sapphire
       Rapids, where a request took 12 ms, it was 1.8-2.0 ms, 15-17 % of it;
     * p50: BentoML's p50 against Locust's latencies less that client share, as Prometheus would
       estimate their p50 from the same buckets (``histogram_quantile``'s interpolation applied
       to them: BentoML's buckets are coarse, 10-25 and 25-50 ms are one bucket each, so the
       share is taken off before the bucketing: two sets of latencies on either side of a bucket
       bound would otherwise differ by the interpolation, 12.1 against 15.5 ms for 10 and 12 ms
       requests);
     * and convzoo's p50 lies between half of Locust's (in convzoo's buckets) and 15 % above it:
       the handler is most of a request, never more than all of it.

     The raw pair (BentoML p50 vs Locust p50, same buckets) is printed but not asserted: it was
     within 8 % on a quiet machine and 16.5 % off with the other benchmark running, where the
     client's share grew to 6.7 ms. Every figure is printed (``-s``) and kept in the test's
     ``figures.json``.
3. No alert fires during the clean run (``/api/v1/alerts`` polled throughout).
4. Forced faults: a burst of bad uploads (text files named .jpg, 20/s to ``/classify``, which the
   service answers 400 ``invalid_image``) until ``ConvzooHighErrorRatio`` is ``firing`` in
   Prometheus' own ``/api/v1/alerts`` (~45 s: the 1m ratio passes 20 % after ~12 s, then 30 s
   ``for``); a few requests of the wrong media type (415, guard refusals) and a corrupt version 3
   in the repository (refused by the watcher: ``ConvzooModelVersionRefused`` fires) so that every
   Grafana panel has something to show.
5. Every Grafana panel expression (``dashboard_expressions()``) is valid on this Prometheus and
   returns data.

With ``CONVZOO_MONITORING_PLOT=path.png`` the test saves a plot of images/s, p50 and p95 read back
from Prometheus (``/api/v1/query_range``); ``python tests/test_monitoring_live.py --plot
docs/monitoring.png`` runs this test to regenerate the README's figure. About 2 minutes; skipped
without the ``prometheus`` binary (Debian: ``apt-get install prometheus``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from helpers import PROMETHEUS, REPO, RULE_FILES, Server, dashboard_expressions, free_port

PROMETHEUS_BIN = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS_BIN is None,
    reason="the prometheus binary is not installed (Debian: apt-get install prometheus)",
)

LOCUST = Path(sys.executable).with_name("locust")
SOAK_LOCUSTFILE = REPO / "benchmarks" / "soak_locustfile.py"
MODEL = "imagenette"
USERS = 4
USER_RPS = 4.0
CLEAN_S = 66  # the compared minute starts >= 5 s after the first request
WINDOW_S = 60  # the rules' [1m]
IMAGES_PER_REQUEST = 1
BAD_PER_S = 20
FAULT_DEADLINE_S = 100
TOLERANCE = 0.15
HANDLER_SHARE = 0.5  # convzoo_request_duration_seconds' p50 is at least this share of Locust's
CLIENT_MS = 1.0  # what the client's share of a mean may take beyond TOLERANCE (module docstring, 2)
PLOT_ENV = "CONVZOO_MONITORING_PLOT"
BENTOML_P50 = (
    "histogram_quantile(0.5, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket"
    '{endpoint="/classify", http_response_code="200"}[1m])))'
)

BENTOML_OK = '{endpoint="/classify", http_response_code="200"}'
BENTOML_MEAN = (
    f"sum(rate(bentoml_service_request_duration_seconds_sum{BENTOML_OK}[1m]))"
    f" / sum(rate(bentoml_service_request_duration_seconds_count{BENTOML_OK}[1m]))"
)
CONVZOO_MEAN = (
    f'sum(rate(convzoo_request_duration_seconds_sum{{model="{MODEL}"}}[1m]))'
    f' / sum(rate(convzoo_request_duration_seconds_count{{model="{MODEL}"}}[1m]))'
)


def latency_disagreements(figures: dict) -> list[str]:
    """What does not hold of the latency figures (module docstring, 2)."""
    problems = []

    def within(name: str, found: float, expected: float, rel: float, slack_ms: float = 0.0) -> None:
        if abs(found - expected) > rel * expected + slack_ms:
            beyond = f"{rel:.0%}" + (f" + {slack_ms:g} ms" if slack_ms else "")
            problems.append(f"{name}: {found:.1f} vs {expected:.1f} ms, beyond {beyond}")

    within(
        "BentoML mean vs Locust mean",
        figures["bentoml_mean_ms"],
        figures["locust_mean_ms"],
        TOLERANCE,
        slack_ms=CLIENT_MS,
    )
    within(
        "BentoML p50 vs Locust's latencies less the client's share, p50 in the same buckets",
        figures["bentoml_p50_ms"],
        figures["locust_less_client_p50_in_bentoml_buckets_ms"],
        TOLERANCE,
    )
    client = figures["locust_p50_in_convzoo_buckets_ms"]
    if not HANDLER_SHARE * client <= figures["convzoo_p50_ms"] <= (1 + TOLERANCE) * client:
        problems.append(f"convzoo p50 {figures['convzoo_p50_ms']:.1f} ms vs Locust's {client:.1f} ms")
    return problems


class PrometheusAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params) -> dict:
        answer = requests.get(f"{self.base}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def value(self, query: str, at: float) -> float | None:
        result = self.get("query", query=query, time=f"{at:.3f}")["result"]
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.get("alerts")["alerts"] if a["state"] == "firing"}

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.base}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False


def bucket_quantile(q: float, values: list[float], bounds: list[float]) -> float:
    """``histogram_quantile`` as Prometheus computes it (linear inside the bucket) on ``values``
    counted into buckets with upper bounds ``bounds``: what Prometheus would say of them."""
    counts = [sum(1 for v in values if v <= bound) for bound in bounds]
    rank = q * len(values)
    lower, below = 0.0, 0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1)
        lower, below = bound, cumulative
    return bounds[-1]


def buckets_of(api: PrometheusAPI, metric: str, selector: str = "") -> list[float]:
    series = api.get("series", **{"match[]": f"{metric}_bucket{{{selector}}}"})
    return sorted({float(s["le"]) for s in series if s["le"] != "+Inf"})


def read_records(path: Path) -> list[tuple[float, float, bool]]:
    """Locust's requests: (start time, epoch s; latency, s; ok)."""
    with path.open(newline="") as handle:
        return [
            (float(r["start_s"]), float(r["latency_ms"]) / 1000, r["ok"] == "1")
            for r in csv.DictReader(handle)
        ]


@pytest.fixture
def photos() -> list[Path]:
    """The real photos of ../shared/data/photos-varied, else generated photo-like JPEGs."""
    from benchmarks.images import image_set

    return list(image_set("photos").paths)[::8]


@pytest.fixture
def models_dir(tmp_path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(REPO / "models" / MODEL / "2", root / MODEL / "2")
    return root


def start_prometheus(tmp_path: Path, target: str, port: int) -> subprocess.Popen:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in RULE_FILES]  # the repository's files, as they are
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    return subprocess.Popen(
        [
            PROMETHEUS_BIN,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def put_corrupt_version(models_dir: Path) -> None:
    """Version 3: a copy of 2 with its graph truncated (checksum mismatch), renamed into place."""
    staging = models_dir / ".staging-3"
    shutil.copytree(models_dir / MODEL / "2", staging)
    graph = staging / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:1000])
    staging.rename(models_dir / MODEL / "3")


def test_prometheus_watches_a_real_service(tmp_path, bentoml_home, models_dir, photos):
    env = {
        **os.environ,
        "CONVZOO_MODEL": MODEL,
        "CONVZOO_MODELS_DIR": str(models_dir),
        "CONVZOO_POLL_S": "1",
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("CONVZOO_API_KEY", None)
    prometheus = None
    server = Server.started([], env, tmp_path / "serve.log")
    try:
        port = free_port()
        prometheus = start_prometheus(tmp_path, f"127.0.0.1:{server.port}", port)
        api = PrometheusAPI(port)
        deadline = time.monotonic() + 30
        while not api.ready():
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus not ready after 30 s"
            time.sleep(0.5)
        started = time.time()
        for path in photos[:8]:  # warm-up, before the measured load
            assert requests.post(f"{server.url}/classify", files={"images": path.open("rb")}, timeout=30).ok

        # 1. the clean run
        log = tmp_path / "locust_requests.csv"
        locust = subprocess.Popen(
            [str(LOCUST), "-f", str(SOAK_LOCUSTFILE), "--headless", "--host", server.url]
            + ["-u", str(USERS), "-r", str(USERS), "-t", f"{CLEAN_S}s", "--only-summary"]
            + ["--exit-code-on-error", "0"],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "CONVZOO_BENCH_IMAGES": os.pathsep.join(map(str, photos)),
                "CONVZOO_SOAK_USER_RPS": str(USER_RPS),
                "CONVZOO_SOAK_LOG": str(log),
            },
            cwd=REPO,
            stdout=(tmp_path / "locust.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        fired_while_clean: dict[float, set[str]] = {}
        while locust.poll() is None:
            if firing := api.firing():
                fired_while_clean[time.time()] = firing
            time.sleep(3)
        assert locust.returncode == 0, (tmp_path / "locust.log").read_text()[-2000:]
        records = read_records(log)
        clean_end = time.time()
        if firing := api.firing():
            fired_while_clean[clean_end] = firing

        # 2. the rules against Locust, over the last full minute of the run
        at = float(int(max(start for start, _, _ in records)))
        first = min(start for start, _, _ in records)
        assert at - WINDOW_S >= first + 3, "the clean run is too short for a full minute"
        window = [(lat, ok) for start, lat, ok in records if at - WINDOW_S <= start < at]
        locust_images_s = sum(ok for _, ok in window) * IMAGES_PER_REQUEST / WINDOW_S
        latencies = sorted(lat for lat, ok in window if ok)
        locust_p50 = statistics.median(latencies)
        convzoo_bounds = buckets_of(api, "convzoo_request_duration_seconds")
        bentoml_bounds = buckets_of(api, "bentoml_service_request_duration_seconds", 'endpoint="/classify"')
        bentoml_mean_s = api.value(BENTOML_MEAN, at) or 0
        client_share_s = statistics.fmean(latencies) - bentoml_mean_s
        figures = {
            "window": [at - WINDOW_S, at],
            "locust_requests": len(window),
            "locust_failures": sum(not ok for _, ok in window),
            "locust_images_per_s": locust_images_s,
            "model_images_per_s": api.value(f'model:convzoo_images:rate1m{{model="{MODEL}"}}', at),
            "job_images_per_s": api.value('job:convzoo_images:rate1m{job="convzoo"}', at),
            "locust_p50_ms": 1000 * locust_p50,
            "locust_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
            "locust_p50_in_convzoo_buckets_ms": 1000 * bucket_quantile(0.5, latencies, convzoo_bounds),
            "locust_p50_in_bentoml_buckets_ms": 1000 * bucket_quantile(0.5, latencies, bentoml_bounds),
            "convzoo_p50_ms": 1000
            * (api.value(f'model:convzoo_request_duration_seconds:p50_1m{{model="{MODEL}"}}', at) or 0),
            "convzoo_p95_ms": 1000
            * (api.value(f'model:convzoo_request_duration_seconds:p95_1m{{model="{MODEL}"}}', at) or 0),
            "bentoml_p50_ms": 1000 * (api.value(BENTOML_P50, at) or 0),
            "locust_mean_ms": 1000 * statistics.fmean(latencies),
            "bentoml_mean_ms": 1000 * bentoml_mean_s,
            "convzoo_mean_ms": 1000 * (api.value(CONVZOO_MEAN, at) or 0),
            "client_share_ms": 1000 * client_share_s,
            "locust_less_client_p50_in_bentoml_buckets_ms": 1000
            * bucket_quantile(0.5, [lat - client_share_s for lat in latencies], bentoml_bounds),
            "alerts_firing_during_clean_run": {str(t): sorted(n) for t, n in fired_while_clean.items()},
        }
        (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
        print("\nlive monitoring figures:", json.dumps(figures, indent=2))

        assert figures["locust_failures"] == 0
        for rule in ("model_images_per_s", "job_images_per_s"):
            assert figures[rule] == pytest.approx(locust_images_s, rel=TOLERANCE), (rule, figures)
        # latency: checked after the faults and the plot (the plot shows what a failure means)
        latency_problems = latency_disagreements(figures)
        # 3. quiet while clean
        assert not fired_while_clean, fired_while_clean

        # 4. forced faults
        for _ in range(3):  # guard refusals (415): the refusals panel
            answer = requests.post(
                f"{server.url}/classify", data=b"x", headers={"Content-Type": "text/plain"}, timeout=10
            )
            assert answer.status_code == 415, answer.text
        put_corrupt_version(models_dir)
        fault_start = time.time()
        stop_burst = threading.Event()
        statuses: list[int] = []
        burst = threading.Thread(target=bad_uploads, args=(server.url, stop_burst, statuses), daemon=True)
        burst.start()
        try:
            while "ConvzooHighErrorRatio" not in (firing := api.firing()):
                assert time.time() - fault_start < FAULT_DEADLINE_S, f"not firing; firing: {firing}"
                time.sleep(1)
            fired_after_s = time.time() - fault_start
        finally:
            stop_burst.set()
            burst.join(timeout=10)
        fault_end = time.time()
        print(f"ConvzooHighErrorRatio firing {fired_after_s:.0f} s after the burst started; {firing=}")
        assert set(statuses) == {400}, sorted(set(statuses))
        assert "ConvzooModelVersionRefused" in firing, firing
        alert = next(
            a for a in api.get("alerts")["alerts"] if a["labels"]["alertname"] == "ConvzooHighErrorRatio"
        )
        assert alert["state"] == "firing" and alert["labels"]["model"] == MODEL
        assert (
            alert["labels"]["severity"] == "warning" and "of requests fail" in alert["annotations"]["summary"]
        )

        # 5. every dashboard panel, on this Prometheus, has data
        empty = [e for e in dashboard_expressions() if not api.get("query", query=e)["result"]]
        assert not empty, empty
        rules = [r for g in api.get("rules")["groups"] for r in g["rules"]]
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

        if plot_path := os.environ.get(PLOT_ENV):
            plot(api, Path(plot_path), started, clean_end, fault_start, fault_end, figures)
        assert not latency_problems, (latency_problems, figures)
    finally:
        stop(prometheus)
        server.stop()


def bad_uploads(url: str, stop_event: threading.Event, statuses: list[int]) -> None:
    """Text files named .jpg to /classify, BAD_PER_S a second, until ``stop_event``."""
    session = requests.Session()
    due = time.monotonic()
    while not stop_event.is_set():
        answer = session.post(
            f"{url}/classify", files={"images": ("photo.jpg", b"this is not a photo\n" * 20)}, timeout=10
        )
        statuses.append(answer.status_code)
        due += 1 / BAD_PER_S
        stop_event.wait(max(0.0, due - time.monotonic()))


def plot(
    api: PrometheusAPI,
    path: Path,
    start: float,
    clean_end: float,
    fault_start: float,
    end: float,
    figures: dict,
) -> None:
    """images/s, p50 and p95 over the run, from Prometheus (query_range), the fault shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(query: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
        data = api.get("query_range", query=query, start=f"{start:.0f}", end=f"{end:.0f}", step="1")
        if not data["result"]:
            return [], []
        values = data["result"][0]["values"]
        return [(float(t) - start) for t, _ in values], [scale * float(v) for _, v in values]

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.2), dpi=90, sharex=True)
    top.plot(*series(f'model:convzoo_images:rate1m{{model="{MODEL}"}}'), label="images/s (ok), rate 1m")
    top.plot(
        *series(f'model:convzoo_requests:rate1m{{model="{MODEL}"}}'),
        label="requests/s, every outcome",
        alpha=0.7,
    )
    top.axhline(figures["locust_images_per_s"], color="gray", linestyle=":", label="Locust images/s")
    top.set_ylabel("per second")
    bottom.plot(
        *series(f'model:convzoo_request_duration_seconds:p50_1m{{model="{MODEL}"}}', 1000), label="p50"
    )
    bottom.plot(
        *series(f'model:convzoo_request_duration_seconds:p95_1m{{model="{MODEL}"}}', 1000), label="p95"
    )
    bottom.axhline(figures["locust_p50_ms"], color="gray", linestyle=":", label="Locust p50 (client side)")
    bottom.set_ylabel("request latency, ms")
    bottom.set_xlabel("seconds since Prometheus started (1 s scrapes, repository rules)")
    for axes in (top, bottom):
        axes.axvspan(fault_start - start, end - start, color="red", alpha=0.1, label="bad uploads")
        axes.axvline(clean_end - start, color="black", linewidth=0.5)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="upper left")
    top.set_title(
        f"{MODEL}: {USERS} Locust users x {USER_RPS:g} req/s, then bad uploads until "
        "ConvzooHighErrorRatio fires",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    # python tests/test_monitoring_live.py --plot docs/monitoring.png
    if len(sys.argv) == 3 and sys.argv[1] == "--plot":
        os.environ[PLOT_ENV] = str(Path(sys.argv[2]).resolve())
        sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
    sys.exit("usage: python tests/test_monitoring_live.py --plot PATH.png")
