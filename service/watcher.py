"""Hot reload: the repository watcher of one worker (a thread that polls, as TF Serving and Triton do).

Every ``CONVZOO_POLL_S`` seconds ``Watcher.poll`` lists ``CONVZOO_MODELS_DIR`` and compares what the
version policies want (``service.registry.Policy``) with what the ``Registry`` serves:

- a wanted version not served yet is verified, loaded and warmed up in this thread
  (``registry.load_version``), then added: from then on new requests get it, while requests that
  already hold the previous version finish on it;
- a served version no longer wanted (a newer one took its place, its folder was removed) is taken
  out of the registry, and released once its last request has ended (``ServedVersion.in_flight``);
  the default model always keeps one version;
- a version that fails verification or loading is refused with one log line and
  ``convzoo_model_loads_total{outcome="refused"}``; what is served keeps serving, and the folder is
  tried again only once its files change (an interrupted copy finished, a fix dropped in).

Writers put a version in place by renaming a finished folder (``training.export`` does): a folder
still being copied in place is refused, then loaded once the copy is complete.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service import repository, runtimes
from service.config import ServiceConfig
from service.metrics import ProcessSampler, metrics
from service.registry import Policy, Registry, ServedVersion, load_version

logger = logging.getLogger("bentoml.convzoo")

Loader = Callable[[Path, str, int, ServiceConfig], ServedVersion]


class Watcher:
    """Keeps ``registry`` in step with the repository (module docstring)."""

    def __init__(
        self,
        registry: Registry,
        config: ServiceConfig,
        policies: dict[str, Policy] | None,
        default_policy: Policy,
        loader: Loader = load_version,
    ) -> None:
        self.registry = registry
        self.config = config
        self.policies = policies
        self.default_policy = default_policy
        self.loader = loader
        self.refused: dict[tuple[str, int], tuple] = {}  # version -> the files' state when refused
        self.retiring: list[ServedVersion] = []
        self.sampler = ProcessSampler()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="convzoo-watcher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        next_poll = 0.0
        while not self.stopped.is_set():
            now = time.monotonic()
            if now >= next_poll:
                try:
                    self.poll()
                except Exception as error:  # a bad disk must not stop the watcher for good
                    logger.warning("the model repository watcher failed (%s); trying again", error)
                next_poll = time.monotonic() + self.config.poll_s
            self._release_finished()
            self.sampler.sample()
            self.stopped.wait(min(1.0, self.config.poll_s))

    def wanted(self) -> dict[str, list[int]]:
        """{name: versions} the policies want from the repository's version folders now."""
        models_dir = Path(self.config.models_dir)
        if not models_dir.is_dir():
            return {}
        names = repository.model_names(models_dir) if self.policies is None else list(self.policies)
        if self.registry.default not in names:
            names.append(self.registry.default)
        wanted = {}
        for name in names:
            if not repository.is_valid_name(name):
                continue
            available = repository.version_folders(models_dir, name)
            asked = (self.policies or {}).get(name)
            if name == self.registry.default:
                # The default keeps its own version (the latest, or CONVZOO_MODEL's pin); unpinned,
                # it also serves what CONVZOO_MODELS asks of it (imagenette:2+3: v2 beside v3).
                extra = asked.select(available) if asked and self.default_policy.kind == "latest" else []
                versions = sorted(set(self.default_policy.select(available)) | set(extra))
            else:
                versions = (asked or Policy()).select(available)
            if (models_dir / name).is_dir():
                wanted[name] = versions
        return wanted

    def poll(self) -> None:
        """Load what is wanted and not served, retire what is served and not wanted."""
        wanted = self.wanted()
        for name, versions in wanted.items():
            for version in versions:
                if version not in self.registry.models.get(name, {}):
                    self._load(name, version)
        for name, versions in wanted.items():
            served = self.registry.models.get(name, {})
            for version in sorted(served):
                if version in versions:
                    continue
                if name == self.registry.default and len(self.registry.models.get(name, {})) == 1:
                    continue  # never leave the default model with nothing to serve
                self._retire(name, version)

    def _load(self, name: str, version: int) -> None:
        folder = Path(self.config.models_dir) / name / str(version)
        state = _files_state(folder)
        if self.refused.get((name, version)) == state:
            return
        started = time.monotonic()
        try:
            served = self.loader(folder, name, version, self.config)
        except Exception as error:
            self.refused[(name, version)] = state
            metrics().model_loads.labels(name, str(version), "refused").inc()
            logger.warning(
                "refused %s:%s from %s: %s; still serving %s",
                name,
                version,
                folder,
                _one_line(error),
                self.registry.summary(),
            )
            return
        self.refused.pop((name, version), None)
        self.registry.add(served)
        metrics().model_loads.labels(name, str(version), "loaded").inc()
        logger.info(
            "now serving %s with %s %s (%s; loaded and warmed up in %.1f s)",
            served.key,
            served.choice.runtime,
            served.choice.precision,
            served.choice.reason,
            time.monotonic() - started,
        )

    def _retire(self, name: str, version: int) -> None:
        served = self.registry.remove(name, version)
        if served is not None:
            served.batcher.close()
            self.retiring.append(served)
            logger.info("retiring %s: new requests go to %s", served.key, self.registry.summary())

    def _release_finished(self) -> None:
        """Drop the retired versions whose last request has ended (their memory goes back)."""
        done = [served for served in self.retiring if served.in_flight == 0]
        if not done:
            return
        self.retiring = [served for served in self.retiring if served.in_flight > 0]
        for served in done:
            metrics().model_loads.labels(served.name, str(served.version), "unloaded").inc()
            logger.info("unloaded %s", served.key)
        del done, served
        gc.collect()
        runtimes.release_free_memory()


def _files_state(folder: Path) -> tuple:
    """Every file's path, size and modification time under ``folder`` (changes when it does)."""
    try:
        return tuple(
            sorted(
                (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in folder.rglob("*")
                if p.is_file()
            )
        )
    except OSError:
        return ()


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:500]
