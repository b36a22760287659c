"""Peer: MLServer serving convzoo's model with convzoo's decoder (``oip_model``), through a custom
runtime (``ConvzooRuntime``, an ``mlserver.MLModel``).

    .venv/peers/mlserver/bin/python -m benchmarks.peers.mlserver_server --model imagenette --port 8080

MLServer's REST server (FastAPI + uvicorn) and its adaptive batching (max ``--max-batch-size``
requests, waiting at most ``--batch-wait-ms``: MLServer batches only with a wait above 0, so 1 ms
by default); the model runs in the server's process (``parallel_workers`` 0: no inference worker
process, no hand-over between processes), in the event loop as a plain custom runtime does. The
Open Inference Protocol at ``/v2``: input ``image_bytes`` (BYTES, JSON: base64 strings, which
every element must be: MLServer's batcher drops an input's ``parameters`` when it merges requests),
output ``probabilities`` (FP32 ``[n, classes]``, JSON). MLServer's REST server takes no binary
data extension. Its gRPC port is a free port of this host; its metrics server is off. SIGTERM or
Ctrl-C stops it (MLServer's own signal handlers).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile

from mlserver import MLModel, MLServer
from mlserver.settings import ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from benchmarks.peers.oip_model import INPUT, OUTPUT, OIPModel, add_arguments, as_files, free_port, load

RUNTIME = "benchmarks.peers.mlserver_server.ConvzooRuntime"
MODEL: OIPModel | None = None
"""The model this process serves, set by ``main`` in the module MLServer imports the runtime from
(``RUNTIME``; under ``python -m`` that is not ``__main__``) before MLServer starts (one process:
``parallel_workers`` 0)."""


class ConvzooRuntime(MLModel):
    """The MLServer runtime: a batch of ``image_bytes`` -> ``probabilities``."""

    async def load(self) -> bool:
        if MODEL is None:
            raise RuntimeError("ConvzooRuntime serves the model main() loaded (parallel_workers 0)")
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        (tensor,) = payload.inputs
        if tensor.name != INPUT or tensor.datatype != "BYTES":
            raise ValueError(f"send one input '{INPUT}' of datatype BYTES")
        data = tensor.data
        data = getattr(data, "root", getattr(data, "__root__", data))
        probabilities = MODEL.predict(as_files(list(data), base64_strings=True))
        output = ResponseOutput(
            name=OUTPUT, datatype="FP32", shape=list(probabilities.shape), data=probabilities.ravel().tolist()
        )
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=[output]
        )


def main(argv: list[str] | None = None) -> int:
    import benchmarks.peers.mlserver_server as runtime_module

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.mlserver_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, port=8080, batch_wait_ms=1.0)
    args = parser.parse_args(argv)
    model = runtime_module.MODEL = load(args)
    with tempfile.TemporaryDirectory(prefix="convzoo-mlserver-") as root:
        settings = Settings(
            host=args.host,
            http_port=args.port,
            grpc_port=free_port(),
            metrics_endpoint=None,
            parallel_workers=0,
            model_repository_root=root,
            load_models_at_startup=False,
            debug=False,
        )
        model_settings = ModelSettings(
            name=model.name,
            implementation=RUNTIME,
            max_batch_size=args.max_batch_size,
            max_batch_time=args.batch_wait_ms / 1000,
            parameters={"version": str(model.version)},
        )
        print(f"MLServer starting on http://{args.host}:{args.port}", flush=True)
        asyncio.run(MLServer(settings).start([model_settings]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
