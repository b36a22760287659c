"""Data loading: class folders (seeded stratified split, odd image modes, label maps), TFDS, pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from training_helpers import CLASSES, PER_CLASS, make_folder

from training.data import SplitFractions, load_data, load_folder, pipeline, split_folder, tfds_splits
from training.end_to_end import Augmentation
from training.labels import IMAGENETTE_LABELS, human_labels, load_label_map

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("folder"))


def test_a_class_order_renumbers_the_classes_and_keeps_the_split(folder):
    """``class_order`` (a model's labels, matched to the folders by name) changes which number
    each class gets, never which image lands in which split."""
    sorted_split = split_folder(folder)
    order = list(reversed(CLASSES))
    split = split_folder(folder, class_order=order)
    assert split.class_ids == tuple(order)
    for name, items in split.files.items():
        assert [(path, order[label]) for path, label in items] == [
            (path, CLASSES[label]) for path, label in sorted_split.files[name]
        ]
    with pytest.raises(ValueError, match="is not the class folders"):
        split_folder(folder, class_order=[*CLASSES[:2], "other"])


def test_split_is_stratified_disjoint_and_complete(folder):
    split = split_folder(folder)
    assert split.class_ids == CLASSES
    counts = {
        name: np.bincount([label for _, label in items], minlength=3) for name, items in split.files.items()
    }
    assert list(counts["train"]) == [14, 14, 14]
    assert list(counts["validation"]) == [3, 3, 3] and list(counts["test"]) == [3, 3, 3]
    paths = [path for items in split.files.values() for path, _ in items]
    assert len(paths) == len(set(paths)) == 3 * PER_CLASS
    assert not any(path.endswith(".txt") for path in paths)


def relative_split(root: Path, fractions: SplitFractions = SplitFractions()) -> dict:
    """The split of ``root`` with paths relative to it (comparable across locations)."""
    files = split_folder(root, fractions).files
    return {name: [(Path(p).relative_to(root), y) for p, y in items] for name, items in files.items()}


def test_split_is_deterministic_and_follows_the_seed(folder, tmp_path):
    assert split_folder(folder) == split_folder(folder)
    # The same files elsewhere (another checkout, another machine) -> the same split.
    assert relative_split(make_folder(tmp_path / "copy")) == relative_split(folder)
    other = split_folder(folder, SplitFractions(seed=1))
    assert set(other.files["test"]) != set(split_folder(folder).files["test"])
    custom = split_folder(folder, SplitFractions(validation=0.1, test=0.2))
    assert [len(custom.files[s]) for s in ("train", "validation", "test")] == [42, 6, 12]


def test_bad_fractions_and_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        SplitFractions(validation=0.5, test=0.5)
    with pytest.raises(FileNotFoundError):
        split_folder(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    with pytest.raises(ValueError, match="two class"):
        split_folder(tmp_path)


def test_folder_yields_resized_rgb_uint8_with_imagenette_names(folder):
    data = load_folder(folder, SIZE)
    assert data.labels == ("tench", "English springer", "parachute")
    assert data.sizes == {"train": 42, "validation": 9, "test": 9}
    seen = 0
    for ds in data.splits.values():
        for image, label in ds:
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == tf.uint8
            assert label.dtype == tf.int32 and 0 <= int(label) < 3
            seen += 1
    assert seen == 3 * PER_CLASS  # the grayscale, palette and RGBA files decoded too
    assert "3 classes, train 42, validation 9, test 9" in data.describe()


def test_limit_caps_each_split(folder):
    data = load_folder(folder, SIZE, limit=5)
    assert data.sizes == {"train": 5, "validation": 5, "test": 5}
    assert sum(1 for _ in data.splits["train"]) == 5


def test_label_map_files(folder, tmp_path):
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps({c: f"class {i}" for i, c in enumerate(CLASSES)}))
    as_lines = tmp_path / "labels.txt"
    as_lines.write_text("# synset name\n" + "\n".join(f"{c} my class {i}" for i, c in enumerate(CLASSES)))
    assert load_label_map(as_lines)[CLASSES[2]] == "my class 2"
    data = load_data(str(folder), SIZE, labels_map=as_json)
    assert data.labels == ("class 0", "class 1", "class 2")
    with pytest.raises(ValueError, match="no name"):
        human_labels(["n01440764", "zebra"], load_label_map(as_json))
    assert human_labels(["cat", "dog"]) == ["cat", "dog"]  # not Imagenette: folder names as they are


def test_pipeline_batches_one_hot_and_reshuffles(folder):
    data = load_folder(folder, SIZE)
    train = pipeline(data.splits["train"], batch_size=8, num_classes=3, training=True, seed=3)
    images, labels = next(iter(train))
    assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == tf.uint8
    assert labels.shape == (8, 3) and labels.dtype == tf.float32
    np.testing.assert_array_equal(np.sum(labels, axis=1), 1.0)
    epoch = lambda: np.concatenate([np.argmax(y, axis=1) for _, y in train])  # noqa: E731
    first, second = epoch(), epoch()
    assert sorted(first) == sorted(second) and list(first) != list(second)
    validation = pipeline(data.splits["validation"], batch_size=4, num_classes=3)
    order = lambda: [int(np.argmax(y)) for _, ys in validation for y in ys]  # noqa: E731
    assert order() == order()


def test_mixup_and_cutmix_mix_labels_in_training_batches(folder):
    data = load_folder(folder, SIZE)
    for aug in (Augmentation(mixup=0.4), Augmentation(cutmix=1.0), Augmentation(mixup=0.4, cutmix=1.0)):
        train = pipeline(data.splits["train"], batch_size=14, num_classes=3, training=True, augmentation=aug)
        labels = np.concatenate([y for _, y in train])
        images, _ = next(iter(train))
        assert images.dtype == tf.float32
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
        assert ((labels > 0.01) & (labels < 0.99)).any(), aug  # some labels are mixtures
    # Evaluation pipelines never mix.
    validation = pipeline(data.splits["validation"], batch_size=9, num_classes=3, augmentation=aug)
    assert set(np.unique(next(iter(validation))[1])) == {0.0, 1.0}


def test_tfds_imagenette_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    assert tfds_splits(SplitFractions()) == {
        "train": "train[:70%]",
        "validation": "validation",
        "test": "train[70%:]",
    }
    with tfds.testing.mock_data(num_examples=6):
        data = load_data("imagenette", SIZE)
        assert data.class_ids == tuple(IMAGENETTE_LABELS)
        assert data.labels[0] == "tench" and data.num_classes == 10
        assert data.sizes == {"train": 6, "validation": 6, "test": 6}
        image, label = next(iter(data.splits["train"]))
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == tf.uint8 and label.dtype == tf.int32
        limited = load_data("imagenette", SIZE, limit=4)
        assert limited.sizes["test"] == 4 and sum(1 for _ in limited.splits["test"]) == 4


def test_real_imagenette_folder(shared_imagenette):
    split = split_folder(shared_imagenette)
    assert len(split.class_ids) == 10
    assert sum(len(items) for items in split.files.values()) == 9469
    assert human_labels(list(split.class_ids)) == list(IMAGENETTE_LABELS.values())
    data = load_folder(shared_imagenette, 64, limit=8)
    assert data.labels[0] == "tench"
    images = [image for image, _ in data.splits["validation"]]
    assert len(images) == 8 and all(i.shape == (64, 64, 3) for i in images)
