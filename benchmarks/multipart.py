"""Multipart/form-data request bodies for ``POST /classify`` (docs/design.md, contract 2).

The one encoder of the benchmark kit: the Locust users (``benchmarks.locustfile``) and the
reliability drivers (``benchmarks.reliability``) send bodies built here. Standard library only, so
a gevent process (Locust) can import it.
"""

from __future__ import annotations

import uuid
from pathlib import Path


def content_type_of(filename: str) -> str:
    """The image media type a browser would send for ``filename`` (by its suffix)."""
    suffix = Path(filename).suffix.lower().lstrip(".")
    return "image/jpeg" if suffix in ("jpg", "jpeg") else f"image/{suffix or 'octet-stream'}"


def encode_multipart(files: list[tuple[str, bytes]], field: str = "images") -> tuple[bytes, str]:
    """A multipart/form-data body with one part per (filename, bytes) in ``field``; and its type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type_of(filename)}\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for filename, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
