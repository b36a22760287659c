"""Peer (a): the usual tutorial server. FastAPI + uvicorn, PIL decode, one model call per request.

    python -m benchmarks.peers.fastapi_server --model imagenette --port 3001

Written the way most "serve your Keras model with FastAPI" tutorials do it, on purpose: an
``async`` endpoint that reads the uploads, decodes and resizes them with PIL and calls the
SavedModel's ``serving_default`` right there, one call per request (no batching across requests,
one process). Same HTTP contract as the BentoML service for what the load test uses:
``POST /classify`` (multipart field ``images``) -> JSON list of ``{label, score, top_k}``,
``POST /metadata``, ``GET /readyz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import tensorflow as tf
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile

from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, read_metadata, resolve
from benchmarks.peers.common import TOP_K, decode
from service.answers import top_k_answer


def create_app(model: str, models_dir: Path) -> FastAPI:
    ref = resolve(model, models_dir)
    metadata = read_metadata(ref)
    labels, size = metadata["labels"], tuple(metadata["input_size"])
    serving = tf.saved_model.load(str(ref.path)).signatures["serving_default"]
    app = FastAPI(title=f"{ref.spec} (FastAPI peer)")

    @app.get("/readyz")
    async def readyz() -> str:
        return "ok"

    @app.post("/metadata")
    async def describe() -> dict:
        return {"name": ref.name, "version": ref.version, "labels": labels, "input_size": list(size)}

    @app.post("/classify")
    async def classify(images: Annotated[list[UploadFile], File()]) -> list[dict]:
        arrays = []
        for upload in images:
            try:
                arrays.append(decode(await upload.read(), size))
            except OSError as error:
                raise HTTPException(400, f"{upload.filename}: not a readable image ({error})") from error
        probabilities = serving(images=tf.constant(np.stack(arrays)))["probabilities"].numpy()
        return [top_k_answer(row, labels, TOP_K) for row in probabilities]

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.fastapi_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="NAME or NAME:VERSION")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args(argv)
    app = create_app(args.model, args.models_dir)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
