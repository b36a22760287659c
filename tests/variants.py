"""Which zoo variants the default suite builds, and which wait for ``make test-slow``.

The default suite builds one variant per builder path of each family (the smallest one that
exercises that code: a ResNet with basic blocks, one with bottlenecks, a pre-activation one, ...);
every other variant is a change of widths, depths or resolution of the same code and runs in
``make test-slow``. Variants that are heavy at their reference size (parameters, resolution or
depth) are slow even where they are a family's only representative.
"""

from __future__ import annotations

import pytest

# One variant per code path of each family, cheap enough for the default suite.
REPRESENTATIVES = {
    "lenet5",
    "alexnet",
    "vgg16",
    "inception_v1",
    "inception_v3",
    "resnet18",  # basic blocks
    "resnet50",  # bottlenecks
    "resnet50_v2",  # pre-activation
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_lite0",
    "xception",
    "convnext_tiny",
}

# Heavy at the reference size: slow wherever they are built at that size.
HEAVY_AT_REFERENCE_SIZE = {"alexnet", "vgg16", "vgg19", "xception", "inception_v3"}


def variant_params(names, *, heavy: set[str] = frozenset()) -> list:
    """``pytest.param`` per name, marked slow unless it represents its family (and is not heavy)."""
    return [
        pytest.param(name, marks=[] if name in REPRESENTATIVES and name not in heavy else [pytest.mark.slow])
        for name in names
    ]
