"""Peer: the KServe model server serving convzoo's model with convzoo's decoder (``oip_model``),
through a ``kserve.Model`` subclass.

    .venv/peers/kserve/bin/python -m benchmarks.peers.kserve_server --model imagenette --port 8081

KServe's Python model server (FastAPI + uvicorn, one worker) and its Open Inference Protocol
route, ``POST /v2/models/<name>/infer``: input ``image_bytes`` (BYTES: JSON with base64 strings,
or the binary data extension), output ``probabilities`` (FP32 ``[n, classes]``). The model server
has no batcher (KServe batches in its agent sidecar, on Kubernetes): each request is one model
call. Its gRPC server is off. SIGTERM or Ctrl-C stops it (KServe's own handlers).
"""

from __future__ import annotations

import argparse
import sys
import uuid

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from benchmarks.peers.oip_model import INPUT, OUTPUT, OIPModel, add_arguments, as_files, load


class ConvzooModel(Model):
    """``image_bytes`` -> ``probabilities``, one request per model call."""

    def __init__(self, model: OIPModel) -> None:
        super().__init__(model.name)
        self.model = model
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        (tensor,) = payload.inputs
        if tensor.name != INPUT or tensor.datatype != "BYTES":
            raise ValueError(f"send one input '{INPUT}' of datatype BYTES")
        if tensor.data is not None and len(tensor.data) and isinstance(tensor.data[0], str):
            files = as_files(list(tensor.data), base64_strings=True)
        else:
            files = as_files(tensor.as_numpy())
        probabilities = self.model.predict(files)
        output = InferOutput(name=OUTPUT, shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(
            probabilities, binary_data=bool(getattr(payload, "use_binary_outputs", False))
        )
        return InferResponse(
            model_name=self.name,
            infer_outputs=[output],
            response_id=payload.id or str(uuid.uuid4()),
            use_binary_outputs=False,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.kserve_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, port=8081, batch_wait_ms=0.0)
    args = parser.parse_args(argv)
    model = ConvzooModel(load(args))
    print(f"KServe model server starting on http://{args.host}:{args.port}", flush=True)
    ModelServer(http_port=args.port, enable_grpc=False, workers=1).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
