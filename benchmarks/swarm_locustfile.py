"""Locust users for ``benchmarks/swarm.py``: ``/classify`` load (``benchmarks/locustfile.py``'s
user, same settings) plus a user asking ``/metadata`` which model answers.

Every ``/metadata`` answer is counted as a request of type ``VERSION`` named ``name:version`` (so
the stats CSV tells which versions answered, and how often); a version outside
``CONVZOO_SWARM_VERSIONS`` (comma separated ``name:version``) counts as a failure.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, task

from benchmarks.locustfile import ClassifyUser  # noqa: F401  (a user class of this locustfile)

ALLOWED = {v for v in os.environ.get("CONVZOO_SWARM_VERSIONS", "").split(",") if v}


class MetadataUser(FastHttpUser):
    wait_time = constant(0.2)
    fixed_count = 2  # the other users classify

    @task
    def metadata(self) -> None:
        with self.client.post("/metadata", json={}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            answer = response.json()
            version = f"{answer.get('name')}:{answer.get('version')}"
            if ALLOWED and version not in ALLOWED:
                response.failure(f"unexpected model {version}")
            self.environment.events.request.fire(
                request_type="VERSION",
                name=version,
                response_time=0,
                response_length=0,
                exception=None,
                context={},
            )
