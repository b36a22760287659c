"""The floor of any server on uvicorn: a trivial ASGI app that reads each request's body whole and
answers what ``benchmarks.http_client`` checks (a ``/v2`` binary answer of 10 probabilities, or a
``/classify`` JSON list), nothing else. ``python -m benchmarks.http_served --floor`` serves it with
``uvicorn`` (uvloop, httptools: what ``bentoml serve`` runs) beside the variants, so a served
request's CPU splits into uvicorn's share and the app's."""

from __future__ import annotations

import json

V2_HEADER = json.dumps(
    {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [1, 10],
                "parameters": {"binary_data_size": 40},
            }
        ],
    }
).encode()
CLASSIFY = json.dumps([{"label": "x", "score": 1.0, "top_k": [{"label": "x", "score": 1.0}]}]).encode()


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"].startswith("/v2/"):
        body = V2_HEADER + bytes(40)
        headers = [(b"inference-header-content-length", b"%d" % len(V2_HEADER))]
    else:
        body, headers = CLASSIFY, [(b"content-type", b"application/json")]
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
