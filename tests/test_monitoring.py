"""Monitoring files, checked offline without a running service: the Prometheus configs, the
recording and alerting rules (promtool check + promtool's own unit tests, deploy/prometheus/tests/),
the Grafana dashboard's queries, the Prometheus-operator copies for Kubernetes, and that every
metric they name is in the service's /metrics contract, deploy/prometheus/metrics.txt.

promtool comes with Debian's `prometheus` package (.ci/run installs it); without it those tests
skip. `python tests/test_monitoring.py` rewrites deploy/kubernetes/monitoring/prometheusrule.yaml
from the two rule files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import (
    DASHBOARD,
    PROMETHEUS,
    RULE_FILES,
    contract,
    dashboard_expressions,
    dashboard_panels,
)

REPO = Path(__file__).resolve().parents[1]
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
KUBERNETES = REPO / "deploy" / "kubernetes"
PROMETHEUSRULE = KUBERNETES / "monitoring" / "prometheusrule.yaml"
PODMONITOR = KUBERNETES / "monitoring" / "podmonitor.yaml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (Debian: apt-get install prometheus; .ci/run does)"
)

BUILTIN_SERIES = {"up", "ALERTS"}
"""Series Prometheus itself makes (the scrape's up, the firing alerts), allowed beside the contract."""
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip


# --- the contract -------------------------------------------------------------------------------


def series_names() -> set[str]:
    """Every series name the contract's metrics export (a histogram's _bucket, _sum, _count)."""
    names = set()
    for name, metric in contract().items():
        if metric["type"] == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not inside a string or a
    label matcher, not a grouping clause's labels, not a function (followed by "("), not a keyword
    and not part of a number or duration."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", text)
    return {name for name in found if name.lower() not in PROMQL_WORDS}


# --- what consumes it ---------------------------------------------------------------------------


def rule_groups(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def rules(path: Path) -> list[dict]:
    return [rule for group in rule_groups(path) for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules(RULE_FILES[0])}


def alerts() -> list[dict]:
    return rules(RULE_FILES[1])


def prometheusrule_text() -> str:
    """deploy/kubernetes/monitoring/prometheusrule.yaml: the two rule files' groups, verbatim."""
    header = (
        "# Needs the Prometheus operator (its CRDs, monitoring.coreos.com/v1): not core Kubernetes, hence\n"
        "# this folder, which tests/test_deploy.py does not validate against the core schemas.\n"
        "#\n"
        "# GENERATED from deploy/prometheus/recording-rules.yml and alerting-rules.yml by\n"
        "# `python tests/test_monitoring.py`; tests/test_monitoring.py fails when they differ. Your\n"
        "# Prometheus resource must select it (ruleSelector; kube-prometheus-stack: the release label).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: convzoo\n"
        "  labels: {app.kubernetes.io/name: convzoo}\n"
        "spec:\n"
        "  groups:\n"
    )
    body = []
    for path in RULE_FILES:
        text = path.read_text()
        groups = text[text.index("groups:\n") + len("groups:\n") :]
        body.append(f"    # {path.relative_to(REPO)}\n")
        body.extend(f"  {line}".rstrip() + "\n" for line in groups.splitlines())
    return header + "".join(body)


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


# --- the contract file --------------------------------------------------------------------------


def test_contract_is_well_formed():
    metrics = contract()
    assert len(metrics) >= 16
    for name, metric in metrics.items():
        assert re.fullmatch(r"convzoo_[a-z0-9_]+", name), name
        assert metric["type"] in {"counter", "gauge", "histogram"}, name
        assert name.endswith("_total") == (metric["type"] == "counter"), name
        assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", label) for label in metric["labels"]), name
        assert metric["help"], name
    assert metrics["convzoo_requests_total"]["labels"] == ["model", "version", "protocol", "outcome"]
    assert metrics["convzoo_model_info"]["labels"] == [
        "model", "version", "runtime", "precision", "architecture", "default",
    ]  # fmt: skip


def test_metric_names_parse():
    """The name check below is real: it finds names, and only names."""
    assert metric_names('sum by (model, le) (rate(convzoo_images_total{outcome="ok"}[1m] offset 5m))') == {
        "convzoo_images_total"
    }
    assert metric_names("model:convzoo_images:rate1m / (model:convzoo_images:rate1m offset 10m) - 1e3") == {
        "model:convzoo_images:rate1m"
    }
    assert metric_names('absent(convzoo_modle_info == 1) or max(up{job="x"}) == 0') == {
        "convzoo_modle_info",
        "up",
    }
    assert "convzoo_modle_info" not in series_names()


def _used_names() -> dict[str, set[str]]:
    used = {}
    for path in RULE_FILES:
        for rule in rules(path):
            used[f"{path.name}: {rule.get('record') or rule.get('alert')}"] = metric_names(rule["expr"])
    for index, expr in enumerate(dashboard_expressions()):
        used[f"dashboard query {index}: {expr}"] = metric_names(expr)
    return used


def test_every_metric_used_is_in_the_contract():
    """The rules, alerts and dashboard name only metrics of metrics.txt (and Prometheus' own up and
    ALERTS); a name with a colon is one of the recording rules."""
    known = series_names() | BUILTIN_SERIES
    recorded = recorded_names()
    unknown = {
        where: sorted(name for name in names if name not in (recorded if ":" in name else known))
        for where, names in _used_names().items()
    }
    assert not {where: names for where, names in unknown.items() if names}
    assert all(_used_names().values()), "an expression without a metric: the parser is broken"


def test_every_contract_metric_is_watched():
    """Each metric of the contract appears in the rules or on the dashboard (nothing exported for
    nobody)."""
    used = set().union(*_used_names().values())
    for name, metric in contract().items():
        exported = (
            {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if metric["type"] == "histogram" else {name}
        )
        assert exported & used, f"{name} is neither in a rule nor on the dashboard"


# --- Prometheus ---------------------------------------------------------------------------------


def test_local_config_scrapes_the_service():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "convzoo"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["localhost:3000"]}]
    assert config["global"]["scrape_interval"] == "5s"
    assert [PROMETHEUS / name for name in config["rule_files"]] == RULE_FILES
    assert "# authorization: {credentials_file:" in (PROMETHEUS / "prometheus.yml").read_text()


@needs_promtool
def test_promtool_checks_the_local_config():
    result = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert_ok(result)
    assert "SUCCESS: 2 rule files found" in result.stdout


@needs_promtool
def test_promtool_checks_the_kubernetes_config(tmp_path):
    """kubernetes-scrape.yml as it is where promtool knows Kubernetes discovery; Debian's promtool is
    built without it, so there the same config with static targets in its place (its relabelings,
    rule files and the rest are still checked)."""
    result = promtool("check", "config", "deploy/prometheus/kubernetes-scrape.yml")
    if "kubernetes_sd_configs not found" not in result.stdout + result.stderr:
        assert_ok(result)
        return
    config = yaml.safe_load((PROMETHEUS / "kubernetes-scrape.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["10.0.0.1:8080"]}]
    for path in RULE_FILES:
        shutil.copy(path, tmp_path)
    (tmp_path / "kubernetes-scrape.yml").write_text(yaml.safe_dump(config))
    assert_ok(promtool("check", "config", str(tmp_path / "kubernetes-scrape.yml")))


def test_kubernetes_config_follows_the_annotations():
    config = yaml.safe_load((PROMETHEUS / "kubernetes-scrape.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "convzoo"
    sources = {tuple(r["source_labels"]) for r in job["relabel_configs"]}
    for annotation in ("scrape", "port", "path"):
        assert any(f"__meta_kubernetes_pod_annotation_prometheus_io_{annotation}" in s for s in sources)
    address = next(r for r in job["relabel_configs"] if r.get("target_label") == "__address__")
    match = re.fullmatch(address["regex"], "10.1.2.3:8080;3000")
    assert match and match.expand(address["replacement"].replace("$", "\\")) == "10.1.2.3:3000"
    annotations = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "3000",
        "prometheus.io/path": "/metrics",
    }


@needs_promtool
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_checks_the_rules(path):
    result = promtool("check", "rules", str(path))
    assert_ok(result)
    assert f"SUCCESS: {len(rules(path))} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    assert len(RULE_TESTS) >= 2
    result = promtool("test", "rules", *(str(path) for path in RULE_TESTS))
    assert_ok(result)
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@needs_promtool
def test_promtool_checks_are_real(tmp_path):
    """A broken rule fails `promtool check rules`; a wrong expected value fails `promtool test rules`."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: broken\n    rules:\n"
        "      - record: model:convzoo_images:rate1m\n"
        "        expr: sum by (model) (rate(convzoo_images_total[1m])\n"  # a parenthesis short
    )
    assert promtool("check", "rules", str(broken)).returncode != 0
    test = (PROMETHEUS / "tests" / "recording.yml").read_text()
    assert "value: 0.0175}" in test
    wrong = tmp_path / "wrong.yml"
    wrong.write_text(
        test.replace("value: 0.0175}", "value: 0.0176}").replace("../recording-rules.yml", str(RULE_FILES[0]))
    )
    result = promtool("test", "rules", str(wrong))
    assert result.returncode != 0
    assert "p50_1m" in result.stdout + result.stderr


def _cases() -> list[dict]:
    return [
        {**case, "interval": test.get("interval")}
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_is_tested_both_ways(alert):
    """deploy/prometheus/tests/ has a case where the alert fires and one where it stays quiet."""
    cases = [case for case in _cases() if case["alertname"] == alert["alert"]]
    assert any(case["exp_alerts"] for case in cases), f"{alert['alert']} never expected to fire"
    assert any(not case["exp_alerts"] for case in cases), f"{alert['alert']} never expected quiet"


def test_every_recording_rule_is_tested():
    exprs = [
        case["expr"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("promql_expr_test", [])
    ]
    for name in recorded_names():
        assert any(name in metric_names(expr) for expr in exprs), f"{name} has no promql_expr_test"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_says_what_and_how_bad(alert):
    assert alert["alert"].startswith("Convzoo")
    assert alert["labels"]["severity"] in {"critical", "warning"}
    assert {"summary", "description"} <= alert["annotations"].keys()
    assert "{{" in alert["annotations"]["summary"] + alert["annotations"]["description"] or alert[
        "alert"
    ] in {
        "ConvzooNoModelReady"  # one alert for the whole service: no label, no value worth saying
    }


def test_error_ratio_alert_fires_on_bad_uploads_quickly():
    """The issue's forced fault (a burst of bad uploads, 4xx) fires the error-ratio alert, within a
    live test's ~90 s: it counts client outcomes and waits only 30 s."""
    (alert,) = [a for a in alerts() if a["alert"] == "ConvzooHighErrorRatio"]
    assert "model:convzoo_request_refusals:ratio_1m" in alert["expr"]
    assert alert["for"] == "30s"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["global"]["evaluation_interval"] == "5s"


# --- Grafana ------------------------------------------------------------------------------------


def test_dashboard_shape():
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["model"]["query"]["query"] == "label_values(convzoo_model_info, model)"
    assert variables["model"]["allValue"] == ".*"
    titles = " | ".join(panel["title"] for panel in dashboard_panels()).lower()
    for needed in ("throughput", "latency", "queue vs inference", "batch size", "errors", "in flight",
                   "memory per worker", "model versions", "loads"):  # fmt: skip
        assert needed in titles, needed
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]
    assert len({panel["id"] for panel in dashboard_panels()}) == len(dashboard_panels())
    exprs = [t["expr"] for panel in dashboard_panels() for t in panel["targets"]]
    assert all('model=~"$model"' in e for e in exprs if "model" in e and "convzoo_process" not in e)


def test_dashboard_expressions_are_substituted():
    exprs = dashboard_expressions()
    assert len(exprs) >= 15
    assert not [e for e in exprs if "$" in e]


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every panel query, as a recording rule, passes `promtool check rules` (syntax, offline)."""
    rule_file = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query:{i}", "expr": e}
                    for i, e in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rule_file))
    result = promtool("check", "rules", str(path))
    assert_ok(result)
    assert f"SUCCESS: {len(dashboard_expressions())} rules found" in result.stdout
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "rate(x[1m]"}]}]})
    )
    assert promtool("check", "rules", str(path)).returncode != 0


# --- Kubernetes (Prometheus operator) -----------------------------------------------------------


def test_prometheusrule_holds_the_rule_files():
    """The PrometheusRule's groups are exactly the two rule files' (python tests/test_monitoring.py
    rewrites it)."""
    document = yaml.safe_load(PROMETHEUSRULE.read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    assert document["spec"]["groups"] == [group for path in RULE_FILES for group in rule_groups(path)]
    assert PROMETHEUSRULE.read_text() == prometheusrule_text(), "run: python tests/test_monitoring.py"


def test_podmonitor_scrapes_the_pods_by_port_name():
    monitor = yaml.safe_load(PODMONITOR.read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "convzoo"}
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"  # job="convzoo", as the alerts say
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    assert endpoint["authorization"]["credentials"] == {
        "name": secret["metadata"]["name"],
        "key": next(iter(secret["stringData"])),
    }
    for path in (KUBERNETES / "deployment.yaml", KUBERNETES / "deployment-gpu.yaml"):
        pod = yaml.safe_load(path.read_text())["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "convzoo"
        (container,) = pod["spec"]["containers"]
        assert endpoint["port"] in [port["name"] for port in container["ports"]], path.name


def test_operator_files_stay_out_of_the_core_schema_check():
    """tests/test_deploy.py validates deploy/kubernetes/*.yaml against core schemas only."""
    assert {PODMONITOR.parent, PROMETHEUSRULE.parent} == {KUBERNETES / "monitoring"}
    for path in (PODMONITOR, PROMETHEUSRULE):
        assert path.read_text().startswith("# Needs the Prometheus operator")


if __name__ == "__main__":
    PROMETHEUSRULE.write_text(prometheusrule_text())
    print(f"wrote {PROMETHEUSRULE.relative_to(REPO)}", file=sys.stderr)


# --- a real Prometheus on a fake exporter (~10 s) --------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_exporter(port: int, stop):
    """Every metric of the contract, from prometheus_client, as the service exports them: model m
    answers 20 requests a second, one in 8 an invalid image and one in 8 a server error."""
    import threading

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import metrics as kinds

    registry = CollectorRegistry()
    made = {}
    for name, metric in contract().items():
        kind = {"counter": kinds.Counter, "gauge": kinds.Gauge, "histogram": kinds.Histogram}[metric["type"]]
        extra = (
            {"buckets": [1, 2, 4, 8, 16, 32]}
            if name in {"convzoo_batch_size", "convzoo_request_images"}
            else {}
        )
        made[name] = kind(
            name.removesuffix("_total"), metric["help"], metric["labels"], registry=registry, **extra
        )
    made["convzoo_model_info"].labels("m", "2", "tensorflow", "fp32", "resnet18", "true").set(1)
    made["convzoo_model_info"].labels("m", "1", "tensorflow", "fp32", "resnet18", "false").set(0)
    made["convzoo_model_loads_total"].labels("m", "3", "refused").inc()
    http = start_http_server(port, addr="127.0.0.1", registry=registry)  # (server, thread) since 0.20

    def run():
        step = 0
        while not stop.is_set():
            step += 1
            outcome = {0: "invalid_image", 1: "error"}.get(step % 8, "ok")
            made["convzoo_requests_total"].labels("m", "2", "convzoo", outcome).inc()
            made["convzoo_images_total"].labels("m", "2", outcome).inc(2)
            if outcome == "ok":
                made["convzoo_request_duration_seconds"].labels("m", "2", "convzoo").observe(
                    0.02 + step % 5 / 100
                )
            made["convzoo_decode_duration_seconds"].labels("m").observe(0.003)
            made["convzoo_queue_duration_seconds"].labels("m", "2").observe(0.005)
            made["convzoo_inference_duration_seconds"].labels("m", "2", "tensorflow").observe(0.02)
            made["convzoo_batch_size"].labels("m", "2").observe(4)
            made["convzoo_request_images"].labels("m", "2").observe(2)
            made["convzoo_in_flight_requests"].labels("m", "2").set(step % 3)
            made["convzoo_http_refusals_total"].labels("413", "body_too_large").inc(0.1)
            made["convzoo_process_resident_memory_bytes"].labels("7").set(5e8)
            made["convzoo_process_open_fds"].labels("7").set(30)
            made["convzoo_process_threads"].labels("7").set(12)
            made["convzoo_process_cpu_seconds_total"].inc(0.01)
            stop.wait(0.05)

    threading.Thread(target=run, daemon=True).start()
    return http[0] if isinstance(http, tuple) else None


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not found (Debian: apt-get install prometheus)"
)
def test_rules_and_dashboard_run_on_a_real_prometheus(tmp_path):
    """Beyond syntax: a real Prometheus scraping a fake exporter of the contract evaluates every rule
    without an error, every dashboard query returns data, and the error-ratio alert goes off (25%
    of the fake requests fail)."""
    import threading
    import time
    import urllib.parse
    import urllib.request

    pytest.importorskip("prometheus_client")
    exporter, web = _free_port(), _free_port()
    stop = threading.Event()
    http = _fake_exporter(exporter, stop)
    config = (PROMETHEUS / "prometheus.yml").read_text()
    config = config.replace("localhost:3000", f"127.0.0.1:{exporter}").replace(": 5s", ": 1s")
    (tmp_path / "prometheus.yml").write_text(config)
    for path in RULE_FILES:
        shutil.copy(path, tmp_path)
    command = [
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{web}",
    ]
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)

    def api(path: str, **params) -> dict:
        url = f"http://127.0.0.1:{web}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)["data"]

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                empty = [e for e in dashboard_expressions() if not api("query", query=e)["result"]]
                states = {r["name"]: r.get("state") for g in api("rules")["groups"] for r in g["rules"]}
            except OSError:
                empty, states = ["(not up yet)"], {}
            if not empty and states.get("ConvzooHighErrorRatio") in {"pending", "firing"}:
                break
            assert time.monotonic() < deadline, f"no data for {empty}; alerts {states}"
            time.sleep(2)
        rules_ = [r for g in api("rules")["groups"] for r in g["rules"]]
        assert len(rules_) == sum(len(rules(path)) for path in RULE_FILES)
        assert [(r["name"], r.get("lastError")) for r in rules_ if r["health"] != "ok"] == []
        for name in recorded_names():
            assert api("query", query=name)["result"], f"{name} recorded nothing"
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
        log.close()
        if http is not None:
            http.shutdown()


# --- the one command: deploy/prometheus/run.sh (`make prometheus`) --------------------------------


def test_the_documented_prometheus_commands_listen_on_localhost_only():
    """Every command line that starts Prometheus binds 127.0.0.1 (a laptop's Prometheus is not open
    to its network), and the run script's default does too."""
    run_sh = (PROMETHEUS / "run.sh").read_text()
    assert 'address="${PROMETHEUS_ADDRESS:-127.0.0.1:9090}"' in run_sh
    assert '--web.listen-address="$address"' in run_sh
    for path in [PROMETHEUS / "README.md", PROMETHEUS / "prometheus.yml", REPO / "docs/operations.md"]:
        text = path.read_text()
        listens = re.findall(r"--web\.listen-address=(\S+)", text)
        assert listens == ["127.0.0.1:9090"] * len(listens), path
        assert "make prometheus" in text or "run.sh" in text, path


@pytest.mark.parametrize("port", ["abc", "0", "70000", "3000 --web.enable-admin-api"])
def test_the_run_script_refuses_a_bad_port(port, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BENTOML_PORT": port, "PROMETHEUS_DATA": str(tmp_path / "data")}
    result = subprocess.run([PROMETHEUS / "run.sh"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: BENTOML_PORT is '{port}', not a port number (1-65535)"
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not found (Debian: apt-get install prometheus)"
)
def test_the_run_script_follows_bentoml_port_from_any_directory(tmp_path):
    """`BENTOML_PORT=P deploy/prometheus/run.sh`, started outside the repository, scrapes
    localhost:P with the repository's own rule files, and leaves deploy/prometheus/ untouched."""
    import os
    import threading
    import time
    import urllib.request

    pytest.importorskip("prometheus_client")
    before = {path: path.read_bytes() for path in PROMETHEUS.rglob("*") if path.is_file()}
    exporter, web = _free_port(), _free_port()
    stop = threading.Event()
    http = _fake_exporter(exporter, stop)
    env = {
        **os.environ,
        "BENTOML_PORT": str(exporter),
        "PROMETHEUS_ADDRESS": f"127.0.0.1:{web}",
        "PROMETHEUS_DATA": str(tmp_path / "data"),
    }
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen([PROMETHEUS / "run.sh"], cwd=tmp_path, env=env, stdout=log, stderr=log)

    def api(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/{path}", timeout=10) as answer:
            return json.load(answer)["data"]

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = api("targets")["activeTargets"]
            except OSError:
                targets = []
            if targets and targets[0]["health"] == "up":
                break
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"target not up: {targets}"
            time.sleep(1)
        assert [t["labels"]["instance"] for t in targets] == [f"localhost:{exporter}"]
        groups = api("rules")["groups"]
        assert sorted({g["file"] for g in groups}) == sorted(str(path) for path in RULE_FILES)
        assert sum(len(g["rules"]) for g in groups) == sum(len(rules(path)) for path in RULE_FILES)
        assert api("status/flags")["web.listen-address"] == f"127.0.0.1:{web}"
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
        log.close()
        if http is not None:
            http.shutdown()
    assert {path: path.read_bytes() for path in PROMETHEUS.rglob("*") if path.is_file()} == before
    assert (tmp_path / "data.yml").is_file()  # the copy it ran, beside its data
