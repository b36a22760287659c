"""Locust users for tests/test_reload.py: a steady stream of /classify uploads and Open Inference
Protocol requests (binary BYTES), each answer checked, while model versions come and go.

``RELOAD_PHOTO``: the JPEG to send; ``RELOAD_KEY``: the API key, if any.
"""

from __future__ import annotations

import json
import os
import struct

from locust import HttpUser, constant, task

PHOTO = open(os.environ["RELOAD_PHOTO"], "rb").read()  # noqa: SIM115 (read once per process)
HEADERS = {"Authorization": f"Bearer {os.environ['RELOAD_KEY']}"} if os.environ.get("RELOAD_KEY") else {}
V2_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 4 + len(PHOTO)},
            }
        ]
    }
).encode()
V2_BODY = V2_HEADER + struct.pack("<I", len(PHOTO)) + PHOTO


class Client(HttpUser):
    wait_time = constant(0.02)

    @task
    def classify(self) -> None:
        with self.client.post(
            "/classify", files={"images": ("photo.jpg", PHOTO)}, headers=HEADERS, catch_response=True
        ) as response:
            if response.status_code != 200 or len(response.json()) != 1:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task
    def infer(self) -> None:
        headers = {**HEADERS, "Inference-Header-Content-Length": str(len(V2_HEADER))}
        with self.client.post(
            "/v2/models/imagenette/infer",
            data=V2_BODY,
            headers=headers,
            catch_response=True,
            name="/v2 infer",
        ) as response:
            if response.status_code != 200 or json.loads(response.content)["outputs"][0]["shape"] != [1, 10]:
                response.failure(f"{response.status_code}: {response.text[:200]}")
