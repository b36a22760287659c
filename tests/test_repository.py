"""The model repository contract (``service.repository``, docs/design.md "Contract 1"): versions,
the metadata schema, checksums of every exported file, atomic writes; and the service refusing an
export whose variables shard has one flipped byte, with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service import repository
from service.repository import InvalidExport
from service.serving.model_store import check_export

REPO = Path(__file__).resolve().parents[1]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_export_records_every_file_of_its_saved_model(exported_model):
    metadata = repository.read_metadata(exported_model)
    files = metadata["files"]
    assert {"saved_model.pb", "fingerprint.pb", "variables/variables.index"} <= set(files)
    assert any(name.startswith("variables/variables.data-") for name in files)
    assert "metadata.json" not in files
    assert repository.checksum_problem(exported_model, files) is None
    for name, record in files.items():
        assert record["bytes"] == (exported_model / name).stat().st_size


def test_checksums_see_a_flipped_byte_in_a_variables_shard(exported_model, tmp_path):
    copy = tmp_path / "m" / "1"
    shutil.copytree(exported_model, copy)
    shard = next((copy / "variables").glob("variables.data-*"))
    flip_a_byte(shard)
    problem = repository.checksum_problem(copy, repository.read_metadata(copy)["files"])
    assert problem == f"{shard} does not match its recorded SHA-256 (corrupt)"
    with pytest.raises(InvalidExport, match="SHA-256"):
        check_export(copy)


def test_the_service_refuses_a_corrupt_export_with_one_line(exported_model, tmp_path):
    from helpers import Server, server_env

    models = tmp_path / "models"
    copy = models / exported_model.parent.name / exported_model.name
    shutil.copytree(exported_model, copy)
    flip_a_byte(next((copy / "variables").glob("variables.data-*")))
    server = Server([], server_env(copy, tmp_path / "bentoml_home"), tmp_path / "serve.log")
    lines = server.refusal_lines()
    assert len(lines) == 1 and "variables.data-" in lines[0] and "SHA-256" in lines[0], server.log_tail()


def test_the_default_model_matches_its_checksums():
    folder = REPO / "models" / "imagenette" / str(repository.latest_version(REPO / "models", "imagenette"))
    metadata = repository.read_metadata(folder)
    assert repository.checksum_problem(folder, metadata["files"]) is None
    check_export(folder)


def test_versions_complete_latest_and_next(tmp_path):
    for version, complete in ((1, True), (2, False), (3, True)):
        folder = tmp_path / "m" / str(version)
        folder.mkdir(parents=True)
        if complete:
            (folder / "saved_model.pb").write_bytes(b"")
            (folder / "metadata.json").write_text("{}")
    (tmp_path / "m" / ".tmp-4-123").mkdir()  # an interrupted export is no version
    assert repository.version_folders(tmp_path, "m") == [1, 2, 3]
    assert repository.complete_versions(tmp_path, "m") == [1, 3]
    assert repository.latest_version(tmp_path, "m") == 3
    assert repository.next_version(tmp_path, "m") == 4
    assert repository.next_version(tmp_path, "m", 7) == 7
    with pytest.raises(FileExistsError, match="never overwritten"):
        repository.next_version(tmp_path, "m", 2)
    assert repository.version_folders(tmp_path, "../m") == []
    assert repository.model_names(tmp_path) == ["m"]


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"labels": []}, "no list of class names"),
        ({"labels": ["a", "a"]}, "not distinct"),
        ({"input_size": [128]}, "not \\[height, width\\]"),
        ({"name": "../etc"}, "not a model name"),
        ({"version": 0}, "not a positive integer"),
        ({"metrics": {"top1": 1.5, "top5": None}}, "not a fraction"),
        ({"files": {"saved_model.pb": {"bytes": 1}}}, "'files'"),
    ],
)
def test_the_metadata_schema_names_the_problem(exported_model, change, problem):
    metadata = {**repository.read_metadata(exported_model), **change}
    with pytest.raises(repository.InvalidExport, match=problem):
        repository.validate_metadata(metadata, "here")
    missing = {k: v for k, v in metadata.items() if k != "flops"}
    with pytest.raises(repository.InvalidExport, match="lacks required keys: 'flops'"):
        repository.validate_metadata(missing, "here")


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "metadata.json"
    repository.write_json(path, {"a": 1})
    repository.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]  # no temporary left behind


def test_replace_folder_publishes_a_hidden_sibling_in_place(tmp_path):
    """``training.optimize.write_ir`` publishes the OpenVINO folders this way."""
    folder = tmp_path / "fp32"
    for value in ("old", "new"):
        tmp = tmp_path / f".tmp-fp32-{value}"
        tmp.mkdir()
        (tmp / "model.xml").write_text(value)
        repository.replace_folder(tmp, folder)
        assert (folder / "model.xml").read_text() == value
        assert [p.name for p in tmp_path.iterdir()] == ["fp32"]  # nothing hidden left behind


def test_the_repository_contract_needs_neither_bentoml_nor_the_rest_of_service():
    """``service.repository`` and ``service.runtimes`` are the model-repository contract that
    ``training`` uses too (docs/design.md): importing them loads no BentoML, no TensorFlow, no
    OpenVINO, and of ``service/`` only ``service.config`` (itself standard library only)."""
    code = (
        "import json, sys\n"
        "import service.repository, service.runtimes\n"
        "roots = ('bentoml', '_bentoml_sdk', '_bentoml_impl', 'service', 'tensorflow', 'openvino', 'keras')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in roots)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert json.loads(loaded) == [
        "service",
        "service.config",
        "service.repository",
        "service.repository.containment",
        "service.repository.files",
        "service.repository.layout",
        "service.repository.schema",
        "service.runtimes",
    ]
