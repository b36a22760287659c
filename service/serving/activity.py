"""How many HTTP requests this worker process is answering now: the one thing the HTTP edge tells
the model's batcher (``service.serving.batching``: a lone request may run at once). The data plane owns
one ``Activity``; ``service.http.body.RequestGuard`` counts each request in it
(``with activity.request():``) and each version's ``Batcher`` reads ``activity.count``."""

from __future__ import annotations


class Activity:
    """``now``: the requests being answered; ``request()`` counts one for as long as it lasts."""

    def __init__(self) -> None:
        self.now = 0

    def count(self) -> int:
        return self.now

    def request(self) -> Activity:
        """``with activity.request():`` one request counted while it lasts (no generator per request)."""
        return self

    def __enter__(self) -> None:
        self.now += 1

    def __exit__(self, *exc_info: object) -> None:
        self.now -= 1
