"""``service.serving.batching.Batcher`` in process: batches form by themselves, deferred work (the decoding
of one-CPU servers) runs in the model's thread, and a failure stays with the requests it concerns.

The batcher under real load is measured by tests/test_reliability.py and the benchmarks; here each
rule is checked with a model that records what it was called with.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.serving.batching import Batcher, Deferred
from service.serving.threads import MODEL_THREAD


class RecordingModel:
    """Returns each image's first pixel as its "probabilities"; records batch sizes and threads.
    ``gate`` (when set) holds the first call until the test opens it, so that requests pile up."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.gate: threading.Event | None = None
        self.fail = fail

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(5)
            self.gate = None
        self.calls.append(len(images))
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("the model failed")
        return images[:, 0, 0, :1].astype(np.float32)


def images(*values: int) -> np.ndarray:
    return np.stack([np.full((2, 2, 3), v, np.uint8) for v in values])


def deferred(
    *values: int, threads: set[int] | None = None, error: Exception | None = None, quick: bool = False
) -> Deferred:
    def make() -> np.ndarray:
        if threads is not None:
            threads.add(threading.get_ident())
        if error is not None:
            raise error
        return images(*values)

    return Deferred(len(values), make, quick=quick)


async def _first_call_blocked(model: RecordingModel, batcher: Batcher) -> asyncio.Task:
    """Start one request and let its model call begin (held by the gate until the test opens it)."""
    model.gate = threading.Event()
    first = asyncio.create_task(batcher(images(1)))
    await asyncio.sleep(0.05)
    return first


def test_waiting_requests_share_one_call_and_deferred_work_runs_in_the_model_thread():
    async def scenario():
        model = RecordingModel()
        batcher = Batcher(model, max_batch_size=32)
        first = await _first_call_blocked(model, batcher)
        work_threads: set[int] = set()
        rest = [
            asyncio.create_task(batcher(images(2))),
            asyncio.create_task(batcher(deferred(3, 4, threads=work_threads))),
            asyncio.create_task(batcher(images(5))),
        ]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        return model, results, work_threads, threading.get_ident()

    model, results, work_threads, loop_thread = asyncio.run(scenario())
    assert model.calls == [1, 4]  # the three waiting requests (4 images) in one call
    assert [r[:, 0].tolist() for r in results] == [[1], [2], [3, 4], [5]]
    assert work_threads and loop_thread not in work_threads  # decoded off the event loop
    assert work_threads <= model.threads  # in the thread that runs the model


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native thread names: Linux's prctl")
def test_the_model_thread_has_its_name_in_the_kernel():
    """``top -H``, ``ps -T`` and the benchmarks' ``--model-cpus`` find the model's thread by the
    name the kernel shows (``/proc/self/task/<tid>/comm``), not Python's alone."""
    seen: dict[str, str] = {}

    def model(batch: np.ndarray) -> np.ndarray:
        seen["comm"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        seen["python"] = threading.current_thread().name
        return batch[:, 0, 0, :1].astype(np.float32)

    async def scenario():
        return await Batcher(model, max_batch_size=32)(images(1))

    assert asyncio.run(scenario())[:, 0].tolist() == [1]
    assert seen["comm"] == MODEL_THREAD == "convzoo-model"
    assert seen["python"].startswith(MODEL_THREAD)
    own = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
    assert own != MODEL_THREAD  # the caller's thread keeps its own name


def test_a_failing_deferred_request_fails_alone():
    async def scenario():
        model = RecordingModel()
        batcher = Batcher(model, max_batch_size=32)
        first = await _first_call_blocked(model, batcher)
        ok_before = asyncio.create_task(batcher(deferred(7)))
        bad = asyncio.create_task(batcher(deferred(8, error=ValueError("not an image"))))
        ok_after = asyncio.create_task(batcher(images(9)))
        await asyncio.sleep(0.05)
        model.gate.set()
        return model, await asyncio.gather(first, ok_before, bad, ok_after, return_exceptions=True)

    model, (first, ok_before, bad, ok_after) = asyncio.run(scenario())
    assert isinstance(bad, ValueError) and str(bad) == "not an image"
    assert first[:, 0].tolist() == [1] and ok_before[:, 0].tolist() == [7] and ok_after[:, 0].tolist() == [9]
    assert model.calls == [1, 2]  # the failed request's images never reached the model


def test_a_model_error_fails_exactly_the_requests_of_that_call():
    async def scenario():
        batcher = Batcher(RecordingModel(fail=True), max_batch_size=32)
        return await asyncio.gather(batcher(images(1)), batcher(deferred(2)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)


def test_the_batch_size_counts_deferred_images():
    async def scenario():
        model = RecordingModel()
        batcher = Batcher(model, max_batch_size=4)
        first = await _first_call_blocked(model, batcher)
        rest = [asyncio.create_task(batcher(deferred(i, i))) for i in range(2, 6)]  # 4 x 2 images
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *rest)
        return model.calls

    assert asyncio.run(scenario()) == [1, 4, 4]


def test_work_of_a_request_whose_client_went_away_is_skipped():
    async def scenario():
        model = RecordingModel()
        batcher = Batcher(model, max_batch_size=32)
        first = await _first_call_blocked(model, batcher)
        made: list[int] = []
        gone = asyncio.create_task(batcher(Deferred(1, lambda: made.append(1) or images(1))))
        kept = asyncio.create_task(batcher(deferred(2)))
        await asyncio.sleep(0.05)
        gone.cancel()
        model.gate.set()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return model.calls, made

    calls, made = asyncio.run(scenario())
    assert calls == [1, 1] and made == []


def test_a_lone_one_image_request_runs_at_once_in_the_callers_thread():
    """``at_once`` (one-CPU workers): no hand-over to the model's thread for a request that is alone
    and quick to decode, its metrics kept; a failing one fails alone, and the next one runs; one
    whose decoding is not quick goes to the model's thread even alone."""
    waits: list[float] = []
    batches: list[int] = []

    async def scenario():
        model = RecordingModel()
        batcher = Batcher(
            model, 32, on_batch=lambda size, s: batches.append(size), on_wait=waits.append, at_once=True
        )
        first = await batcher(deferred(7, quick=True))
        with pytest.raises(ValueError, match="bad upload"):
            await batcher(deferred(8, error=ValueError("bad upload"), quick=True))
        second = await batcher(images(9))
        slow_threads: set[int] = set()
        slow = await batcher(deferred(6, threads=slow_threads))  # decoding that is not quick
        return model, first, second, slow, slow_threads, threading.get_ident()

    model, first, second, slow, slow_threads, loop_thread = asyncio.run(scenario())
    assert first.tolist() == [[7.0]] and second.tolist() == [[9.0]] and slow.tolist() == [[6.0]]
    assert model.calls == [1, 1, 1] and loop_thread in model.threads and len(model.threads) == 2
    assert slow_threads and loop_thread not in slow_threads  # the big one went to the model's thread
    assert batches == [1, 1, 1] and len(waits) == 4


def test_at_once_still_batches_requests_that_arrive_together_or_beside_others():
    """Requests arriving in the same turn of the loop batch in the model's thread (never one by one
    in the loop), and so does a request while the process answers another one (``requests_now``)."""

    async def together():
        model = RecordingModel()
        batcher = Batcher(model, 32, at_once=True)
        model.gate = threading.Event()
        tasks = [asyncio.create_task(batcher(images(v))) for v in range(8)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*tasks)
        return model, results, threading.get_ident()

    model, results, loop_thread = asyncio.run(together())
    assert [r.tolist() for r in results] == [[[float(v)]] for v in range(8)]
    assert sum(model.calls) == 8 and len(model.calls) <= 2 and loop_thread not in model.threads

    async def beside_another():
        model = RecordingModel()
        batcher = Batcher(model, 32, at_once=True, requests_now=lambda: 2)  # this one and another
        result = await batcher(images(3))
        return model, result, threading.get_ident()

    model, result, loop_thread = asyncio.run(beside_another())
    assert result.tolist() == [[3.0]] and model.calls == [1] and loop_thread not in model.threads
