"""Deployment files: every Kubernetes manifest validates offline against the official schemas
(kubernetes-validate, strict: no unknown fields), and carries what a production rollout needs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests are meant for (checked below against the newest too)."""


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> list[dict]:
    return [d for path in MANIFESTS for d in _documents(path)]


def _deployments() -> list[dict]:
    return [d for d in _all() if d["kind"] == "Deployment"]


def test_manifests_found():
    kinds = {d["kind"] for d in _all()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= kinds


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path, version):
    for document in _documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_validation_catches_mistakes():
    """The check above is real: a misspelt field and a wrong type both fail."""
    deployment = _deployments()[0]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["metadata"]["name"])
def test_deployment_is_production_ready(deployment):
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e for e in container["env"]}
    assert env["CONVZOO_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "convzoo-api-key"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 1, "maxUnavailable": 0}  # new pod first, old one drained
    assert container["lifecycle"]["preStop"]  # leave the endpoints before SIGTERM
    # every path the read-only root filesystem must write to is a volume
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}


def test_gpu_deployment_requests_a_gpu():
    gpu = [d for d in _deployments() if "gpu" in d["metadata"]["name"]]
    assert gpu, "deploy/kubernetes/deployment-gpu.yaml is missing"
    resources = gpu[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1


def test_autoscaler_and_budget_point_at_the_cpu_deployment():
    by_kind = {d["kind"]: d for d in _all()}
    cpu = next(d for d in _deployments() if d["metadata"]["name"] == "convzoo")
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "convzoo"
    selector = by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= cpu["spec"]["template"]["metadata"]["labels"].items()
    service_selector = by_kind["Service"]["spec"]["selector"]
    for deployment in _deployments():
        assert service_selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_swarm_stack_file():
    """deploy/compose.yaml: what `docker stack deploy` needs for replicas without a routing mesh."""
    stack = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    service = stack["services"]["convzoo"]
    assert service["deploy"]["endpoint_mode"] == "dnsrr"  # no IPVS needed
    assert service["deploy"]["update_config"]["order"] == "start-first"
    assert service["deploy"]["restart_policy"]["condition"] == "any"
    assert {"cpus", "memory"} <= set(service["deploy"]["resources"]["limits"])
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["read_only"] is True
    config = (REPO / "deploy" / "lb" / "haproxy.cfg").read_text()
    assert "option httpchk GET /readyz" in config and "convzoo:3000" in config


def _dockerfile(tmp_path: Path) -> str:
    """The Dockerfile `make container` builds with: BentoML's own, through deploy/Dockerfile.template."""
    from bentoml._internal.bento.build_config import CondaOptions, DockerOptions
    from bentoml._internal.container.generate import generate_containerfile

    docker = DockerOptions(dockerfile_template="deploy/Dockerfile.template").with_defaults()
    return generate_containerfile(docker, str(REPO), conda=CondaOptions().with_defaults(), bento_fs=tmp_path)


def test_containers_and_clusters_bind_every_interface(tmp_path):
    """`make serve` binds 127.0.0.1 (tests/test_make_serve.py); a container must bind every
    interface to be reached through `docker run -p`, Swarm's overlay network or a pod IP. The image
    says so itself (BENTOML_HOST=0.0.0.0, read by the `bentoml serve` its entrypoint runs), and
    neither the Swarm stack nor the Kubernetes pods override it."""
    dockerfile = _dockerfile(tmp_path)
    hosts = [
        line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ENV BENTOML_HOST=")
    ]
    assert hosts[-1:] == ["0.0.0.0"]
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in dockerfile
    assert not any(line.startswith("CMD") and "--host" in line for line in dockerfile.splitlines())

    service = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["convzoo"]
    assert service["environment"].get("BENTOML_HOST", "0.0.0.0") == "0.0.0.0"
    assert "--host" not in " ".join(service["entrypoint"]) and "command" not in service
    for deployment in _deployments():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("BENTOML_HOST", "0.0.0.0") == "0.0.0.0"
            assert "args" not in container and "command" not in container
