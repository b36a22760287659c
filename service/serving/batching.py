"""Batching inside the API process: concurrent requests share one model call, with no fixed wait.

``Batcher`` holds a queue of requests and runs at most one model call at a time, in a worker
thread (the runtimes release the GIL, so HTTP goes on meanwhile). A request is a uint8 array
``[n, h, w, 3]`` of already validated images, or a ``Deferred``: the work that makes that array
(decoding the uploads), done in the model's thread just before the call, for every request of the
batch in turn (``service.serving.dataplane``: the choice on one CPU, where the event loop and the model share
the core, so the batch decodes and runs in one go, as the in-process ceiling does:
benchmarks/README.md, "The HTTP path"). When the model is free, the next call takes every request
waiting, up to ``max_batch_size`` images, in arrival order. So:

- at one client, a request is run as soon as it arrives: no batching delay at all;
- under load, requests pile up while the model runs and the next call takes them together:
  batches grow with the load, by themselves, and a request waits at most about one model call.

``at_once`` (on where a worker has one CPU, and so decodes in the batch): a one-image request
whose decoding is cheap (``Deferred.quick``: ``service.serving.dataplane.QUICK_DECODE_BYTES``), that is the
process's only request (``requests_now()``: ``service.serving.activity.Activity.count``, which
``service.http.body.RequestGuard`` keeps) and the
batcher's only caller, while the model is idle, runs right here in the event loop's thread,
without the hand-over to the model's thread and back (about 0.1 ms less per request at one client
on real photos: benchmarks/README.md, "The HTTP path"). The loop is then busy for that one image's
decoding and model call, as its one CPU would be anyway. Before deciding, the request lets every
request that arrived in the same turn of the loop or in the next enter first (``asyncio.sleep(0)``
twice: one turn alone let a lone request decide before the next turn's arrivals had entered, and
16 threads of clients were answered one at a time, never batched, once ``InlineTimeout`` no longer
put a task between the two), so that under load requests still go to the queue and batch
together, never one at a time. A request that
arrives meanwhile waits in its socket rather than in the queue: the same time on one CPU, but
outside the server's own request metrics (0.2 ms of a 12 ms mean at light paced load).

This replaces BentoML's adaptive batching between two services, which cost a pickle and a local
HTTP round trip per call and a wait for the batch window (benchmarks/README.md, "What we tried").
A deferred request whose work fails (a refused upload) fails alone: the batch runs without it. An
error of the model itself fails exactly the requests of that call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.serving.threads import MODEL_THREAD, name_native_thread


@dataclass(frozen=True)
class Deferred:
    """A request's images still to be made: ``make()`` returns the uint8 array of ``count`` images
    at the model's input size, or raises (that request alone fails with its error)."""

    count: int
    make: Callable[[], np.ndarray]
    quick: bool = False
    """``make`` is cheap enough for the event loop's thread (``Batcher(at_once=True)``): a few
    milliseconds, not the third of a second a 40-megapixel PNG takes, during which no probe would
    answer (``service.serving.dataplane.QUICK_DECODE_BYTES``)."""


def _quick(images: np.ndarray | Deferred) -> bool:
    return images.quick if isinstance(images, Deferred) else True  # an array: the model call alone


@dataclass(frozen=True)
class Pending:
    """One request's images (or the work that makes them) and the future its result goes to."""

    images: np.ndarray | Deferred
    result: asyncio.Future
    queued_at: float

    @property
    def count(self) -> int:
        return self.images.count if isinstance(self.images, Deferred) else len(self.images)


class Batcher:
    """``await batcher(images)``: the model's output for these images, computed in a shared batch."""

    def __init__(
        self,
        model: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        on_wait: Callable[[float], None] = lambda seconds: None,
        at_once: bool = False,
        requests_now: Callable[[], int] = lambda: 0,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.at_once = at_once  # a lone one-image request runs in the caller's thread (module docstring)
        self.requests_now = requests_now  # HTTP requests the process is answering (service.serving.activity)
        self.running = False  # a model call is under way in the model's thread
        self.callers = 0  # requests inside __call__ now
        self.on_batch = on_batch  # every model call: its size and seconds (metrics)
        self.on_wait = on_wait  # every request: seconds queued before its batch started
        self.queue: deque[Pending] = deque()
        self.wakeup: asyncio.Event | None = None
        self.runner: asyncio.Task | None = None
        self.thread: ThreadPoolExecutor | None = None  # the model's own thread, while the runner runs
        self.closed = False

    async def __call__(self, images: np.ndarray | Deferred) -> np.ndarray:
        if self.runner is None or self.runner.done():  # started lazily, inside the event loop
            self.wakeup = asyncio.Event()
            self.runner = asyncio.create_task(self._run(), name="convzoo-batcher")
        pending = Pending(images, asyncio.get_running_loop().create_future(), time.perf_counter())
        self.callers += 1
        try:
            if self.at_once and pending.count == 1 and _quick(images) and self._idle():
                for _ in range(2):  # requests that arrived in this turn of the loop or the next enter first
                    await asyncio.sleep(0)
                if self._idle() and self.callers == 1 and self.requests_now() <= 1:
                    return self._run_here(pending)
            self.queue.append(pending)
            self.wakeup.set()
            return await pending.result
        finally:
            self.callers -= 1

    def close(self) -> None:
        """Stop the runner once the queue is empty (a retired model version: the runner's task
        would otherwise keep the model alive); a later call starts it again."""
        self.closed = True
        if self.runner is not None and not self.runner.done():
            self.runner.get_loop().call_soon_threadsafe(self.wakeup.set)

    async def _run(self) -> None:
        self.thread = ThreadPoolExecutor(  # named in the kernel too: top -H, ps -T (serving.threads)
            1, thread_name_prefix=MODEL_THREAD, initializer=name_native_thread, initargs=(MODEL_THREAD,)
        )
        try:
            while not self.closed or self.queue:
                await self.wakeup.wait()
                self.wakeup.clear()
                while self.queue:
                    await self._call_model(self._take())
        finally:
            self.thread.shutdown(wait=False)

    def _idle(self) -> bool:
        return not self.queue and not self.running and not self.closed

    def _run_here(self, pending: Pending) -> np.ndarray:
        """``pending`` alone, in this thread: its images made, the model called, the metrics kept."""
        self.on_wait(time.perf_counter() - pending.queued_at)
        outputs, failures, seconds = self._work([pending])
        if failures:
            raise failures[0]
        self.on_batch(pending.count, seconds)
        return outputs

    def _take(self) -> list[Pending]:
        """The waiting requests for one call: at least one, at most ``max_batch_size`` images
        (unless a single request alone has more). Requests whose client gave up are dropped."""
        taken: list[Pending] = []
        size = 0
        while self.queue:
            pending = self.queue[0]
            if pending.result.done():  # cancelled: the client went away
                self.queue.popleft()
                continue
            if taken and size + pending.count > self.max_batch_size:
                break
            taken.append(self.queue.popleft())
            size += pending.count
        return taken

    async def _call_model(self, taken: list[Pending]) -> None:
        if not taken:
            return
        started = time.perf_counter()
        for pending in taken:
            self.on_wait(started - pending.queued_at)
        self.running = True
        try:
            work = asyncio.get_running_loop().run_in_executor(self.thread, self._work, taken)
            outputs, failures, seconds = await work
        except Exception as error:  # the model failed: every request of the call fails with it
            for pending in taken:
                if not pending.result.done():
                    pending.result.set_exception(error)
            return
        finally:
            self.running = False
        start = 0
        for index, pending in enumerate(taken):
            if index in failures:
                if not pending.result.done():
                    pending.result.set_exception(failures[index])
                continue
            end = start + pending.count
            if not pending.result.done():
                pending.result.set_result(outputs[start:end])
            start = end
        if seconds is not None:
            self.on_batch(start, seconds)

    def _work(self, taken: list[Pending]) -> tuple[Any, dict[int, Exception], float | None]:
        """In the worker thread: each request's images (deferred work done here, in order), then
        one model call on them all; (outputs, {index: error} of the requests that failed alone,
        the model's seconds or None when nothing was left to run)."""
        arrays: list[np.ndarray] = []
        failures: dict[int, Exception] = {}
        for index, pending in enumerate(taken):
            images = pending.images
            if isinstance(images, Deferred):
                if pending.result.done():  # the client went away meanwhile: skip its work
                    failures[index] = asyncio.CancelledError()
                    continue
                try:
                    images = images.make()
                except Exception as error:
                    failures[index] = error
                    continue
            arrays.append(images)
        if not arrays:
            return None, failures, None
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        started = time.perf_counter()
        outputs = self.model(batch)
        return outputs, failures, time.perf_counter() - started
