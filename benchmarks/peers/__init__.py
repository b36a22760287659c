"""Peer servers for the load test.

The peers (``PEERS``): Triton, MLServer, the KServe model server and Ray Serve, each serving
**the same export with the same runtime, threads and decoding** as convzoo's service: the
OpenVINO int8 form of ``models/<name>/<version>``, on as many threads as the service gives its one
worker, every JPEG decoded by convzoo's own ``service.serving.images`` (``oip_model``), all on the
Open Inference Protocol v2 (``POST /v2/models/<name>/infer``: one input ``image_bytes``, BYTES, the
raw JPEG; one output ``probabilities``, FP32 ``[1, classes]``; ready once the model's own
``GET /v2/models/<name>/ready`` answers 200: ``ready_path``).
Each runs in its own virtual environment (``envs``: their pins conflict with convzoo's), started
as ``<env python> -m <module> --model NAME[:VERSION] --models-dir DIR --host H --port P``.

The TensorFlow tutorial peers, labelled extras, never the headline (convzoo's HTTP contract,
``/classify``; the ``bench`` extra, no environment of their own):

- ``fastapi_server``: the usual tutorial server (FastAPI, PIL decode, one model call per request);
- ``ray_server``: Ray Serve with ``@serve.batch`` (dynamic batching across requests).

``PEERS`` is plain data (``Peer``), importable anywhere (no dependency).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """How to start one peer and talk to it.

    - ``name``: the key in ``PEERS`` (``triton``...);
    - ``title``: what a report calls it, with the versions that run;
    - ``module``: run as ``<env python> -m <module> --model M --models-dir D --host H --port P``
      (also ``--threads N``, ``--max-batch-size N``, ``--batch-wait-ms MS``);
    - ``env``: its virtual environment, ``envs.ensure_env(env)`` (requirements/<env>.txt);
    - ``binary``: it takes the binary tensor data extension (``Inference-Header-Content-Length``:
      the JSON header, then each element as a 4-byte little-endian length and its bytes, as
      tritonclient sends with ``binary_data=True``);
    - ``json_bytes``: how it takes ``image_bytes`` in a JSON body: ``"base64"`` (the data a list of
      base64 strings, with ``"parameters": {"content_type": "base64"}`` on the input), or None
      (it cannot: Triton takes a JSON string's UTF-8 bytes, which no JPEG is);
    - ``shape``: the shape of ``image_bytes`` in a one-photo request. ``[1, 1]`` for Triton:
      with batching, a model input has the batch dimension and at least one of its own (Triton
      refuses empty ``dims``; PyTriton does not write ``reshape``). Every peer (and convzoo's own
      ``/v2``) also takes ``[1, 1]``, so one client may send ``[1, 1]`` everywhere;
    - ``binary_output``: it answers ``probabilities`` as binary data when asked
      (``"parameters": {"binary_data": true}`` on the output); else always JSON;
    - ``batching``: how it batches, in words; ``ready_timeout_s``: longest start-up seen x ~3;
    - ``ready_path``: answers 200 once the model serves (``.format(name=MODEL_NAME)``): the model's
      OIP readiness, not the server's (Triton's ``/v2/health/ready`` says 200 before PyTriton has
      loaded the model, and infer then answers 404).
    """

    name: str
    title: str
    module: str
    env: str
    binary: bool
    json_bytes: str | None
    shape: tuple[int, ...]
    binary_output: bool
    batching: str
    ready_timeout_s: float
    ready_path: str = "/v2/models/{name}/ready"


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            name="triton",
            title="Triton Inference Server 2.51 (PyTriton 0.7.0)",
            module="benchmarks.peers.triton_server",
            env="triton",
            binary=True,
            json_bytes=None,
            shape=(1, 1),
            binary_output=True,
            batching="Triton's dynamic batcher, max 32, no queue delay, one model instance",
            ready_timeout_s=180,
        ),
        Peer(
            name="mlserver",
            title="MLServer 1.7.1",
            module="benchmarks.peers.mlserver_server",
            env="mlserver",
            binary=False,
            json_bytes="base64",
            shape=(1,),
            binary_output=False,
            batching="adaptive batching, max 32, max_batch_time 1 ms, parallel_workers 0 (in-process)",
            ready_timeout_s=180,
        ),
        Peer(
            name="kserve",
            title="KServe 0.21.0 model server",
            module="benchmarks.peers.kserve_server",
            env="kserve",
            binary=False,  # it decodes binary BYTES as UTF-8 text (InferRequest.from_bytes): no JPEG
            json_bytes="base64",
            shape=(1,),
            binary_output=False,
            batching="none (the KServe model server has no batcher; KServe batches in its agent sidecar)",
            ready_timeout_s=180,
        ),
        Peer(
            name="ray",
            title="Ray Serve 2.60.0 (FastAPI ingress, OIP route of ours)",
            module="benchmarks.peers.ray_oip_server",
            env="ray",
            binary=True,
            json_bytes="base64",
            shape=(1,),
            binary_output=True,
            batching="@serve.batch, max 32, no wait",
            ready_timeout_s=300,
        ),
    )
}
