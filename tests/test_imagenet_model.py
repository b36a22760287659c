"""The ImageNet-1k model shipped in models/imagenet/ (``python -m training imagenet``): EfficientNet-
Lite0 with its own 1000-class head and the weights package's weights, served beside Imagenette's.

Checks the repository contract, that only forms that passed the gate ship, the size budget, and
real photos through the SavedModel (skipped without ../shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from service import repository
from training.data import split_folder
from training.labels import imagenet1k_labels, imagenet_indices

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "models" / "imagenet" / "1"
MAX_BYTES = 60 * 1024 * 1024


def test_metadata_follows_the_contract_with_the_thousand_imagenet_names():
    metadata = repository.read_metadata(FOLDER)
    assert (metadata["name"], metadata["version"], metadata["architecture"]) == (
        "imagenet",
        1,
        "efficientnet_lite0",
    )
    assert metadata["labels"] == imagenet1k_labels() and len(set(metadata["labels"])) == 1000
    assert metadata["input_size"] == [224, 224]
    evaluation = metadata["evaluation"]
    # The measured scaling: the builder's (x - 127) / 128 is the best of the four on real photos.
    scalings = evaluation["scalings"]
    assert scalings["lite"]["top1"] == max(s["top1"] for s in scalings.values())
    assert scalings["lite"]["top1"] - scalings["imagenet"]["top1"] > 0.05
    assert metadata["metrics"]["top1"] == evaluation["top1"] > 0.7
    assert evaluation["top1_among_dataset_classes"] > 0.98


def test_only_forms_that_passed_the_gate_ship_and_the_folder_fits_the_budget():
    metadata = json.loads((FOLDER / "metadata.json").read_text())
    for key, entry in metadata["runtimes"].items():
        assert entry["gate"]["passed"] or "path" not in entry, key
        if "path" in entry:
            assert repository.checksum_problem(FOLDER / entry["path"], entry["files"]) is None
    for key, entry in metadata.get("runtimes_not_shipped", {}).items():
        assert not entry["gate"]["passed"] and not (FOLDER / entry["path"]).exists(), key
    assert any(e["runtime"] == "openvino" for e in metadata["runtimes"].values())
    assert sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file()) < MAX_BYTES


def test_held_out_photos_get_their_imagenet_class(shared_imagenette):
    """One test-split photo per Imagenette class through ``serve_bytes``: the right ImageNet
    class among the top 5 of 1000 (the whole test split: top-5 0.939, metadata.json)."""
    split = split_folder(shared_imagenette)
    picked: dict[int, str] = {}
    for path, label in split.files["test"]:
        picked.setdefault(label, path)
    rows = imagenet_indices(split.class_ids)
    model = tf.saved_model.load(str(FOLDER))
    encoded = tf.constant([Path(picked[label]).read_bytes() for label in sorted(picked)])
    probabilities = model.signatures["serve_bytes"](image_bytes=encoded)["probabilities"].numpy()
    assert probabilities.shape == (10, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    hits = [rows[label] in top5[i] for i, label in enumerate(sorted(picked))]
    assert sum(hits) >= 9, hits
