"""Peer: Triton Inference Server (its own binary, from the nvidia-pytriton wheel) serving convzoo's
model with convzoo's decoder (``oip_model``).

    .venv/peers/triton/bin/python -m benchmarks.peers.triton_server --model imagenette --port 8000

Triton's C++ HTTP front end and dynamic batcher (max ``--max-batch-size``, queue delay
``--batch-wait-ms``, 0 by default as in Triton: a batch takes what waits when the model is free),
one model instance (``--instances N``, or ``CONVZOO_TRITON_INSTANCES``: N instances, each its own
loaded model, as a user runs Triton on N cores); PyTriton hands each batch to the Python callable
below, which decodes the JPEGs and runs the OpenVINO model. The Open Inference Protocol at
``/v2``: input ``image_bytes`` (BYTES ``[n, 1]``: with batching, Triton wants one dimension of the
input's own besides the batch), output ``probabilities`` (FP32 ``[n, classes]``); JSON or the
binary data extension (a JPEG is sent binary: Triton takes a JSON string's UTF-8 bytes, which no
JPEG is). Triton's gRPC and metrics ports are free ports of this host; SIGTERM or Ctrl-C stops
Triton.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import sysconfig

import numpy as np

from benchmarks.peers.oip_model import INPUT, OUTPUT, OIPModel, add_arguments, free_port, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.triton_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, port=8000, batch_wait_ms=0.0)
    parser.add_argument(
        "--instances",
        type=int,
        default=int(os.environ.get("CONVZOO_TRITON_INSTANCES", "1")),
        help="model instances, each its own loaded model (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    models = [load(args) for _ in range(max(1, args.instances))]
    model = models[0]

    # Triton's Python backend stub (which hands each batch to this process) loads libpython: the
    # one of this interpreter, not another build of the same version the system may have.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])
        )

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    def instance(one: OIPModel):
        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            files = [bytes(value) for value in inputs[INPUT].reshape(-1)]
            return {OUTPUT: one.predict(files)}

        return infer

    config = TritonConfig(
        http_address=args.host,
        http_port=args.port,
        grpc_address=args.host,
        grpc_port=free_port(),
        metrics_port=free_port(),
        metrics_address=args.host,
        allow_gpu_metrics=False,
        exit_on_error=True,
        log_verbose=0,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # Triton's context manager stops the server
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model.name,
            model_version=model.version,
            infer_func=[instance(one) for one in models],
            inputs=[Tensor(name=INPUT, dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(model.classes,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.batch_wait_ms * 1000)),
            ),
            strict=False,
        )
        print(f"Triton starting on http://{args.host}:{args.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
