"""The request limits checked once each, where what they bound is first known and before anything
is allocated: the image count (``check_count``), the decoding memory (``check_decode_budget``);
pixels per image are checked by ``service.serving.images.open_upload`` (files) and
``service.protocols.tensors.pixel_array`` (tensors). ``public_limits``: what ``/metadata`` shows of them.
"""

from __future__ import annotations

from typing import Any

from service.serving.errors import ServiceError


def check_decode_budget(uploads: list[Any], costs: list[int], limits: Any) -> None:
    """413 for a request whose images would take more decoding memory than allowed."""
    over = [
        {
            "index": i,
            "file": upload.filename or f"images[{i}]",
            "reason": f"decoding it takes {cost} bytes; the limit is {limits.max_image_decode_bytes} "
            "(CONVZOO_MAX_IMAGE_DECODE_BYTES)",
        }
        for i, (upload, cost) in enumerate(zip(uploads, costs, strict=True))
        if cost > limits.max_image_decode_bytes
    ]
    if over:
        raise ServiceError(
            413, "an image takes more memory to decode than one image may (decode budget)", files=over
        )
    if sum(costs) > limits.max_request_decode_bytes:
        raise ServiceError(
            413,
            f"decoding these {len(uploads)} images takes {sum(costs)} bytes; the limit of one request "
            f"is {limits.max_request_decode_bytes} (CONVZOO_MAX_REQUEST_DECODE_BYTES): send fewer or "
            "smaller images",
        )


def check_count(count: int, limits: Any) -> None:
    """400 for a request without images, 413 for more than ``CONVZOO_MAX_IMAGES``."""
    if count < 1:
        raise ServiceError(400, "no images in the request: send at least one")
    if count > limits.max_images:
        raise ServiceError(
            413, f"{count} images in one request; the limit is {limits.max_images} (CONVZOO_MAX_IMAGES)"
        )


def public_limits(config: Any) -> dict[str, int]:
    """What ``/metadata`` says under ``limits``."""
    limits = config.limits
    return {
        "max_images": limits.max_images,
        "max_request_bytes": limits.max_request_bytes,
        "max_file_bytes": limits.max_file_bytes,
        "max_pixels": limits.max_pixels,
        "max_image_decode_bytes": limits.max_image_decode_bytes,
        "max_request_decode_bytes": limits.max_request_decode_bytes,
        "max_body_bytes": limits.max_body_bytes,
        "top_k_default": config.top_k,
        "top_k_max": config.max_top_k,
    }
