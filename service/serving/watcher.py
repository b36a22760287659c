"""Hot reload: the repository watcher of one worker (a thread that polls, as TF Serving and Triton do).

Every ``CONVZOO_POLL_S`` seconds ``Watcher.poll`` lists ``CONVZOO_MODELS_DIR`` and compares what the
version policies want (``service.serving.registry.Policy``) with what the ``Registry`` serves:

- a wanted version not served yet is verified, loaded and warmed up in this thread
  (``registry.load_version``), then added: from then on new requests get it, while requests that
  already hold the previous version finish on it;
- a version that fails verification or loading is refused with one log line and
  ``convzoo_model_loads_total{outcome="refused"}``, and the policy chooses again among the others:
  a refused version never takes the place of one that serves (``latest`` keeps the highest version
  that loads). It is tried again only once its files change (an interrupted copy finished, a fix
  dropped in);
- a served version no longer wanted (a newer one took its place, its folder was removed, its whole
  model folder was removed) is taken out of the registry, and released once its last request has
  ended (``ServedVersion.in_flight``); the default model always keeps one version;
- a served version whose files change in place (``python -m training optimize --rewrite``, a
  version copied over) is loaded again the same way, then swapped in: new requests get the new
  load, requests that hold the old one finish on it, and the old one is released after its last
  request. A change that fails verification (a rewrite half done, a corrupt copy) keeps the old load
  serving, with one refusal logged; it is tried again once its files change. Noticing a change costs
  a ``stat`` of each file of every served version per poll (``_files_state``), no reading;
- what the repository holds besides models is ignored with one log line each, once
  (``repository.scan_versions``: a folder named ``²`` or ``007``, a symbolic link, a file): it
  never stops the watcher, and a model added beside it is still loaded. Symbolic links are never
  followed (``repository.containment_problem``, checked again by every load).

Writers put a version in place by renaming a finished folder (``training.export`` does): a folder
still being copied in place is refused, then loaded once the copy is complete. ``optimize``
replaces a version folder it measures again in one atomic exchange (``training.optimize.publish``),
so a poll never sees its rewrite half done; hidden entries (``.tmp-*``) are not part of a version's
state.
"""

from __future__ import annotations

import gc
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service import repository, runtimes
from service.config import ServiceConfig
from service.serving.metrics import ProcessSampler, metrics
from service.serving.registry import Policy, Registry, ServedVersion, load_version
from service.serving.threads import WATCHER_THREAD, name_native_thread

logger = logging.getLogger("bentoml.convzoo")

MAX_LINES_PER_POLL = 10
"""Refusals and ignored entries logged one by one per poll; more are counted in one line."""
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
        self.where = "CPU"  # the device, for the log lines (DataPlane.start: TensorFlow's GPU)
        self.refused: dict[tuple[str, int], tuple] = {}  # version -> the files' state when refused
        self.loaded: dict[tuple[str, int], tuple] = {}  # served version -> its files' state when loaded
        self.reasons: dict[tuple[str, int], str] = {}  # version -> why it was refused (one line)
        self.noted: set[str] = set()  # what the last poll ignored (each noted once in the log)
        self._noted_now: set[str] = set()
        self._lines_now = self._quiet = 0
        self.retiring: list[ServedVersion] = []
        self.sampler = ProcessSampler()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=WATCHER_THREAD, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        name_native_thread(WATCHER_THREAD)  # as top -H and ps -T show it (service.serving.threads)
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

    def _select(self, name: str, candidates: list[int]) -> list[int]:
        """The versions of ``name`` to serve among ``candidates``. The default model keeps its own
        version (the latest, or CONVZOO_MODEL's pin); unpinned, it also serves what CONVZOO_MODELS
        asks of it (``imagenette:2+3``: v2 beside v3)."""
        asked = (self.policies or {}).get(name)
        if name != self.registry.default:
            return (asked or Policy()).select(candidates)
        chosen = self.default_policy.select(candidates)
        if asked and self.default_policy.kind == "latest":
            chosen = sorted(set(chosen) | set(asked.select(candidates)))
        return chosen

    def listing(self) -> dict[str, list[int]]:
        """{name: version folders} of every model this worker follows whose folder exists (a plain
        folder, not a symbolic link); what it ignores is noted once (``_note``)."""
        models_dir = Path(self.config.models_dir)
        if not models_dir.is_dir():
            return {}
        if self.policies is None:
            names = []
            for path in sorted(models_dir.iterdir()):
                if path.name.startswith(".") or not path.is_dir():
                    continue
                if repository.is_valid_name(path.name):
                    names.append(path.name)
                else:
                    self._note(path, "not a model name (letters, digits, '_', '.', '-')")
        else:
            names = list(self.policies)
        if self.registry.default not in names:
            names.append(self.registry.default)
        listing = {}
        for name in names:
            folder = models_dir / name
            if folder.is_symlink():
                self._note(folder, "a symbolic link; models are served only from inside the repository")
            elif folder.is_dir():
                versions, ignored = repository.scan_versions(models_dir, name)
                for path, why in ignored:
                    self._note(path, why)
                listing[name] = versions
        return listing

    def poll(self) -> None:
        """Load what is wanted and not served, retire what is served and not wanted."""
        self._noted_now = set()
        self._lines_now = self._quiet = 0
        listing = self.listing()
        for name, available in listing.items():
            self._follow(name, available)
        present = {(name, version) for name, versions in listing.items() for version in versions}
        self.refused = {key: state for key, state in self.refused.items() if key in present}
        self.reasons = {key: reason for key, reason in self.reasons.items() if key in self.refused}
        for name in sorted(set(self.registry.models) - set(listing)):
            self._follow(name, [])  # its folder is gone (or is no longer a plain folder)
        self._reload_changed()
        if self._quiet:
            logger.warning(
                "... and %d more entries of %s refused or ignored (not logged one by one)",
                self._quiet,
                self.config.models_dir,
            )
        self.noted = self._noted_now  # a name that goes and comes back is noted again

    def _follow(self, name: str, available: list[int]) -> None:
        """Serve what ``name``'s policy chooses among its versions that load; retire the rest."""
        candidates = [
            v for v in available if v in self.registry.models.get(name, {}) or not self._refused_now(name, v)
        ]
        wanted = self._select(name, candidates)
        while missing := [v for v in wanted if v not in self.registry.models.get(name, {})]:
            for version in missing:
                if not self._load(name, version):
                    candidates.remove(version)  # the policy chooses again without it
            wanted = self._select(name, candidates)
        for version in sorted(self.registry.models.get(name, {})):
            if version in wanted:
                continue
            if name == self.registry.default and len(self.registry.models.get(name, {})) == 1:
                continue  # never leave the default model with nothing to serve
            self._retire(name, version)

    def _reload_changed(self) -> None:
        """Load again every served version whose files changed since it was loaded (module
        docstring); a change that does not load leaves the old load serving."""
        self.loaded = {key: state for key, state in self.loaded.items() if self.registry.get(*key)}
        for served in self.registry.all():
            key = (served.name, served.version)
            folder = self._folder(*key)
            if not folder.is_dir() or folder.is_symlink():
                continue  # not in the repository (a Bento's own model), or going away
            state = _files_state(folder)
            if state == self.loaded.get(key) or self._refused_now(*key, state):
                continue
            try:
                self.serve(folder, *key, state=state)
            except Exception as error:
                self.refused[key] = state
                self.reasons[key] = _one_line(error)
                metrics().model_loads.labels(served.name, str(served.version), "refused").inc()
                self._say(
                    logging.WARNING,
                    "refused the changed files of %s in %s: %s; still serving it as loaded before (%s)",
                    served.key,
                    folder,
                    _one_line(error),
                    self.registry.summary(),
                )
                continue
            self.refused.pop(key, None)
            self.reasons.pop(key, None)
            self._release(served, f"reloaded {served.key} (its files changed): new requests get the new load")

    def _refused_now(self, name: str, version: int, state: tuple | None = None) -> bool:
        """Whether this version was refused and its files have not changed since."""
        key = (name, version)
        if key not in self.refused:
            return False
        if state is None:
            state = _files_state(self._folder(name, version))
        return self.refused[key] == state

    def _folder(self, name: str, version: int) -> Path:
        return Path(self.config.models_dir) / name / str(version)

    def _note(self, path: Path, why: str) -> None:
        """One log line for an entry the watcher ignores, once (not every poll)."""
        key = f"{path}\0{why}"
        self._noted_now.add(key)
        if key not in self.noted:
            self._say(logging.WARNING, "ignoring %s: %s", ascii(str(path))[1:-1], why)

    def _say(self, level: int, message: str, *args: object) -> None:
        """A refusal or note in the log, at most ``MAX_LINES_PER_POLL`` of them per poll (a flood of
        folders gives a few lines and a count, not one line each)."""
        if self._lines_now < MAX_LINES_PER_POLL:
            self._lines_now += 1
            logger.log(level, message, *args)
        else:
            self._quiet += 1

    def _load(self, name: str, version: int) -> bool:
        """Load, warm up and serve this version; False when it is refused."""
        folder = self._folder(name, version)
        state = _files_state(folder)
        try:
            self.serve(folder, name, version, state=state)
        except Exception as error:
            self.refused[(name, version)] = state
            self.reasons[(name, version)] = _one_line(error)
            metrics().model_loads.labels(name, str(version), "refused").inc()
            self._say(
                logging.WARNING,
                "refused %s:%s from %s: %s; still serving %s",
                name,
                version,
                folder,
                _one_line(error),
                self.registry.summary(),
            )
            return False
        self.refused.pop((name, version), None)
        self.reasons.pop((name, version), None)
        return True

    def serve(self, folder: Path, name: str, version: int, state: tuple | None = None) -> ServedVersion:
        """The one way a version starts serving, the default model's included
        (``DataPlane.start``): loaded and warmed up (``loader``; its errors raised), added to the
        registry (in place of a load of the same version), counted and logged (``where``: the
        device, for the log line). ``state``: its repository folder's ``_files_state``, taken
        before the load (a change during the load is loaded again at the next poll)."""
        started = time.monotonic()
        if state is None:
            state = _files_state(self._folder(name, version))
        served = self.loader(folder, name, version, self.config)
        self.registry.add(served)
        self.loaded[(name, version)] = state
        metrics().model_loads.labels(name, str(version), "loaded").inc()
        logger.info(
            "serving %s with %s %s on %s (%s; loaded and warmed up in %.1f s)",
            served.key,
            served.choice.runtime,
            served.choice.precision,
            self.where,
            served.choice.reason,
            time.monotonic() - started,
        )
        return served

    def _retire(self, name: str, version: int) -> None:
        served = self.registry.remove(name, version)
        if served is not None:
            self._release(served, f"retiring {served.key}: new requests go to {self.registry.summary()}")

    def _release(self, served: ServedVersion, line: str) -> None:
        """``served`` no longer handed out: released once its last request has ended."""
        served.batcher.close()
        self.retiring.append(served)
        now = self.registry.get(served.name, served.version)
        if now is not None:  # a reload: the old load's series goes down unless the new one has it
            default = served.name == self.registry.default
            if served.info_labels(default) != now.info_labels(default):
                metrics().model_info.labels(*served.info_labels(default)).set(0)
        logger.info("%s", line)

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
    """Every file's path, size, modification time and inode under ``folder`` (changes when it
    does; a rename into place changes the inode even when size and time are the same): one
    ``stat`` per file, nothing read. Hidden entries (a writer's ``.tmp-*``) and symbolic links
    are left out (never followed; a load refuses them)."""
    found = []
    try:
        for parent, folders, files in os.walk(folder):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(parent, name)
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    found.append((os.path.relpath(path, folder), info.st_size, info.st_mtime_ns, info.st_ino))
    except OSError:
        return ()
    return tuple(sorted(found))


def _one_line(error: BaseException) -> str:
    """The error's first line, its control characters escaped (``repository.printable``: a file
    named ``x\x1b[2J`` in a version folder must not reach the log as a terminal escape)."""
    lines = str(error).strip().splitlines()
    return repository.printable((lines[0] if lines else type(error).__name__)[:500])
