"""Datasets for training: a folder of class sub-folders, or TensorFlow Datasets' Imagenette.

    data = load_data("/work/shared/data/imagenette2-train", image_size=128)   # or "imagenette"
    print(data.describe())
    train = pipeline(data.splits["train"], batch_size=64, num_classes=data.num_classes,
                     training=True, augmentation=Augmentation(mixup=0.2))

Folders are split per class with a fixed seed (70% / 15% / 15% by default): file lists are sorted
and permuted by NumPy's PCG64 generator, so the split is the same on every run and machine.
TFDS ``imagenette`` keeps the official ``validation`` split for validation and holds out the end of
``train`` (``train[70%:]`` by default) as the test split.

Every split yields ``(uint8 image [h, w, 3], int32 label)``, decoded to RGB (grayscale, palette and
RGBA files included) and resized once with ``training.end_to_end.resize_images`` (so the model's own
resize layer is an identity during training); staying uint8 keeps the in-memory cache compact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.end_to_end import Augmentation, image_hw, resize_images
from training.labels import human_labels, load_label_map
from training.mixing import batch_mixers, mix_one

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})
SPLITS = ("train", "validation", "test")
TFDS_NAME = "imagenette"


@dataclass(frozen=True)
class SplitFractions:
    """Shares of each class held out for validation and test (the rest trains); seeded."""

    validation: float = 0.15
    test: float = 0.15
    seed: int = 0

    def __post_init__(self):
        if self.validation < 0 or self.test < 0 or self.validation + self.test >= 1:
            raise ValueError(f"validation + test fractions must leave some training data: {self}")

    @property
    def train(self) -> float:
        return 1.0 - self.validation - self.test


@dataclass(frozen=True)
class FolderSplit:
    """File paths and integer labels of each split of a class-folder dataset."""

    class_ids: tuple[str, ...]
    files: dict[str, tuple[tuple[str, int], ...]]  # split -> ((path, label), ...)


@dataclass(frozen=True)
class Data:
    """A dataset ready for the pipeline: unbatched splits of resized uint8 images + int labels."""

    name: str
    class_ids: tuple[str, ...]
    labels: tuple[str, ...]
    image_size: tuple[int, int]
    splits: dict[str, tf.data.Dataset]
    sizes: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def batches(
        self, batch_size: int, augmentation: Augmentation | None = None, seed: int = 0
    ) -> dict[str, tf.data.Dataset]:
        """Every split through ``pipeline``: the training split shuffled (and mixed, if the
        augmentation says so); the test split, evaluated once at the end, not cached."""
        return {
            split: pipeline(
                ds,
                batch_size=batch_size,
                num_classes=self.num_classes,
                training=split == "train",
                augmentation=augmentation,
                cache=split != "test",
                seed=seed,
            )
            for split, ds in self.splits.items()
        }

    def describe(self) -> str:
        counts = ", ".join(f"{split} {self.sizes[split]:,}" for split in SPLITS)
        return (
            f"dataset {self.name}: {self.num_classes} classes, {counts} images "
            f"at {self.image_size[0]}x{self.image_size[1]}"
        )


def class_folders(root: str | Path) -> list[Path]:
    """The class sub-folders of ``root`` (hidden ones left out), sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def class_order_for(
    root: str | Path, labels: list[str], label_map: dict[str, str] | None = None
) -> list[str]:
    """The class folders of ``root`` in the order of a model's ``labels``, matched by name: a
    folder matches the label it is named like, or the label ``human_labels`` gives it (a synset
    folder ``n01440764`` is ``tench``). ``ValueError`` naming what differs when the folders are
    not the labels (in any order)."""
    ids = [d.name for d in class_folders(root)]
    for names in (ids, human_labels(ids, label_map)):
        by_name = dict(zip(names, ids, strict=True))
        if len(by_name) == len(ids) and sorted(by_name) == sorted(labels):
            return [by_name[label] for label in labels]
    missing = sorted(set(labels) - set(ids))[:3]
    extra = sorted(set(ids) - set(labels))[:3]
    raise ValueError(
        f"the class folders of {root} are not the model's {len(labels)} labels: "
        f"{len(ids)} folders; labels without a folder: {', '.join(missing) or 'none'}; "
        f"folders that are no label: {', '.join(extra) or 'none'}"
    )


def split_folder(
    root: str | Path, fractions: SplitFractions = SplitFractions(), class_order: list[str] | None = None
) -> FolderSplit:
    """Stratified, seeded split of ``root/<class>/<image>`` into train / validation / test.

    Class ``i`` is the ``i``-th folder in sorted order, or, with ``class_order`` (the folder names
    in a model's output order: ``class_order_for``), the folder named ``class_order[i]``. Which
    image lands in which split does not depend on ``class_order``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    class_dirs = class_folders(root)
    if len(class_dirs) < 2:
        raise ValueError(f"{root} needs at least two class sub-folders, found {len(class_dirs)}")
    class_ids = tuple(class_order or [d.name for d in class_dirs])
    if sorted(class_ids) != [d.name for d in class_dirs]:
        raise ValueError(f"class order {class_ids[:3]}... is not the class folders of {root}")
    index = {name: i for i, name in enumerate(class_ids)}
    rng = np.random.default_rng(fractions.seed)
    files: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for class_dir in class_dirs:
        label = index[class_dir.name]
        paths = sorted(
            str(p) for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not paths:
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(f"class folder {class_dir} has no images ({kinds})")
        order = rng.permutation(len(paths))
        n_test = round(len(paths) * fractions.test)
        n_validation = round(len(paths) * fractions.validation)
        bounds = {"test": (0, n_test), "validation": (n_test, n_test + n_validation)}
        bounds["train"] = (n_test + n_validation, len(paths))
        for split, (start, stop) in bounds.items():
            files[split].extend((paths[i], label) for i in order[start:stop])
    # Mix the classes within each split (so --limit keeps a sample of every class).
    mixed = {split: tuple(items[i] for i in rng.permutation(len(items))) for split, items in files.items()}
    return FolderSplit(class_ids=class_ids, files=mixed)


def decode_and_resize(image_bytes: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP -> RGB -> resized uint8 ``[h, w, 3]`` (rounded and clipped)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return to_uint8(resize_images(image, image_size))


def to_uint8(pixels: tf.Tensor) -> tf.Tensor:
    """Float pixels 0..255 -> uint8, rounding to nearest (antialiased resizing can overshoot)."""
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def load_folder(
    root: str | Path,
    image_size: int | tuple[int, int],
    *,
    fractions: SplitFractions = SplitFractions(),
    label_map: dict[str, str] | None = None,
    limit: int | None = None,
    class_order: list[str] | None = None,
) -> Data:
    """A class-folder dataset, split and decoded lazily; ``limit`` caps the images per split;
    ``class_order``: ``split_folder``'s."""
    size = image_hw(image_size)
    split = split_folder(root, fractions, class_order)
    datasets, sizes = {}, {}
    for name, items in split.files.items():
        items = items[:limit] if limit else items
        paths = [path for path, _ in items]
        labels = np.array([label for _, label in items], dtype=np.int32)
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        datasets[name] = ds.map(
            lambda path, label: (decode_and_resize(tf.io.read_file(path), size), label),
            num_parallel_calls=AUTOTUNE,
        )
        sizes[name] = len(items)
    return Data(
        name=Path(root).resolve().name,
        class_ids=split.class_ids,
        labels=tuple(human_labels(list(split.class_ids), label_map)),
        image_size=size,
        splits=datasets,
        sizes=sizes,
    )


def tfds_splits(fractions: SplitFractions) -> dict[str, str]:
    """TFDS split strings: the start of ``train`` trains, its end tests, ``validation`` validates."""
    percent = round(100 * fractions.train)
    return {"train": f"train[:{percent}%]", "validation": "validation", "test": f"train[{percent}%:]"}


def load_tfds(
    image_size: int | tuple[int, int],
    *,
    name: str = TFDS_NAME,
    fractions: SplitFractions = SplitFractions(),
    label_map: dict[str, str] | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
) -> Data:
    """A TensorFlow Datasets image classification set (downloads and prepares it on first use)."""
    import tensorflow_datasets as tfds  # heavy import, only on this path

    size = image_hw(image_size)
    split_names = tfds_splits(fractions)
    loaded, info = tfds.load(
        name,
        split=[split_names[s] for s in SPLITS],
        as_supervised=True,
        shuffle_files=False,
        with_info=True,
        data_dir=data_dir,
    )
    datasets, sizes = {}, {}
    for split, ds in zip(SPLITS, loaded, strict=True):
        count = _split_size(info, split_names[split], ds)
        if limit:
            ds, count = ds.take(limit), min(count, limit)
        datasets[split] = ds.map(
            lambda image, label: (to_uint8(resize_images(image, size)), tf.cast(label, tf.int32)),
            num_parallel_calls=AUTOTUNE,
        )
        sizes[split] = count
    class_ids = tuple(info.features["label"].names)
    return Data(
        name=name,
        class_ids=class_ids,
        labels=tuple(human_labels(list(class_ids), label_map)),
        image_size=size,
        splits=datasets,
        sizes=sizes,
    )


def load_data(
    source: str,
    image_size: int | tuple[int, int],
    *,
    fractions: SplitFractions = SplitFractions(),
    labels_map: str | Path | None = None,
    limit: int | None = None,
    labels: list[str] | None = None,
) -> Data:
    """``"imagenette"`` -> TFDS; anything else is a folder of class sub-folders, its classes in the
    order of a model's ``labels`` when given (``class_order_for``), else sorted as ``fit`` trains."""
    label_map = load_label_map(labels_map) if labels_map else None
    if source == TFDS_NAME:
        return load_tfds(image_size, fractions=fractions, label_map=label_map, limit=limit)
    order = class_order_for(source, labels, label_map) if labels is not None else None
    return load_folder(
        source, image_size, fractions=fractions, label_map=label_map, limit=limit, class_order=order
    )


def pipeline(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    num_classes: int,
    training: bool = False,
    augmentation: Augmentation | None = None,
    cache: bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """cache -> shuffle (training) -> batch -> one-hot labels -> MixUp/CutMix (training) -> prefetch.

    Yields ``(images, one-hot float32 labels)``; images stay uint8 unless a batch was mixed.
    """
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(_buffer_size(ds), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)), num_parallel_calls=AUTOTUNE)
    if training and augmentation is not None and augmentation.mixes_batches:
        ds = ds.map(batch_mixer(augmentation, seed), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def batch_mixer(augmentation: Augmentation, seed: int = 0):
    """A tf.data map function applying MixUp or CutMix (``training.mixing.mix_one``: one at random
    for each batch when both are enabled)."""
    mixers = batch_mixers(augmentation.mixup, augmentation.cutmix, seed)
    chooser = keras.random.SeedGenerator(seed + 2)

    def mix_batch(images, labels):
        return mix_one(mixers, images, labels, keras.random.uniform((), seed=chooser))

    return mix_batch


def _split_size(info, split: str, ds: tf.data.Dataset) -> int:
    """Examples in a TFDS split, from its metadata, else counted (metadata without split sizes)."""
    try:
        return info.splits[split].num_examples
    except KeyError:
        return int(ds.reduce(0, lambda count, _: count + 1))


def _buffer_size(ds: tf.data.Dataset) -> int:
    """Shuffle over the whole split when its size is known (it is for folders and TFDS)."""
    size = int(ds.cardinality())
    return size if size > 0 else 10_000
