"""Replicas under Docker Swarm, under Locust load: kill one, then roll out a new model version.

    python -m benchmarks.swarm [--replicas 3] [--users 8] [--out benchmarks/results/swarm.json]

Deploys ``deploy/compose.yaml`` as the stack ``convzoo`` (IMAGE ``convzoo:<old>``, the HAProxy
balancer ``convzoo-lb``), waits until every replica is up behind the balancer, then, with Locust
(``benchmarks/swarm_locustfile.py``: ``/classify`` back to back, ``/metadata`` 5 times a second per
user) sending to 127.0.0.1:8080:

1. **kill**: ``docker kill`` (SIGKILL) of one replica's container; counts the failed requests
   (at most that replica's requests in flight are expected) and the seconds until Swarm has
   the replica count restored and the balancer sees every replica up again;
2. **rollout**: ``docker service update --image convzoo:<new>`` (start-first, one at a time, the
   old task drained before SIGTERM); counts failed requests (expected: zero) and which model
   versions ``/metadata`` reported (expected: only the old and the new).

The new version is made from the old export: copied into a temporary model repository as version
old+1 (SavedModel + metadata.json with the new version) and built with ``deploy/container.py``
(``BASE_IMAGE``, ``HOST_CA`` pass through), unless ``convzoo:<new>`` exists. Needs Docker in Swarm
mode (``docker swarm init --advertise-addr 127.0.0.1``; done here when inactive) and the image
``convzoo:<old>`` (``make container``). Leaves the stack running with ``--keep``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
STACK = "convzoo"
SERVICE = f"{STACK}_convzoo"
LB = "http://127.0.0.1:8080"
STATS = "http://127.0.0.1:8404/stats;csv"
ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def image_exists(image: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", image], capture_output=True, env=ENV).returncode == 0


def servers_up() -> int:
    """Replicas the balancer sends to (UP in HAProxy's statistics)."""
    try:
        rows = requests.get(STATS, timeout=2).text.splitlines()
    except requests.RequestException:
        return 0
    return sum(1 for r in rows if r.startswith("convzoo,task") and r.split(",")[17] == "UP")


def running_tasks() -> int:
    states = docker(
        "service", "ps", SERVICE, "--filter", "desired-state=running", "--format", "{{.CurrentState}}"
    )
    return sum(1 for s in states.splitlines() if s.startswith("Running"))


def wait_until(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def new_version_image(old_image: str, name: str, old: int, new: int) -> str:
    image = f"convzoo:{new}"
    if image_exists(image):
        return image
    source = REPO / "models" / name / str(old)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp, "models", name, str(new))
        shutil.copytree(source, target)
        metadata = json.loads((target / "metadata.json").read_text())
        metadata["version"] = new
        (target / "metadata.json").write_text(json.dumps(metadata, indent=2))
        env = {
            **os.environ,
            "CONVZOO_MODELS_DIR": str(Path(tmp, "models")),
            "CONVZOO_MODEL": f"{name}:{new}",
            "BENTOML_HOME": str(Path(tmp, "bentoml")),
            "PYTHONPATH": str(REPO),
        }
        # tagged convzoo:<new> only: convzoo:latest stays the old version
        subprocess.run(
            [sys.executable, str(REPO / "deploy" / "container.py"), "--tag", str(new), "--no-latest"],
            env=env,
            check=True,
        )
    return image


class Load:
    """Locust, headless, against the balancer, until stopped; then its statistics."""

    def __init__(self, out: Path, users: int, versions: list[str], photos: list[Path]) -> None:
        self.prefix = out
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CONVZOO_BENCH_IMAGES": os.pathsep.join(map(str, photos)),
            "CONVZOO_SWARM_VERSIONS": ",".join(versions),
        }
        with open(f"{out}.log", "w") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("locust")),
                    "-f",
                    str(REPO / "benchmarks" / "swarm_locustfile.py"),
                    "--headless",
                    "--users",
                    str(users),
                    "--spawn-rate",
                    str(users),
                    "--host",
                    LB,
                    "--csv",
                    str(out),
                    "--only-summary",
                    "--stop-timeout",
                    "30",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=90)
        with open(f"{self.prefix}_stats.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        failures_csv = Path(f"{self.prefix}_failures.csv")
        failures = list(csv.DictReader(failures_csv.open())) if failures_csv.exists() else []
        calls = [r for r in rows if r["Type"] in ("POST", "GET")]
        return {
            "requests": {r["Name"]: int(r["Request Count"]) for r in calls},
            "failed": {r["Name"]: int(r["Failure Count"]) for r in calls},
            "failure_reasons": {f["Error"][:160]: int(f["Occurrences"]) for f in failures},
            "versions": {r["Name"]: int(r["Request Count"]) for r in rows if r["Type"] == "VERSION"},
            "classify_per_second": next(
                (float(r["Requests/s"]) for r in calls if r["Name"] == "/classify"), 0.0
            ),
        }


def deploy(image: str, replicas: int) -> None:
    env = {**ENV, "IMAGE": image, "REPLICAS": str(replicas)}
    subprocess.run(
        [DOCKER, "stack", "deploy", "-c", str(REPO / "deploy" / "compose.yaml"), STACK],
        env=env,
        check=True,
        capture_output=True,
    )
    wait_until(
        lambda: running_tasks() == replicas and servers_up() == replicas, 600, f"{replicas} replicas up"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="imagenette:2", help="the old version, NAME:VERSION in models/")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--users", type=int, default=8, help="Locust users (2 of them ask /metadata)")
    parser.add_argument("--before", type=float, default=15, help="seconds of load before each event")
    parser.add_argument("--after", type=float, default=15, help="seconds of load after each event")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "swarm.json")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)

    if docker("info", "--format", "{{.Swarm.LocalNodeState}}", check=False) != "active":
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    name, _, old = args.model.partition(":")
    old_image = f"convzoo:{old}"
    if not image_exists(old_image):
        raise SystemExit(f"{old_image} not found: build it with `make container`")
    if not image_exists("convzoo-lb:latest"):
        subprocess.run(
            [DOCKER, "build", "-t", "convzoo-lb:latest", str(REPO / "deploy" / "lb")], env=ENV, check=True
        )
    new_image = new_version_image(old_image, name, int(old), int(old) + 1)
    versions = [f"{name}:{old}", f"{name}:{int(old) + 1}"]
    photos = sorted(Path(REPO.parent, "shared", "data", "imagenette2-train").glob("*/*.JPEG"))[::500][:16]
    workdir = Path(tempfile.mkdtemp(prefix="convzoo-swarm-"))
    results: dict = {"replicas": args.replicas, "users": args.users, "old": old_image, "new": new_image}

    docker("stack", "rm", STACK, check=False)
    time.sleep(10)  # the network goes away asynchronously
    deploy(old_image, args.replicas)
    print(f"{args.replicas} replicas of {old_image} up behind the balancer", flush=True)

    # 1. kill one replica under load
    load = Load(workdir / "kill", args.users, versions[:1], photos)
    time.sleep(args.before)
    victim = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={SERVICE}").split()[0]
    docker("kill", victim)
    killed = time.monotonic()
    wait_until(lambda: servers_up() < args.replicas, 30, "the balancer to notice")
    detected = time.monotonic() - killed
    restored = (
        wait_until(
            lambda: running_tasks() == args.replicas and servers_up() == args.replicas,
            300,
            "the replica count restored",
        )
        + detected
    )
    time.sleep(args.after)
    results["kill"] = {**load.stop(), "detected_s": round(detected, 1), "restored_s": round(restored, 1)}
    print("kill:", json.dumps(results["kill"]), flush=True)

    # 2. roll out the new version under load
    load = Load(workdir / "rollout", args.users, versions, photos)
    time.sleep(args.before)
    start = time.monotonic()
    subprocess.run(
        [DOCKER, "service", "update", "--detach=false", "--quiet", "--image", new_image, SERVICE],
        env=ENV,
        check=True,
    )
    took = time.monotonic() - start
    time.sleep(args.after)
    results["rollout"] = {**load.stop(), "update_s": round(took, 1)}
    print("rollout:", json.dumps(results["rollout"]), flush=True)

    if not args.keep:
        docker("stack", "rm", STACK, check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
