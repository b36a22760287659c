"""How many HTTP requests this worker process is answering now: the one thing the HTTP edge tells
the model's batcher (``service.serving.batching``: a lone request may run at once). The data plane owns
one ``Activity``; ``service.http.body.RequestGuard`` counts each request in it
(``with activity.request():``) and each version's ``Batcher`` reads ``activity.count``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Activity:
    """``now``: the requests being answered; ``request()`` counts one for as long as it lasts."""

    def __init__(self) -> None:
        self.now = 0

    def count(self) -> int:
        return self.now

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.now += 1
        try:
            yield
        finally:
            self.now -= 1
