"""Peer servers for the load test: the same model and HTTP contract as the BentoML service.

- ``fastapi_server``: the usual tutorial server (FastAPI, PIL decode, one model call per request);
- ``ray_server``: Ray Serve with ``@serve.batch`` (dynamic batching across requests).

Benchmark-only: their packages are in the ``bench`` extra, never needed to serve.
"""
