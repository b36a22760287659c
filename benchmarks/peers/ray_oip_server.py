"""Peer: Ray Serve serving convzoo's model with convzoo's decoder (``oip_model``) on the Open
Inference Protocol's infer route.

    .venv/peers/ray/bin/python -m benchmarks.peers.ray_oip_server --model imagenette --port 8002

Ray Serve speaks no OIP of its own: one replica of a deployment with a FastAPI ingress answers
``POST /v2/models/<name>[/versions/<v>]/infer`` (``oip_model.parse_infer``: JSON with base64
BYTES, or the binary data extension; the answer JSON or binary as asked), ``GET /v2/health/ready``
and ``/v2/health/live``, and sends each image to a ``@serve.batch`` method, which stacks what has
queued (up to ``--max-batch-size`` images, waiting at most ``--batch-wait-ms``, 0 by default: what
waits when the replica is free) into one decode-and-model call. Ray's HTTP proxy (an actor of its
own) forwards the requests to the replica, as in any Ray Serve deployment. Unlike the tutorial peer
(``ray_server``: TensorFlow, PIL), this one runs exactly convzoo's work.

A local Ray instance is started with as many CPUs as this process may use (its affinity, so
``taskset`` limits Ray's processes too), no dashboard and a small object store; SIGTERM or Ctrl-C
shuts Serve and Ray down.
"""

# No `from __future__ import annotations`: FastAPI must see the classes of the routes' parameters
# (under Ray's ingress a string annotation `Request` became a query parameter).
import argparse
import asyncio
import json
import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
from fastapi import FastAPI, Request, Response
from ray import serve

from benchmarks.peers.oip_model import (
    BadRequest,
    InvalidImage,
    OIPModel,
    add_arguments,
    infer_answer,
    parse_infer,
)
from benchmarks.peers.ray_run import serve_until_stopped

app = FastAPI(title="convzoo's model on Ray Serve (OIP peer)")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(app)
class OIPClassifier:
    def __init__(self, spec: str, models_dir: str, threads: int | None, max_batch_size: int, wait_ms: float):
        self.model = OIPModel(spec, models_dir, threads=threads, max_batch_size=max_batch_size)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(wait_ms / 1000)

    @app.get("/v2/health/ready")
    async def ready(self) -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/live")
    async def live(self) -> Response:
        return Response(status_code=200)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> Response:
        return Response(status_code=200 if name == self.model.name else 404)

    @app.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        return await self._infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer(name, version, request)

    async def _infer(self, name: str, version: str | None, request: Request) -> Response:
        if name != self.model.name or version not in (None, str(self.model.version)):
            return _error(404, f"model {name}:{version or 'latest'} is not served; {self.model.ref.spec} is")
        body = await request.body()
        try:
            files, binary, request_id = parse_infer(
                body, request.headers.get("inference-header-content-length")
            )
            rows = await asyncio.gather(*(self.predict(data) for data in files))
        except (BadRequest, InvalidImage, ValueError) as error:
            return _error(400, str(error))
        content, headers = infer_answer(name, self.model.version, np.stack(rows), binary, request_id)
        return Response(content, headers=headers)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def predict(self, files: list[bytes]) -> list[np.ndarray]:
        return list(self.model.predict(files))


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.ray_oip_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, port=8002, batch_wait_ms=0.0)
    args = parser.parse_args(argv)
    deployment = OIPClassifier.bind(
        args.model, str(args.models_dir.resolve()), args.threads, args.max_batch_size, args.batch_wait_ms
    )
    return serve_until_stopped(deployment, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
