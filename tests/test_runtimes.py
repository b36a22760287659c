"""Fast CPU runtimes: ``python -m training optimize`` and the service's choice of runtime.

A small zoo model (the service tests' LeNet-5 at 48x48, random weights sharpened so its answers
are decisive) gets real OpenVINO fp32 and int8 forms, calibrated on real photos when ../shared is
there (generated ones otherwise). Checked: the forms agree with the SavedModel on real images,
the gate refuses a form whose weights were zeroed, ``service.runtimes.choose`` picks and refuses
as documented, and a real ``bentoml serve`` serves each runtime over HTTP, never loading
TensorFlow with OpenVINO, refusing a truncated artifact when it is asked for by name and falling
back to TensorFlow under ``auto``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import service_files as files
from helpers import LABELS, Server, classify, expect, export_test_model, server_env

from service import repository, runtimes

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SIZE = (48, 48)


# ---------------------------------------------------------------------------------- fixtures


def real_or_generated_images(count: int, offset: int, data_dir: Path | None) -> np.ndarray:
    """``count`` uint8 images at 48x48: real photos resized like training does, else generated."""
    if data_dir is None:
        return np.stack([np.asarray(files.photo(SIZE, seed=1000 * offset + i)) for i in range(count)])
    import tensorflow as tf

    from training.data import decode_and_resize

    paths = sorted(data_dir.glob("*/*.JPEG"))[offset::37][:count]
    return np.stack([decode_and_resize(tf.io.read_file(str(p)), SIZE).numpy() for p in paths])


@pytest.fixture(scope="module")
def data_dir():
    from helpers import SHARED_DATA

    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="module")
def held_out(data_dir):
    from training.optimize import HeldOut

    test_images = real_or_generated_images(120, 1, data_dir)
    return HeldOut(
        calibration=real_or_generated_images(64, 0, data_dir),
        test_images=test_images,
        test_labels=np.arange(len(test_images)) % len(LABELS),
        source={"data": "tests"},
    )


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, held_out) -> Path:
    """The service tests' model exported, then optimized (fp32 and int8; bf16 where native)."""
    import training.optimize
    from training.optimize import optimize_export

    folder = export_test_model(tmp_path_factory.mktemp("models"))
    # The test model has random weights (sharpened): its int8 form agrees with it on only 81-92 %
    # of these images (measured with OpenVINO 2026.4.1 / NNCF 3.4.0), under the gate's 98 % for
    # trained models. These tests are about choosing, loading and checking forms, so the gate they
    # are optimized under is wider, and metadata.json records that rule (the gate's own behaviour:
    # test_the_gate_refuses_a_form_with_zeroed_weights below).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.optimize, "GATE", runtimes.Gate(max_top1_drop=0.05, min_agreement=0.75))
        optimize_export(folder, held_out, speed_seconds=0.2, log=lambda line: None)
    return folder


def metadata_of(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())


# ------------------------------------------------------------------------------- optimize


def test_optimize_writes_measured_forms_beside_the_saved_model(optimized):
    metadata = metadata_of(optimized)
    entries = metadata["runtimes"]
    assert {"tensorflow", "openvino-fp32", "openvino-int8"} <= set(entries)
    assert (optimized / "saved_model.pb").is_file()  # the canonical artifact is untouched
    for key in ("openvino-fp32", "openvino-int8"):
        entry = entries[key]
        assert repository.checksum_problem(optimized / entry["path"], entry["files"]) is None
        assert entry["test"]["images"] == 120
        assert 0 <= entry["test"]["top1"] <= entry["test"]["top5"] <= 1
        assert entry["speed"]["batch32_images_per_s"] > 0
    assert entries["tensorflow"]["test"]["agreement"] == 1.0
    assert entries["openvino-fp32"]["gate"]["passed"]
    assert entries["openvino-fp32"]["test"]["agreement"] == 1.0
    int8_bytes = sum(f["bytes"] for f in entries["openvino-int8"]["files"].values())
    fp32_bytes = sum(f["bytes"] for f in entries["openvino-fp32"]["files"].values())
    assert int8_bytes < 0.5 * fp32_bytes  # int8 weights


def test_openvino_forms_agree_with_the_saved_model_on_images(optimized, held_out):
    """Parity on images the model was not calibrated on: fp32 equal up to float noise, int8
    the same top-1 on nearly every image and probabilities close."""
    from training.optimize import predict_all

    images = held_out.test_images
    reference = predict_all(runtimes.load_tensorflow(optimized), images)
    assert len(set(reference.argmax(axis=1))) >= 3, "the test model must answer differently per image"
    fp32 = predict_all(
        runtimes.load_openvino(optimized / "openvino/fp32/model.xml", {"INFERENCE_PRECISION_HINT": "f32"}),
        images,
    )
    np.testing.assert_allclose(fp32, reference, atol=1e-4)
    int8 = predict_all(
        runtimes.load_openvino(optimized / "openvino/int8/model.xml", {"INFERENCE_PRECISION_HINT": "f32"}),
        images,
    )
    assert np.mean(int8.argmax(axis=1) == reference.argmax(axis=1)) >= 0.9
    assert np.median(np.abs(int8 - reference).max(axis=1)) < 0.1


def test_the_gate_refuses_a_form_with_zeroed_weights(optimized, held_out, tmp_path):
    import openvino as ov

    from training.optimize import Reference, measure, predict_all

    model = ov.Core().read_model(optimized / "openvino/fp32/model.xml")
    for op in model.get_ops():  # every convolution and dense kernel set to 0
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f32 and len(op.shape) >= 2:
            zeros = ov.op.Constant(np.zeros(tuple(op.shape), np.float32))
            op.output(0).replace(zeros.output(0))
    broken = tmp_path / "fp32"
    ov.save_model(model, str(broken / "model.xml"), compress_to_fp16=False)
    reference = Reference.of(
        predict_all(runtimes.load_tensorflow(optimized), held_out.test_images), held_out.test_labels
    )
    predict = runtimes.load_openvino(broken / "model.xml")
    entry = measure(
        predict,
        "openvino",
        "fp32",
        held_out,
        reference,
        0.1,
        path="openvino/fp32",
        files=repository.file_records(broken),
    )
    assert not entry["gate"]["passed"]
    assert entry["test"]["agreement"] < 0.98
    metadata = copy.deepcopy(metadata_of(optimized))
    metadata["runtimes"] = {"openvino-fp32": entry}
    with pytest.raises(runtimes.RuntimeUnavailable, match="failed the accuracy gate"):
        runtimes.choose("openvino-fp32", metadata, optimized)
    assert runtimes.choose("auto", metadata, optimized).runtime == "tensorflow"


def test_optimize_command_refuses_a_folder_that_is_not_an_export(tmp_path, capsys):
    from training.__main__ import main

    assert main(["optimize", str(tmp_path)]) == 2
    assert "is not an export" in capsys.readouterr().err


def test_optimize_command_leaves_a_measured_version_alone_without_rewrite(tmp_path, capsys):
    """``python -m training optimize models/imagenette/2`` (a README command) rewrote the
    committed default model's files: a version whose runtimes are measured is now left as it
    is, byte for byte, unless ``--rewrite`` says so."""
    from training.__main__ import main

    copy = tmp_path / "imagenette" / "2"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "imagenette" / "2", copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert main(["optimize", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has its runtimes measured" in err[0] and "--rewrite" in err[0]
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_optimize_command_asks_for_data_an_import_does_not_record(tmp_path, capsys):
    """The hint for an import without --data (``python -m training optimize models/mine/1``) gets
    a one-line answer that says what to give, not 'not recorded is not a folder here'."""
    from training.__main__ import main

    copy = tmp_path / "mine" / "1"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "imagenette" / "2", copy)
    metadata = metadata_of(copy)
    for key in ("runtimes", "runtimes_data", "training", "run"):
        metadata.pop(key, None)
    repository.write_json(copy / "metadata.json", metadata)
    assert main(["optimize", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {copy} records no dataset: give --data FOLDER, class sub-folders named like its labels"
    ], err


# --------------------------------------------------------------------------------- choose


def test_choose_auto_takes_the_fastest_form_that_passed(optimized):
    metadata = metadata_of(optimized)
    choice = runtimes.choose("auto", metadata, optimized)
    passed = {
        k: e
        for k, e in metadata["runtimes"].items()
        if k != "tensorflow" and e["gate"]["passed"] and (e["precision"] != "bf16" or runtimes.cpu_has_bf16())
    }
    fastest = max(passed, key=lambda k: passed[k]["speed"]["batch32_images_per_s"])
    assert choice.key == fastest
    assert runtimes.choose("auto", metadata, optimized, gpus=1).key == "tensorflow"
    assert runtimes.choose("tensorflow", metadata, optimized).key == "tensorflow"
    assert runtimes.choose("openvino", metadata, optimized).runtime == "openvino"


def test_choose_without_faster_forms_falls_back_or_refuses(optimized):
    bare = {k: v for k, v in metadata_of(optimized).items() if k != "runtimes"}
    choice = runtimes.choose("auto", bare, optimized)
    assert (choice.key, choice.runtime) == ("tensorflow", "tensorflow")
    assert "optimize" in choice.reason
    with pytest.raises(runtimes.RuntimeUnavailable, match="no OpenVINO artifact"):
        runtimes.choose("openvino", bare, optimized)
    with pytest.raises(runtimes.RuntimeUnavailable, match="not one of"):
        runtimes.choose("tensorrt", bare, optimized)


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped"])
def test_choose_checks_the_artifact_files(optimized, tmp_path, damage):
    copy_dir = tmp_path / "2"
    shutil.copytree(optimized, copy_dir)
    weights = copy_dir / "openvino/int8/model.bin"
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    metadata = metadata_of(copy_dir)
    expected = {"missing": "is missing", "truncated": "truncated", "flipped": "SHA-256"}[damage]
    with pytest.raises(runtimes.RuntimeUnavailable, match=expected):
        runtimes.choose("openvino-int8", metadata, copy_dir)
    assert runtimes.choose("auto", metadata, copy_dir).key != "openvino-int8"


# ------------------------------------------------------------------------- served over HTTP


PHOTOS = [
    ("photo.jpg", files.encode(files.photo((300, 200)), "JPEG")),
    ("gray.png", files.encode(files.photo((64, 96), seed=2).convert("L"), "PNG")),
    ("wide.jpg", files.encode(files.photo((400, 120), seed=3), "JPEG")),
]


def start(optimized: Path, tmp_path: Path, runtime: str) -> Server:
    env = {**server_env(optimized, tmp_path / "bentoml_home"), "CONVZOO_RUNTIME": runtime}
    return Server([], env, tmp_path / f"serve-{runtime}.log")


def served(server: Server) -> tuple[dict, list[dict]]:
    metadata = expect(requests.post(f"{server.url}/metadata", json={}, timeout=30), 200, server)
    return metadata, expect(classify(server, PHOTOS), 200, server)


def loaded_libraries(server: Server) -> str:
    """Every shared library mapped by the server's processes (the worker holds the model)."""
    import psutil

    parent = psutil.Process(server.process.pid)
    maps = []
    for process in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(OSError):
            maps.append(Path(f"/proc/{process.pid}/maps").read_text())
    return "\n".join(maps)


def test_service_serves_each_runtime_with_the_same_answers(optimized, tmp_path):
    answers = {}
    for runtime in ("openvino-int8", "openvino-fp32", "tensorflow"):
        server = start(optimized, tmp_path, runtime)
        try:
            server.wait_ready()
            metadata, answers[runtime] = served(server)
            libraries = loaded_libraries(server)
        finally:
            server.stop()
        assert metadata["runtime"]["key"] == runtime
        assert ("libtensorflow" in libraries) == (runtime == "tensorflow"), runtime
        assert f"with {metadata['runtime']['name']} {metadata['runtime']['precision']}" in server.log_tail(
            200
        )
    for runtime, tolerance in (("openvino-fp32", 1e-4), ("openvino-int8", 0.1)):
        for got, want in zip(answers[runtime], answers["tensorflow"], strict=True):
            scores = {entry["label"]: entry["score"] for entry in want["top_k"]}
            if runtime == "openvino-fp32":
                assert got["label"] == want["label"]
            for entry in got["top_k"][:2]:  # int8 may swap a near tie; its scores stay close
                assert abs(entry["score"] - scores.get(entry["label"], 0.0)) < tolerance, (runtime, got, want)


def test_service_with_a_truncated_artifact(optimized, tmp_path):
    """Asked for by name: the service refuses to start with one line. ``auto``: TensorFlow serves,
    with a warning naming the problem."""
    repo = tmp_path / "models"
    shutil.copytree(optimized.parent, repo / optimized.parent.name)
    folder = repo / optimized.parent.name / optimized.name
    for key in ("openvino-int8", "openvino-fp32"):  # every OpenVINO form broken
        weights = folder / metadata_of(folder)["runtimes"][key]["path"] / "model.bin"
        weights.write_bytes(weights.read_bytes()[:1000])
    # Only the OpenVINO forms compete in auto: TensorFlow's bf16, timed in 0.2 s, could rank first on
    # a loaded CPU with bf16 and be chosen without looking at them (this test failed so, by chance).
    metadata = metadata_of(folder)
    metadata["runtimes"].pop("tensorflow-bf16", None)
    repository.write_json(folder / "metadata.json", metadata)
    server = start(folder, tmp_path, "openvino-int8")
    lines = server.refusal_lines()
    assert len(lines) == 1 and "truncated" in lines[0] and "openvino-int8" in lines[0], server.log_tail()

    server = start(folder, tmp_path, "auto")
    try:
        server.wait_ready()
        metadata, answers = served(server)
    finally:
        server.stop()
    assert metadata["runtime"]["name"] == "tensorflow"
    assert "truncated" in metadata["runtime"]["reason"]
    assert len(answers) == len(PHOTOS) and all(a["label"] in LABELS for a in answers)


@pytest.mark.slow  # about a minute: the default model's forms, calibrated and measured again
def test_optimize_command_on_a_copy_of_the_default_model(tmp_path, data_dir):
    """``python -m training optimize`` finds the data and split the default model records (its
    pack) and rewrites the forms, whose gate passes, leaving the SavedModel as it was."""
    if data_dir is None:
        pytest.skip("the real data is not here")
    from training.__main__ import main as cli

    copy = tmp_path / "imagenette" / "2"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "imagenette" / "2", copy)
    assert cli(["optimize", str(copy), "--rewrite", "--calibration", "64", "--limit", "300"]) == 0
    entries = metadata_of(copy)["runtimes"]
    assert entries["openvino-int8"]["test"]["images"] == 300 and entries["openvino-int8"]["gate"]["passed"]
    assert runtimes.choose("auto", metadata_of(copy), copy).key in ("openvino-int8", "openvino-bf16")
    assert repository.checksum_problem(copy, metadata_of(copy)["files"]) is None  # the SavedModel untouched
