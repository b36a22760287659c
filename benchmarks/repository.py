"""What serving a repository costs: memory per extra model and reload time, on a real server.

    python -m benchmarks.repository                      # the default model, 4 extra copies
    python -m benchmarks.repository --model imagenette:2 --extra 6 --poll 1

A temporary repository holds the model; ``bentoml serve`` starts on it (``CONVZOO_POLL_S``), is
warmed up with real photos, then copies of the model are put in place one by one under new names
(a hidden copy renamed into place, as writers do). For each, the time from the rename to the model
answering (``/metadata`` with ``model=``), and the worker's resident memory once it answers and
has classified a few photos. The table gives the RSS after each step, the growth per extra model,
and how many such models the worker holds in 2 GB. Memory is the worker process's own RSS (the
BentoML process that imports the service; its parent, the supervisor, is not counted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import requests

from benchmarks.images import add_image_set_argument, image_set
from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, resolve
from benchmarks.servers import SERVERS, RunningServer, warm_up
from service.runtimes import cpu_name

MiB = 1024 * 1024
BUDGET = 2048 * MiB


def worker_rss(server: RunningServer) -> int:
    """The largest resident memory among the server's processes: the worker holding the models."""
    processes = psutil.Process(server.process.pid).children(recursive=True)
    return max(p.memory_info().rss for p in processes)


def wait_served(url: str, name: str, timeout_s: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        response = requests.post(f"{url}/metadata", json={"model": name}, timeout=30)
        if response.status_code == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"{name} was not served within {timeout_s} s")


def classify(url: str, model: str, photos: list[Path]) -> None:
    for path in photos:
        files = [("images", (path.name, path.read_bytes()))]
        response = requests.post(f"{url}/classify", files=files, data={"model": model}, timeout=60)
        response.raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--extra", type=int, default=4, help="copies of the model added one by one")
    parser.add_argument("--poll", type=int, default=2, help="CONVZOO_POLL_S of the server")
    add_image_set_argument(parser)
    args = parser.parse_args(argv)
    ref = resolve(args.model, args.models_dir)
    photos = list(image_set(args.image_set).paths[:8])
    with tempfile.TemporaryDirectory(prefix="convzoo-repository-") as tmp:
        root = Path(tmp) / "models"
        shutil.copytree(ref.path, root / ref.name / str(ref.version))
        os.environ["CONVZOO_POLL_S"] = str(args.poll)
        with RunningServer(SERVERS["bentoml"], ref, root, None, Path(tmp) / "serve.log") as server:
            server.wait_ready()
            warm_up(server.url, photos)
            runtime = requests.post(f"{server.url}/metadata", json={}, timeout=30).json()["runtime"]
            rows = [("default only", worker_rss(server), None)]
            for i in range(1, args.extra + 1):
                name = f"copy{i}"
                hidden = root / f".tmp-{name}"
                shutil.copytree(ref.path, hidden / str(ref.version))
                hidden.rename(root / name)
                seconds = wait_served(server.url, name)
                classify(server.url, name, photos)
                time.sleep(1)
                rows.append((f"+ {name}", worker_rss(server), seconds))
    growth = [b[1] - a[1] for a, b in zip(rows, rows[1:], strict=False)]
    per_model = statistics.median(growth)
    artifact = ref.path / runtime["artifact"]  # openvino/int8, or saved_model.pb
    files = artifact.glob("*.bin") if artifact.is_dir() else (ref.path / "variables").glob("*")
    weights = sum(p.stat().st_size for p in files)
    print(f"# {ref.spec} served from a repository; machine: {cpu_name()}, {psutil.cpu_count()} CPUs")
    print(f"# python -m benchmarks.repository --model {ref.spec} --extra {args.extra} --poll {args.poll}")
    print("| step | worker RSS (MB) | growth (MB) | answered after (s) |")
    print("|---|---:|---:|---:|")
    for (label, rss, seconds), delta in zip(rows, [None, *growth], strict=True):
        print(
            f"| {label} | {rss / MiB:.0f} | {'' if delta is None else f'{delta / MiB:+.0f}'} | "
            f"{'' if seconds is None else f'{seconds:.1f}'} |"
        )
    base = rows[0][1]
    print(
        f"\nper extra model: median {per_model / MiB:.0f} MB ({runtime['key']}, "
        f"{weights / MiB:.1f} MB of weights); "
        f"a worker serving the model alone: {base / MiB:.0f} MB; "
        f"models of this kind in 2 GB: 1 + {int((BUDGET - base) // per_model)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
