"""Peer (b): Ray Serve with ``@serve.batch`` (dynamic batching across requests).

    python -m benchmarks.peers.ray_server --model imagenette --port 3002

One replica of a deployment whose FastAPI ingress decodes the uploads with PIL (the same decode
as the FastAPI peer) and sends each image to a ``@serve.batch`` method, which stacks what has
queued (up to ``--max-batch-size`` images, waiting at most ``--batch-wait-ms``) into one
``serving_default`` call. Ray's HTTP proxy (a separate actor) forwards requests to the replica,
as in any Ray Serve deployment. Same HTTP contract as the BentoML service for what the load test
uses: ``POST /classify``, ``POST /metadata``, ``GET /readyz``.

A local Ray instance is started with as many CPUs as this process may use (its affinity, so
``taskset`` limits Ray's processes as well), no dashboard and a small object store; SIGTERM or
Ctrl-C shuts Serve and Ray down.
"""

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
from fastapi import FastAPI, File, HTTPException, UploadFile
from ray import serve

from benchmarks.modelrepo import DEFAULT_MODEL, DEFAULT_MODELS_DIR, read_metadata, resolve
from benchmarks.peers.common import TOP_K, decode
from benchmarks.peers.ray_run import serve_until_stopped
from service.answers import top_k_answer

app = FastAPI(title="convzoo (Ray Serve peer)")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(app)
class Classifier:
    def __init__(self, model: str, models_dir: str, max_batch_size: int, batch_wait_ms: float):
        import tensorflow as tf

        self.ref = resolve(model, Path(models_dir))
        metadata = read_metadata(self.ref)
        self.labels, self.size = metadata["labels"], tuple(metadata["input_size"])
        self.serving = tf.saved_model.load(str(self.ref.path)).signatures["serving_default"]
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_ms / 1000)

    @app.get("/readyz")
    async def readyz(self) -> str:
        return "ok"

    @app.post("/metadata")
    async def describe(self) -> dict:
        return {
            "name": self.ref.name,
            "version": self.ref.version,
            "labels": self.labels,
            "input_size": list(self.size),
        }

    @app.post("/classify")
    async def classify(self, images: Annotated[list[UploadFile], File()]) -> list[dict]:
        arrays = []
        for upload in images:
            try:
                arrays.append(decode(await upload.read(), self.size))
            except OSError as error:
                raise HTTPException(400, f"{upload.filename}: not a readable image ({error})") from error
        rows = await asyncio.gather(*(self.predict(array) for array in arrays))
        return [top_k_answer(row, self.labels, TOP_K) for row in rows]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tensorflow as tf

        probabilities = self.serving(images=tf.constant(np.stack(arrays)))["probabilities"]
        return list(probabilities.numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.ray_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="NAME or NAME:VERSION")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    resolve(args.model, args.models_dir)  # fail fast, before starting Ray

    deployment = Classifier.bind(
        args.model, str(args.models_dir.resolve()), args.max_batch_size, args.batch_wait_ms
    )
    return serve_until_stopped(deployment, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
