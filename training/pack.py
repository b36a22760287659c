"""Pack splits of a folder dataset into one file, to train where TensorFlow is not installed.

    python -m training pack --data ../shared/data/imagenette2-train --image-size 128 --splits train \\
        --out packs/imagenette2-train_128px.npz
    KERAS_BACKEND=jax python -m training fit-packed --data packs/imagenette2-train_128px.npz ...

The split is ``python -m training fit``'s own (``training.data.split_folder``: same fractions, same
seed, so the same images train, validate and test), and each image goes through fit's own decode and
resize (``training.data.decode_and_resize``) to the training size. The resized pixels are stored
re-encoded, as JPEG at ``--quality`` (small enough to copy to a remote GPU machine) or losslessly as
PNG (``--quality 0``). Only the splits named are packed: leave the test split out, and it is never
seen by the training machine at all; ``python -m training evaluate`` measures it here afterwards.

The file is a plain ``.npz`` (no pickles): the encoded images end to end in ``data`` with ``offsets``
into it, integer ``labels`` per split, ``class_ids``, human-readable ``label_names`` and a JSON
``meta`` (source folder, image size, split fractions and seed, encoding).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from training.labels import human_labels, load_label_map

SPLIT_NAMES = ("train", "validation", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--data", required=True, type=Path, help="folder of class sub-folders")
    p("--image-size", type=int, required=True, help="square size the images are resized to")
    p("--splits", default="train", help="comma-separated splits to pack (default: %(default)s)")
    p("--labels-map", help="JSON or 'id name' lines mapping class ids to human-readable names")
    p("--validation-fraction", type=float, default=0.15)
    p("--test-fraction", type=float, default=0.15)
    p("--seed", type=int, default=0)
    p("--quality", type=int, default=90, help="JPEG quality 1-100; 0 stores lossless PNG")
    p("--out", type=Path, required=True, help="the .npz file to write")


def main(args: argparse.Namespace) -> int:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = sorted(set(splits) - set(SPLIT_NAMES))
    if unknown or not splits:
        print(f"error: --splits takes {', '.join(SPLIT_NAMES)}; got {args.splits!r}", file=sys.stderr)
        return 2
    if not 0 <= args.quality <= 100:
        print("error: --quality must be 0 (PNG) or 1-100 (JPEG)", file=sys.stderr)
        return 2
    path = pack(
        args.data,
        args.image_size,
        splits,
        args.out,
        fractions=(args.validation_fraction, args.test_fraction, args.seed),
        quality=args.quality,
        labels_map=args.labels_map,
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def pack(
    root: str | Path,
    image_size: int,
    splits: list[str],
    out: str | Path,
    *,
    fractions: tuple[float, float, int] = (0.15, 0.15, 0),
    quality: int = 90,
    labels_map: str | Path | None = None,
) -> Path:
    """Write ``out`` (see the module doc) and return its path."""
    import tensorflow as tf
    from PIL import Image

    from training.data import SplitFractions, decode_and_resize, split_folder

    split = split_folder(root, SplitFractions(*fractions))
    size = (image_size, image_size)
    resize = tf.function(lambda data: decode_and_resize(data, size))

    def encode(path: str) -> bytes:
        pixels = resize(tf.io.read_file(path)).numpy()
        buffer = io.BytesIO()
        if quality:
            Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
        else:
            Image.fromarray(pixels).save(buffer, "PNG")
        return buffer.getvalue()

    arrays: dict[str, np.ndarray] = {}
    from keras.utils import Progbar

    for name in splits:
        items = split.files[name]
        progress = Progbar(len(items), unit_name="image")
        encoded = []
        with ThreadPoolExecutor() as pool:
            for i, data in enumerate(pool.map(encode, (path for path, _ in items)), 1):
                encoded.append(data)
                if i % 200 == 0 or i == len(items):
                    progress.update(i)
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        arrays[f"{name}_data"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        arrays[f"{name}_labels"] = np.array([label for _, label in items], dtype=np.int32)
    label_map = load_label_map(labels_map) if labels_map else None
    meta = {
        "dataset": Path(root).resolve().name,
        "source": str(Path(root).resolve()),
        "image_size": [image_size, image_size],
        "splits": splits,
        "sizes": {name: len(split.files[name]) for name in splits},
        "validation_fraction": fractions[0],
        "test_fraction": fractions[1],
        "seed": fractions[2],
        "encoding": f"JPEG quality {quality}" if quality else "PNG",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            class_ids=np.array(split.class_ids),
            label_names=np.array(human_labels(list(split.class_ids), label_map)),
            meta=np.array(json.dumps(meta)),
            **arrays,
        )
    tmp.replace(out)
    return out


class Pack:
    """A packed dataset, read back without TensorFlow: ``images(split)`` decodes with PIL."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as f:
            self._arrays = {key: f[key] for key in f.files}
        self.meta = json.loads(str(self._arrays["meta"]))
        self.class_ids = tuple(str(c) for c in self._arrays["class_ids"])
        self.labels = tuple(str(c) for c in self._arrays["label_names"])

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def size(self, split: str) -> int:
        return int(len(self._arrays[f"{split}_labels"]))

    def labels_of(self, split: str) -> np.ndarray:
        self._check(split)
        return self._arrays[f"{split}_labels"]

    def images(self, split: str, threads: int | None = None, limit: int | None = None) -> np.ndarray:
        """The images of ``split`` (the first ``limit`` only, if given) as uint8 ``[n, h, w, 3]``."""
        from PIL import Image

        self._check(split)
        data, offsets = self._arrays[f"{split}_data"], self._arrays[f"{split}_offsets"]
        height, width = self.meta["image_size"]
        count = len(offsets) - 1 if limit is None else min(limit, len(offsets) - 1)
        out = np.empty((count, height, width, 3), dtype=np.uint8)

        def decode(i: int) -> None:
            with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as image:
                out[i] = np.asarray(image.convert("RGB"))

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decode, range(len(out))))
        return out

    def _check(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"{self.path} holds the splits {', '.join(self.splits)}, not {split!r}")
