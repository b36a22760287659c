"""Service settings, read once from environment variables (all optional).

| variable                         | default              | meaning                                          |
|----------------------------------|----------------------|--------------------------------------------------|
| CONVZOO_MODEL                    | imagenette           | model to serve, ``name`` or ``name:version``     |
| CONVZOO_MODELS_DIR               | <repo>/models        | the model repository (``<name>/<version>/``)     |
| CONVZOO_MODELS                   | (every model there)  | models served and their versions: ``a,b:3``      |
| CONVZOO_POLL_S                   | 5                    | seconds between two looks at the repository      |
| CONVZOO_MAX_IMAGES               | 32                   | images per request                               |
| CONVZOO_MAX_REQUEST_BYTES        | 64 MiB               | body size of one request (larger: 413)           |
| CONVZOO_MAX_FILE_BYTES           | 32 MiB               | size of one uploaded file                        |
| CONVZOO_MAX_PIXELS               | 40 000 000           | width x height of one image (checked pre-decode) |
| CONVZOO_TOP_K                    | 5                    | ``top_k`` when the request does not say          |
| CONVZOO_MAX_TOP_K                | 100                  | largest ``top_k`` a request may ask for          |
| CONVZOO_MAX_BATCH_SIZE           | 32                   | batching: most images per model call             |
| CONVZOO_WORKERS                  | per GPU, or 6 CPUs   | processes, each with its own copy of the model   |
| CONVZOO_DECODE_THREADS           | 0 on one CPU, else 4+| per worker (0: in the batch; "one CPU": the      |
|                                  |                      | worker's share, the CPUs / CONVZOO_WORKERS)      |
| CONVZOO_TIMEOUT_S                | 60                   | request timeout                                  |
| CONVZOO_MAX_CONCURRENCY          | 512                  | requests in flight before the server answers 429 |
| CONVZOO_API_KEY                  | (none: no auth)      | clients send ``Authorization: Bearer <key>``     |
| CONVZOO_RUNTIME                  | auto                 | tensorflow, openvino-int8... (service.runtimes)  |
| CONVZOO_MAX_IMAGE_DECODE_BYTES   | 384 MiB              | memory decoding one image may take (larger: 413) |
| CONVZOO_MAX_REQUEST_DECODE_BYTES | 1 GiB                | decoding memory of all images of one request     |
| CONVZOO_DECODE_MEMORY_BYTES      | 512 MiB              | decoding memory of one process, all requests     |
| CONVZOO_MAX_BODY_BYTES           | 64 KiB               | body of a request to any other route             |
| CONVZOO_MAX_BUFFERED_BYTES       | 256 MiB              | request bodies held at once by one process       |
| CONVZOO_BODY_TIMEOUT_S           | 10                   | longest wait for the next piece of a body (408)  |
| CONVZOO_MAX_HEADER_BYTES         | 64 KiB               | request line and headers of a request (431)      |
| CONVZOO_HEADER_TIMEOUT_S         | 10                   | time for a request's line and headers (408)      |
| CONVZOO_MAX_JSON_BYTES           | 16 MiB               | JSON body of /v1 :predict and /v2 infer (413)    |
| CONVZOO_FORWARDED_ALLOW_IPS      | (none)               | proxies whose X-Forwarded-* are believed         |
| CONVZOO_METRICS_DIR              | own per server       | this server's Prometheus multiprocess folder     |

The same settings apply to ``bentoml serve`` from the repository root and to a built Bento.
``settings()`` reads them once per process; nothing else in ``service/`` reads the environment.
The decoding memory of an image is its pixels times the bytes per pixel its decoding holds at once
(``service.serving.images.open_upload``: the decoded mode, 16-bit, alpha, and the 8-bit RGB result).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = "imagenette"


@dataclass(frozen=True)
class Limits:
    """What one request may contain; anything beyond is refused before the model."""

    max_images: int = 32
    max_request_bytes: int = 64 * MiB
    max_file_bytes: int = 32 * MiB
    max_pixels: int = 40_000_000
    max_image_decode_bytes: int = 384 * MiB
    max_request_decode_bytes: int = 1 * GiB
    max_body_bytes: int = 64 * KiB
    """Every route but ``/classify`` takes JSON (``{}``) or nothing."""
    max_json_bytes: int = 16 * MiB
    """The JSON of a tensor request (``/v1 :predict``, ``/v2 infer``; with the binary data
    extension, its JSON header): parsed into Python objects, which take up to ~25 times its size
    (``service.serving.jsonbody.json_memory``)."""


@dataclass(frozen=True)
class ServiceConfig:
    model: str = DEFAULT_MODEL
    models_dir: Path = REPO_MODELS_DIR
    models: str | None = None
    """``CONVZOO_MODELS``: ``name[:policy]`` items, policy ``latest`` (default), ``latest=N``,
    ``all``, a version ``3`` or versions ``3+5`` (``service.serving.registry.parse_models``); unset: every
    model of the repository at its latest version."""
    poll_s: int = 5
    limits: Limits = Limits()
    top_k: int = 5
    max_top_k: int = 100
    max_batch_size: int = 32
    workers: int = 1
    decode_threads: int = 4
    worker_cpus: int = 1
    """CPUs each worker's model uses (its runtime's threads): the process's CPUs shared out among
    the workers (``worker_cpus``)."""
    timeout_s: int = 60
    max_concurrency: int = 512
    api_key: str | None = field(default=None, repr=False)  # never printed
    runtime: str = "auto"
    gpus: int = 0
    decode_memory_bytes: int = 512 * MiB
    body_timeout_s: int = 10
    max_header_bytes: int = 64 * KiB
    header_timeout_s: int = 10
    max_buffered_bytes: int = 256 * MiB
    forwarded_allow_ips: str = ""
    metrics_dir: str | None = None
    bentoml_metrics_dir: str | None = None
    """``PROMETHEUS_MULTIPROC_DIR`` as ``bentoml serve`` hands it to its workers (shared by every
    server under one ``BENTOML_HOME``)."""
    otel_sdk_disabled: str | None = None
    """``OTEL_SDK_DISABLED`` as the user set it (None: unset, the service decides)."""


def _int(name: str, default: int, minimum: int = 1) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


CPUS_PER_WORKER = 6
"""CPUs that one worker keeps busy: its event loop spends ~1.2 ms of one CPU on a one-photo request
(HTTP, the upload's header), the model and the decoding ~7 ms of CPU an image, so one event loop
feeds about 6 CPUs (benchmarks/README.md, "The HTTP path"; measured on up to 2 CPUs, where one
worker with 2 threads serves 173 images/s and two workers with 1 thread each 156). The ratio
depends on the CPU: on a Sapphire Rapids core (AMX int8) the same division is 2.06 / 0.48 ms,
about 4 CPUs; ``CONVZOO_WORKERS`` sets the count where it matters."""


def default_cpu_workers() -> int:
    """Workers on a machine without GPUs: one per ``CPUS_PER_WORKER`` CPUs this process may use."""
    return max(1, cpu_count() // CPUS_PER_WORKER)


def worker_cpus(workers: int) -> int:
    """The CPUs of one worker: those this process may use, shared out among ``workers``."""
    return max(1, cpu_count() // workers)


def default_decode_threads(worker_cpus: int) -> int:
    """0 when a worker has one CPU, else 4 (or one per CPU of the worker, if it has more).

    0: the model's thread decodes a batch's uploads just before running it (``service.serving.dataplane``). On
    one CPU nothing decodes in parallel with anything; decoding in the batch leaves the event loop
    to HTTP alone and runs a batch's decoding and its model call in one go, as the in-process
    ceiling does (benchmarks/README.md, "The HTTP path"). With more CPUs, threads decode in
    parallel with the event loop and the model.
    """
    return 0 if worker_cpus == 1 else max(ServiceConfig.decode_threads, worker_cpus)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, e.g. under ``taskset`` or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # not Linux


NVIDIA_GPUS = "/proc/driver/nvidia/gpus"
"""The NVIDIA driver's listing: one folder per GPU (a container sees the GPUs it was given)."""


def count_gpus() -> int:
    """NVIDIA GPUs this process may use (CUDA_VISIBLE_DEVICES, else the driver's listing,
    ``NVIDIA_GPUS``); 0 if none. One directory listing, never a subprocess: ``settings()`` runs
    when ``service.service`` is imported (it used to run ``nvidia-smi -L``, up to 10 s)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    try:
        return sum(1 for entry in Path(NVIDIA_GPUS).iterdir() if entry.is_dir())
    except OSError:
        return 0


def load_config() -> ServiceConfig:
    """The settings from the environment (see the module docstring)."""
    limits = Limits(
        max_images=_int("CONVZOO_MAX_IMAGES", Limits.max_images),
        max_request_bytes=_int("CONVZOO_MAX_REQUEST_BYTES", Limits.max_request_bytes),
        max_file_bytes=_int("CONVZOO_MAX_FILE_BYTES", Limits.max_file_bytes),
        max_pixels=_int("CONVZOO_MAX_PIXELS", Limits.max_pixels),
        max_image_decode_bytes=_int("CONVZOO_MAX_IMAGE_DECODE_BYTES", Limits.max_image_decode_bytes),
        max_request_decode_bytes=_int("CONVZOO_MAX_REQUEST_DECODE_BYTES", Limits.max_request_decode_bytes),
        max_body_bytes=_int("CONVZOO_MAX_BODY_BYTES", Limits.max_body_bytes),
        max_json_bytes=_int("CONVZOO_MAX_JSON_BYTES", Limits.max_json_bytes),
    )
    gpus = count_gpus()
    workers = _int("CONVZOO_WORKERS", gpus or default_cpu_workers())
    cpus = worker_cpus(workers)
    config = ServiceConfig(
        model=os.environ.get("CONVZOO_MODEL") or DEFAULT_MODEL,
        models_dir=Path(os.environ.get("CONVZOO_MODELS_DIR") or REPO_MODELS_DIR),
        models=os.environ.get("CONVZOO_MODELS") or None,
        poll_s=_int("CONVZOO_POLL_S", ServiceConfig.poll_s),
        limits=limits,
        top_k=_int("CONVZOO_TOP_K", ServiceConfig.top_k),
        max_top_k=_int("CONVZOO_MAX_TOP_K", ServiceConfig.max_top_k),
        max_batch_size=_int("CONVZOO_MAX_BATCH_SIZE", ServiceConfig.max_batch_size),
        workers=workers,
        decode_threads=_int("CONVZOO_DECODE_THREADS", default_decode_threads(cpus), minimum=0),
        worker_cpus=cpus,
        timeout_s=_int("CONVZOO_TIMEOUT_S", ServiceConfig.timeout_s),
        max_concurrency=_int("CONVZOO_MAX_CONCURRENCY", ServiceConfig.max_concurrency),
        api_key=os.environ.get("CONVZOO_API_KEY") or None,
        runtime=(os.environ.get("CONVZOO_RUNTIME") or "auto").strip().lower(),
        gpus=gpus,
        decode_memory_bytes=_int("CONVZOO_DECODE_MEMORY_BYTES", ServiceConfig.decode_memory_bytes),
        body_timeout_s=_int("CONVZOO_BODY_TIMEOUT_S", ServiceConfig.body_timeout_s),
        max_header_bytes=_int("CONVZOO_MAX_HEADER_BYTES", ServiceConfig.max_header_bytes),
        header_timeout_s=_int("CONVZOO_HEADER_TIMEOUT_S", ServiceConfig.header_timeout_s),
        max_buffered_bytes=_int("CONVZOO_MAX_BUFFERED_BYTES", ServiceConfig.max_buffered_bytes),
        forwarded_allow_ips=os.environ.get("CONVZOO_FORWARDED_ALLOW_IPS", "").strip(),
        metrics_dir=os.environ.get("CONVZOO_METRICS_DIR") or None,
        bentoml_metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
        otel_sdk_disabled=os.environ.get("OTEL_SDK_DISABLED"),
    )
    if config.top_k > config.max_top_k:
        raise ValueError(f"CONVZOO_TOP_K ({config.top_k}) exceeds CONVZOO_MAX_TOP_K ({config.max_top_k})")
    if limits.max_request_bytes > config.max_buffered_bytes:
        raise ValueError(
            f"CONVZOO_MAX_REQUEST_BYTES ({limits.max_request_bytes}) exceeds CONVZOO_MAX_BUFFERED_BYTES "
            f"({config.max_buffered_bytes}): such a request could never be read"
        )
    if limits.max_image_decode_bytes > config.decode_memory_bytes:
        raise ValueError(
            f"CONVZOO_MAX_IMAGE_DECODE_BYTES ({limits.max_image_decode_bytes}) exceeds "
            f"CONVZOO_DECODE_MEMORY_BYTES ({config.decode_memory_bytes}): such an image could never "
            "be decoded"
        )
    return config


@functools.cache
def settings() -> ServiceConfig:
    """This process's settings, read from the environment on the first call (``load_config``)."""
    return load_config()
