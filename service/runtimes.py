"""The runtimes that can serve an export, and which one does: TensorFlow or OpenVINO.

An export (``models/<name>/<version>/``) always holds the SavedModel, the canonical artifact that
TensorFlow (and TensorFlow Serving) runs. ``python -m training optimize`` adds faster forms for
CPUs beside it and describes each in ``metadata.json["runtimes"]`` (schema below):

    openvino/fp32/model.xml + model.bin   OpenVINO IR, fp32 weights (also served in bf16)
    openvino/int8/model.xml + model.bin   the same, int8-quantized (NNCF post-training)

Every derived form is the graph *after* the model's resize: uint8 ``[n, height, width, 3]`` at the
model's input size -> float32 probabilities. The service resizes each upload to that size before
batching (``service.serving.images``), so it loses nothing; TensorFlow keeps serving any size.

``CONVZOO_RUNTIME`` chooses (``choose``):

- ``auto`` (default): on a GPU, TensorFlow; on a CPU, the fastest entry (by the images/s that
  ``optimize`` measured) that passed the accuracy gate, whose files are intact, whose runtime is
  installed and whose precision this CPU runs natively (bf16 needs AVX512_BF16 or AMX); else
  TensorFlow fp32, with a warning saying why.
- ``tensorflow``, ``tensorflow-bf16``, ``openvino`` (its fastest passing entry), ``openvino-int8``,
  ``openvino-bf16``, ``openvino-fp32``: exactly that, or ``RuntimeUnavailable`` saying why in one
  line (the service then refuses to start).

The accuracy gate (``GATE``), measured by ``optimize`` on the held-out test split against the
SavedModel on the same images: top-1 at most 0.5 points below the SavedModel's, and the same top-1
answer on at least 98 % of the images.

``metadata.json["runtimes"][key]`` (key: ``tensorflow``, ``tensorflow-bf16``, ``openvino-fp32``,
``openvino-bf16``, ``openvino-int8``)::

    {"runtime": "openvino", "precision": "int8",
     "path": "openvino/int8",                          # absent for TensorFlow (the SavedModel)
     "files": {"model.xml": {"bytes": N, "sha256": H}, "model.bin": {...}},
     "config": {"INFERENCE_PRECISION_HINT": "f32"},    # OpenVINO compile settings
     "test": {"images": 1420, "top1": 0.85, "top5": 0.98, "agreement": 0.991},
     "gate": {"passed": true, "top1_drop": -0.002, "agreement": 0.991, "rule": "..."},
     "speed": {"batch1_ms": 1.4, "batch32_images_per_s": 790, "cpus": 2, "cpu": "..."}}

TensorFlow is imported only when TensorFlow serves: with OpenVINO the service process never
loads it (tests/test_runtimes.py checks the served process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service import repository
from service.config import cpu_count

logger = logging.getLogger("bentoml.convzoo")

Predict = Callable[[np.ndarray], np.ndarray]
"""uint8 images ``[n, height, width, 3]`` at the model's input size -> float32 ``[n, classes]``."""

KEYS = ("tensorflow", "tensorflow-bf16", "openvino-fp32", "openvino-bf16", "openvino-int8")
CHOICES = (
    "auto",
    "tensorflow",
    "tensorflow-bf16",
    "openvino",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
)
OPENVINO_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` per precision: int8 keeps its non-quantized layers in
f32 (on a bf16-capable CPU OpenVINO would otherwise pick bf16 for them by itself)."""


@dataclass(frozen=True)
class Gate:
    """What a derived form must show on the held-out test split to serve in ``auto``."""

    max_top1_drop: float = 0.005
    min_agreement: float = 0.98

    @property
    def rule(self) -> str:
        return (
            f"top-1 at most {100 * self.max_top1_drop:.1f} points below the SavedModel's and the "
            f"same top-1 answer on at least {100 * self.min_agreement:.0f} % of the test images"
        )

    def judge(self, top1: float, reference_top1: float, agreement: float) -> dict:
        drop = reference_top1 - top1
        passed = drop <= self.max_top1_drop + 1e-9 and agreement >= self.min_agreement
        return {
            "passed": bool(passed),
            "top1_drop": round(drop, 6),
            "agreement": round(agreement, 6),
            "rule": self.rule,
        }


GATE = Gate()


class RuntimeUnavailable(RuntimeError):
    """The requested runtime cannot serve this export; the message says why in one line."""


@dataclass(frozen=True)
class Choice:
    """What serves: ``key`` (``openvino-int8``...), and why it was chosen."""

    key: str
    runtime: str
    precision: str
    path: Path | None  # the artifact's folder; None: the SavedModel
    config: dict
    reason: str
    skipped: tuple[str, ...] = ()  # faster forms passed over, each "key: why"


# ------------------------------------------------------------------------------- choosing


def choose(requested: str, metadata: dict, folder: str | Path, *, gpus: int = 0) -> Choice:
    """The runtime to serve the export in ``folder`` with (module docstring); never loads it."""
    folder = Path(folder)
    requested = (requested or "auto").strip().lower()
    if requested not in CHOICES:
        raise RuntimeUnavailable(f"CONVZOO_RUNTIME={requested!r} is not one of: {', '.join(CHOICES)}")
    entries = metadata.get("runtimes") or {}
    if requested == "tensorflow":
        _require_tensorflow(f"CONVZOO_RUNTIME=tensorflow cannot serve {folder}")
        return _tensorflow("requested (CONVZOO_RUNTIME=tensorflow)")
    if requested == "auto" and gpus:
        return _tensorflow(f"auto: {gpus} GPU(s), TensorFlow serves on GPU")
    if requested == "auto":
        candidates = [key for key in KEYS if key in entries and key != "tensorflow"]
    elif requested == "openvino":
        candidates = [key for key in KEYS if key.startswith("openvino-") and key in entries]
        if not candidates:
            raise RuntimeUnavailable(
                f"CONVZOO_RUNTIME=openvino: {folder} has no OpenVINO artifact; create them with "
                f"`python -m training optimize {folder}`"
            )
    else:
        candidates = [requested]
    ranked = sorted(candidates, key=lambda key: -_speed(entries.get(key, {})))
    problems = []
    for key in ranked:
        problem = unusable(key, entries.get(key), folder)
        if problem is None:
            entry = entries[key]
            how = (
                "auto: the fastest form that passed the accuracy gate"
                if requested == "auto"
                else f"requested (CONVZOO_RUNTIME={requested})"
            )
            if problems:
                how += " (skipped: " + "; ".join(problems) + ")"
            return Choice(
                key,
                entry["runtime"],
                entry["precision"],
                folder / entry["path"] if entry.get("path") else None,
                dict(entry.get("config") or {}),
                how,
                tuple(problems),
            )
        problems.append(f"{key}: {problem}")
    if requested != "auto":
        raise RuntimeUnavailable(f"CONVZOO_RUNTIME={requested} cannot serve {folder}: " + "; ".join(problems))
    reason = "auto: " + (
        "; ".join(problems)
        if problems
        else f"no faster form in metadata.json (`python -m training optimize {folder}` makes them)"
    )
    _require_tensorflow(f"cannot serve {folder}: {reason}")
    return _tensorflow(reason + " -> TensorFlow fp32", tuple(problems))


def _require_tensorflow(context: str) -> None:
    """A CPU Bento carries OpenVINO only (bentofile.yaml): TensorFlow may be absent."""
    if not _installed("tensorflow"):
        raise RuntimeUnavailable(f"{context}; and TensorFlow is not installed here")


def unusable(key: str, entry: dict | None, folder: Path) -> str | None:
    """Why the entry ``key`` cannot serve here (missing, gate failed, corrupt, ...), or None."""
    if not entry:
        return "not in metadata.json (`python -m training optimize` creates it)"
    if not (entry.get("gate") or {}).get("passed", False):
        gate = entry.get("gate") or {}
        return (
            f"failed the accuracy gate (top-1 {-100 * gate.get('top1_drop', float('nan')):+.2f} points "
            f"vs the SavedModel, {100 * gate.get('agreement', float('nan')):.1f} % same answers)"
        )
    if entry["precision"] == "bf16" and not cpu_has_bf16():
        return "this CPU has no native bf16 (AVX512_BF16 or AMX)"
    if not _installed(entry["runtime"]):
        return f"the {entry['runtime']} package is not installed"
    if entry.get("path"):
        return repository.checksum_problem(folder / entry["path"], entry.get("files") or {})
    return None


def _tensorflow(reason: str, skipped: tuple[str, ...] = ()) -> Choice:
    """The SavedModel on TensorFlow, fp32 (``tensorflow-bf16`` is chosen through its entry)."""
    return Choice("tensorflow", "tensorflow", "fp32", None, {}, reason, skipped)


def _speed(entry: dict) -> float:
    return float((entry.get("speed") or {}).get("batch32_images_per_s") or 0.0)


def _installed(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(runtime) is not None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), for the records of measurements."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded on a runtime, called like a ``Predict``. It holds what owns the weights, so
    they live as long as the function that uses them."""

    predict: Predict
    saved_model: Any = None
    """TensorFlow: the loaded SavedModel (its other signatures, e.g. ``serve_bytes``, too)."""
    compiled: Any = None
    """OpenVINO: the compiled model."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)


def load(choice: Choice, folder: str | Path, threads: int | None = None) -> LoadedModel:
    """A numpy function for the chosen runtime (the export in ``folder``), running on ``threads``
    threads (default: as many as this process has CPUs)."""
    if choice.runtime == "tensorflow":
        return load_tensorflow(Path(folder), bf16=choice.precision == "bf16", threads=threads)
    return load_openvino(choice.path / "model.xml", choice.config, threads=threads)


def load_tensorflow(folder: Path, *, bf16: bool = False, threads: int | None = None) -> LoadedModel:
    """The SavedModel's ``serving_default`` (any input size); with ``bf16``, TensorFlow's oneDNN
    automatic mixed precision (a process-wide setting, made before the model is loaded); with
    ``threads``, TensorFlow's op pools sized to it (process-wide, before its first op)."""
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already ran an op in this process: its pools stay
            pass

    if bf16:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    saved_model = tf.saved_model.load(str(folder))
    serving_default = saved_model.signatures["serving_default"]

    def predict(images: np.ndarray) -> np.ndarray:
        return serving_default(images=tf.constant(images))["probabilities"].numpy()

    return LoadedModel(predict, saved_model=saved_model)


def load_openvino(model_xml: Path, config: dict | None = None, threads: int | None = None) -> LoadedModel:
    """An OpenVINO IR compiled for this CPU: one stream, as many threads as this process has CPUs
    (``threads`` to override), latency-first; ``config`` adds compile settings (precision)."""
    import openvino as ov

    settings = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads or cpu_count(),
        **(config or {}),
    }
    compiled = ov.Core().compile_model(str(model_xml), "CPU", settings)
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def predict(images: np.ndarray) -> np.ndarray:
        with lock:  # one request object: its output buffer is reused by the next call
            return np.array(request.infer({0: np.ascontiguousarray(images)})[0], copy=True)

    return LoadedModel(predict, compiled=compiled)


def signature_problem(model: LoadedModel, input_size: tuple[int, int], classes: int) -> str | None:
    """Why the loaded ``model`` does not match its ``metadata.json``, or None: its input must take
    uint8 ``[n, height, width, 3]`` at ``input_size`` (the SavedModel: any height and width), and
    one image must give ``classes`` float probabilities (``labels``: one per output)."""
    height, width = input_size
    expected = [None, height, width, 3]
    if model.saved_model is not None:
        inputs = model.saved_model.signatures["serving_default"].structured_input_signature[1]
        spec = inputs.get("images")
        if spec is None or len(inputs) != 1 or spec.dtype.name != "uint8" or spec.shape.rank != 4:
            return f"serving_default takes {inputs}, not one uint8 'images' [n, height, width, 3]"
        shape = spec.shape.as_list()
    elif model.compiled is not None:
        inputs = model.compiled.inputs
        if len(inputs) != 1 or inputs[0].get_element_type().get_type_name() != "u8":
            return f"the OpenVINO model takes {[str(i) for i in inputs]}, not one uint8 image tensor"
        partial = inputs[0].get_partial_shape()
        if partial.rank.is_dynamic or partial.rank.get_length() != 4:
            return f"the OpenVINO model's input has shape {partial}, not [n, height, width, 3]"
        shape = [d.get_length() if d.is_static else None for d in partial]
    else:
        shape = expected
    if any(got not in (None, want) and want is not None for got, want in zip(shape, expected, strict=True)):
        return f"the model's input is {shape}; metadata.json says [n, {height}, {width}, 3] (input_size)"
    try:
        output = np.asarray(model(np.zeros((1, height, width, 3), np.uint8)))
    except Exception as error:
        return f"the model fails on one {width}x{height} image ({type(error).__name__}: {str(error)[:200]})"
    if output.shape != (1, classes) or output.dtype.kind != "f":
        return (
            f"the model gives {output.dtype} {list(output.shape)} for one image; metadata.json has "
            f"{classes} labels, so [1, {classes}] probabilities are expected"
        )
    return None


def warm_up(predict: Predict, input_size: tuple[int, int], max_batch_size: int) -> None:
    """Run every batch size the batcher can form once, so no request pays for the first call at a
    new shape (oneDNN, under TensorFlow and OpenVINO, builds its kernels per shape)."""
    height, width = input_size
    for size in range(1, max_batch_size + 1):
        predict(np.zeros((size, height, width, 3), np.uint8))


def release_free_memory() -> None:
    """Give the memory that C libraries freed back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). Warming a model up at 32 batch sizes frees ~100-180 MB of OpenVINO buffers that
    glibc would otherwise keep: trimmed, an extra int8 model costs its weights + ~40 MB of RSS
    instead of ~190 MB (README.md, "Model repository")."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def describe(choice: Choice) -> dict[str, Any]:
    """What ``/metadata`` says under ``runtime``."""
    return {
        "name": choice.runtime,
        "precision": choice.precision,
        "key": choice.key,
        "artifact": str(choice.path.relative_to(choice.path.parents[1])) if choice.path else "saved_model.pb",
        "reason": choice.reason,
    }
