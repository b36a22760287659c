"""The served models: every model version a worker answers for, each with its runtime, its batcher
and its counters; the core that every protocol (``service.service``, ``service.protocols.oip``,
``service.protocols.tfserving``) shares (docs/design.md, "Serving a repository").

- ``Policy``: which versions of a model are served, as TensorFlow Serving and Triton name it:
  the latest N (default 1), specific versions, or all. ``parse_models`` reads ``CONVZOO_MODELS``.
- ``load_version``: an export folder verified (``model_store.check_export``: containment, schema,
  sizes and SHA-256 of every file) in a private snapshot (``repository.snapshot``), its runtime
  chosen (``runtimes.choose``: the accuracy gate), loaded, checked against its metadata
  (``runtimes.signature_problem``) and warmed up at every batch size: a ``ServedVersion``, ready
  before any request reaches it.
- ``Registry``: name -> {version -> ServedVersion}. A lookup is one read of a dict that is only
  ever replaced whole, never changed in place, so a request sees the versions before or after a
  swap, never between; a request keeps the version it got until it is answered.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service import runtimes
from service.answers import public_metadata
from service.config import ServiceConfig
from service.repository import (
    InvalidExport,
    containment_problem,
    is_complete,
    is_valid_name,
    is_version_name,
    snapshot,
)
from service.serving.batching import Batcher
from service.serving.images import Resize
from service.serving.metrics import metrics
from service.serving.model_store import check_export

logger = logging.getLogger("bentoml.convzoo")


@dataclass(frozen=True)
class Policy:
    """Which versions of a model are served: ``latest`` (the ``count`` highest), ``specific``
    (``versions``) or ``all``."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Policy:
        """``latest``, ``latest=N``, ``all``, or versions ``3`` / ``3+5``."""
        text = text.strip().lower()
        if text in ("", "latest"):
            return cls()
        if text == "all":
            return cls("all")
        if text.startswith("latest="):
            count = text.split("=", 1)[1]
            if is_version_name(count):
                return cls("latest", int(count))
        elif all(is_version_name(part) for part in text.split("+")):
            return cls("specific", versions=tuple(sorted({int(part) for part in text.split("+")})))
        raise ValueError(
            f"version policy {text!r} is not one of: latest, latest=N, all, a version (3) or versions (3+5)"
        )

    def select(self, available: list[int]) -> list[int]:
        """The versions of ``available`` this policy serves, ascending."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return sorted(v for v in available if v in self.versions)
        return sorted(available)[-self.count :]

    def __str__(self) -> str:
        if self.kind == "specific":
            return "+".join(map(str, self.versions))
        return "all" if self.kind == "all" else f"latest={self.count}"


def parse_models(spec: str | None) -> dict[str, Policy] | None:
    """``CONVZOO_MODELS`` (``a,b:3,c:latest=2,d:all``) as {name: Policy}; None (unset): every
    model of the repository, each at its latest version."""
    if not spec or not spec.strip():
        return None
    policies: dict[str, Policy] = {}
    for item in spec.split(","):
        name, _, policy = item.strip().partition(":")
        if not is_valid_name(name):
            raise ValueError(f"CONVZOO_MODELS: {name!r} is not a model name (in {spec!r})")
        try:
            policies[name] = Policy.parse(policy)
        except ValueError as error:
            raise ValueError(f"CONVZOO_MODELS: {name}: {error}") from None
    return policies


class ServedVersion:
    """One model version being served: its metadata, runtime, batcher and requests in flight."""

    def __init__(
        self,
        name: str,
        version: int,
        metadata: dict[str, Any],
        choice: runtimes.Choice,
        model: runtimes.LoadedModel,
        config: ServiceConfig,
        source: Path,
        requests_now: Callable[[], int] = lambda: 0,
        hint: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.metadata = metadata
        self.choice = choice
        self.model = model
        self.source = source
        self.labels: list[str] = list(metadata["labels"])
        self.resize = Resize.from_metadata(metadata)
        self.in_flight = 0
        m, labels = metrics(), (name, str(version))
        batch_size, inference = m.batch_size.labels(*labels), m.inference_seconds.labels(*labels, choice.key)
        self.batcher = Batcher(
            model,
            config.max_batch_size,
            on_batch=lambda size, seconds: (batch_size.observe(size), inference.observe(seconds)),
            on_wait=m.queue_seconds.labels(*labels).observe,
            at_once=not config.decode_threads,  # one CPU: decoding in the batch (service.serving.batching)
            requests_now=requests_now,
        )
        self._in_flight_gauge = m.in_flight.labels(*labels)
        self.decode_seconds = m.decode_seconds.labels(name)
        self.request_images = m.request_images.labels(*labels)
        self._ok: dict[str, tuple[Any, Any, Any]] = {}  # protocol -> its bound success metrics
        shown_choice = choice  # /metadata shows no absolute path: the hint's folder as it may (hint_folder)
        if hint is not None:
            shown_choice = dataclasses.replace(choice, reason=choice.reason.replace(*hint))
        self.description = public_metadata(
            {**metadata, "name": name, "version": version, "runtime": runtimes.describe(shown_choice)}
        )

    def count_ok(self, protocol: str, images: int, seconds: float) -> None:
        """One successful request (the metrics' children bound once per protocol)."""
        bound = self._ok.get(protocol)
        if bound is None:
            m, labels = metrics(), (self.name, str(self.version))
            bound = self._ok[protocol] = (
                m.requests.labels(*labels, protocol, "ok"),
                m.images.labels(*labels, "ok"),
                m.request_seconds.labels(*labels, protocol),
            )
        requests, images_ok, request_seconds = bound
        requests.inc()
        images_ok.inc(images)
        request_seconds.observe(seconds)
        self.request_images.observe(images)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    def describe(self) -> dict[str, Any]:
        """The public metadata (``/metadata``, the protocols' model metadata): ``metadata.json``
        without machine paths, plus the runtime that serves it. Made once, when the version is
        loaded (a large ``metadata.json`` costs its walk once, not per request); shared, so
        callers copy it before changing it."""
        return self.description

    def hold(self) -> ServedVersion:
        """``with served.hold():`` a request uses this version: it is not unloaded before the
        request ends (the version is its own context manager: no generator per request)."""
        return self

    def __enter__(self) -> ServedVersion:
        self.in_flight += 1
        self._in_flight_gauge.inc()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.in_flight -= 1
        self._in_flight_gauge.dec()

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``[n, classes]`` for uint8 images ``[n, height, width, 3]`` at the input size."""
        return await self.batcher(images)

    def info_labels(self, default: bool) -> tuple[str, ...]:
        return (
            self.name,
            str(self.version),
            self.choice.key,
            self.choice.precision,
            str(self.metadata.get("architecture", "unknown")),
            "true" if default else "false",
        )


def load_version(
    folder: Path,
    name: str,
    version: int,
    config: ServiceConfig,
    *,
    requests_now: Callable[[], int] = lambda: 0,
) -> ServedVersion:
    """``folder`` verified, its runtime chosen, loaded, checked against its metadata and warmed up
    (module docstring); raises ``repository.InvalidExport`` or ``runtimes.RuntimeUnavailable`` (or
    the runtime's own error). ``requests_now``: the HTTP requests the process is answering, for
    its batcher (``service.serving.activity``).

    A folder of the repository (``CONVZOO_MODELS_DIR/<name>/<version>``) is checked where it lies
    (``repository.containment_problem``), then checked again and loaded from a private snapshot
    (``repository.snapshot``), so what is loaded is exactly what was checked, whatever is swapped in
    the repository meanwhile; a copy in BentoML's store (the default model) is loaded in place."""
    folder = Path(folder)
    root = Path(config.models_dir)
    if folder.parent.parent != root:
        return _load(folder, folder, name, version, config, requests_now)
    if problem := containment_problem(folder, root):
        raise InvalidExport(problem)
    if not is_complete(folder):  # before any snapshot: a flood of empty folders costs little
        raise InvalidExport(f"{folder}: no saved_model.pb and metadata.json (an interrupted copy?)")
    private = snapshot(root, name, version)
    try:
        return _load(private, folder, name, version, config, requests_now)
    except InvalidExport as error:
        raise InvalidExport(str(error).replace(str(private), str(folder))) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _load(
    files: Path,
    folder: Path,
    name: str,
    version: int,
    config: ServiceConfig,
    requests_now: Callable[[], int],
) -> ServedVersion:
    """``load_version`` of the export whose files are in ``files`` (``folder``: where it is shown)."""
    metadata = check_export(files)
    choice = runtimes.choose(config.runtime, metadata, files, gpus=config.gpus)
    in_log, in_answers = hint_folder(folder, name, version, config)
    if config.runtime == "auto" and not config.gpus and (choice.key == "tensorflow" or choice.skipped):
        logger.warning("%s:%s: %s", name, version, choice.reason.replace(str(files), in_log))
    model = runtimes.load(choice, files, threads=config.worker_cpus)
    resize = Resize.from_metadata(metadata)
    if problem := runtimes.signature_problem(model, (resize.height, resize.width), len(metadata["labels"])):
        raise InvalidExport(f"{folder}: {problem}")
    runtimes.warm_up(model, (resize.height, resize.width), config.max_batch_size)
    runtimes.release_free_memory()
    if choice.path is not None:
        choice = dataclasses.replace(choice, path=folder / choice.path.relative_to(files))
    choice = dataclasses.replace(choice, reason=choice.reason.replace(str(files), in_log))
    return ServedVersion(
        name, version, metadata, choice, model, config, folder, requests_now, (in_log, in_answers)
    )


def hint_folder(folder: Path, name: str, version: int, config: ServiceConfig) -> tuple[str, str]:
    """How a version's folder is written in a hint a user pastes (``python -m training optimize
    FOLDER``), in the log and in ``/metadata``: its folder in the repository (the default model's
    too, not BentoML's copy of it) relative to the server's working directory when inside it
    (``models/mine/1``, both); else absolute in the log and ``$CONVZOO_MODELS_DIR/mine/1`` in
    ``/metadata``, which shows no absolute path."""
    repository = Path(config.models_dir) / name / str(version)
    target = (repository if repository.is_dir() else Path(folder)).absolute()
    try:
        relative = str(target.relative_to(Path.cwd()))
    except ValueError:
        in_answers = f"$CONVZOO_MODELS_DIR/{name}/{version}" if repository.is_dir() else target.name
        return str(target), in_answers
    return relative, relative


class Registry:
    """The versions served, by model name (module docstring). Changed by one thread at a time
    (``lock``); read by any without a lock."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.models: dict[str, dict[int, ServedVersion]] = {}
        self.lock = threading.Lock()

    def get(self, name: str | None = None, version: int | None = None) -> ServedVersion | None:
        """The version asked for (``name`` None: the default model; ``version`` None: the highest
        served), or None when it is not served (``DataPlane.resolve`` parses and refuses)."""
        versions = self.models.get(name or self.default)
        if not versions:
            return None
        return versions[max(versions)] if version is None else versions.get(version)

    def add(self, served: ServedVersion) -> None:
        with self.lock:
            versions = dict(self.models.get(served.name, {}))
            versions[served.version] = served
            self.models = {**self.models, served.name: versions}
        metrics().model_info.labels(*served.info_labels(served.name == self.default)).set(1)

    def remove(self, name: str, version: int) -> ServedVersion | None:
        """Stop handing out this version (requests holding it finish on it)."""
        with self.lock:
            versions = dict(self.models.get(name, {}))
            served = versions.pop(version, None)
            models = dict(self.models)
            if versions:
                models[name] = versions
            else:
                models.pop(name, None)
            self.models = models
        if served is not None:
            metrics().model_info.labels(*served.info_labels(name == self.default)).set(0)
        return served

    def all(self) -> list[ServedVersion]:
        """Every version served: the default model first, then by name and version."""
        models = self.models
        names = sorted(models, key=lambda n: (n != self.default, n))
        return [models[n][v] for n in names for v in sorted(models[n])]

    def summary(self) -> str:
        """``imagenette:2 (default), resnet:1, resnet:3``: what is served, in one line."""
        return (
            ", ".join(
                served.key + (" (default)" if served.name == self.default else "") for served in self.all()
            )
            or "nothing"
        )

    def listing(self) -> list[dict[str, Any]]:
        """What is served, one entry per version (``/metadata``'s ``served``)."""
        return [
            {
                "name": s.name,
                "version": s.version,
                "default": s.name == self.default,
                "latest": s.version == max(self.models[s.name]),
                "architecture": s.metadata.get("architecture"),
                "runtime": s.choice.key,
                "labels": len(s.labels),
                "input_size": list(s.metadata["input_size"]),
            }
            for s in self.all()
        ]
