"""The service's own OpenAPI description (``/docs.json``, shown by the Swagger page at ``/``).

BentoML 1.4 titles the spec with the service name, versions it ``None`` outside a Bento and
describes it with a placeholder README ("This is a Machine Learning Service created with
BentoML"). ``service.http.app.ConvzooService`` replaces that ``info`` block with convzoo's: what is
served, how to call it with curl, and the page at ``/ui/``. Everything else in the spec (paths,
schemas) stays BentoML's. ``ApiDescription`` answers ``GET /docs.json`` itself, so the curl
examples name the address the client used (scheme, host and port), not a fixed localhost:3000.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from typing import Any

from service.http.asgi import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("bentoml.convzoo")

TITLE = "convzoo image classifier"
DEFAULT_URL = "http://localhost:3000"
HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
"""A Host header that may be shown in the examples (a name or an address, and a port)."""

DESCRIPTION = """\
Raw images in, class probabilities out. {model}

**Try it in the browser:** [the convzoo page]({ui}) (drop or pick photos, see the top-5 classes).

**From the command line** (several images in one request are answered in order):

```bash
curl -F images=@photo.jpg {url}/classify
curl -F images=@a.jpg -F images=@b.png -F top_k=3 {url}/classify
curl -X POST -H 'Content-Type: application/json' -d '{{}}' {url}/metadata
```
{auth}
`POST /classify` takes `multipart/form-data` with one or more files in the field `images` and an
optional `top_k`, and answers `[{{"label", "score", "top_k": [{{"label", "score"}}, ...]}}, ...]`.
A refused request answers 4xx with `{{"error": ..., "files": [{{"index", "file", "reason"}}]}}`:
400 for a file that is not an image (nothing of that request is classified), 413 for too many
or too large files or images that take too much memory to decode, 415 for a body that is not
multipart, 408 for a body that stops arriving. `POST /metadata` (body `{{}}`) describes the model
and the request limits.
"""

AUTH = """
This server requires an API key: add `-H "Authorization: Bearer $CONVZOO_API_KEY"` to each call
(the page asks for it once per browser tab).
"""


def convzoo_version(bento: Any = None) -> str:
    """The installed package's version; in a Bento's container (the sources, not the package),
    the Bento's version."""
    try:
        return importlib.metadata.version("convzoo")
    except importlib.metadata.PackageNotFoundError:
        return f"bento {bento.tag.version}" if bento is not None else "dev"


def describe(service: Any, url: str = DEFAULT_URL, auth: bool = False) -> str:
    """The Markdown description of ``service``: the served model, curl calls to ``url``, the page;
    with ``auth``, how to send the API key."""
    return DESCRIPTION.format(model=_model_line(service), ui="./ui/", url=url, auth=AUTH if auth else "")


def request_url(scope: Scope) -> str:
    """``scheme://host:port`` the client addressed: its Host header when it is a plain host (and
    port), else the address the server listens on."""
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    if not HOST.fullmatch(host):
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else DEFAULT_URL.split("://")[1]
    return f"{scope.get('scheme', 'http')}://{host}"


class ApiDescription:
    """``GET /docs.json``: ``service``'s OpenAPI spec, its examples addressed to ``request_url``."""

    PATH = "/docs.json"

    def __init__(self, app: ASGIApp, *, service: Any) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = json.dumps(self.service.openapi_spec_for(request_url(scope)).asdict()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _model_line(service: Any) -> str:
    """'Serves **name:version** (architecture, N classes, HxW input, top-1 p %).'"""
    if not service.models:
        return ""
    model = service.models[0]
    try:
        metadata = model.stored.info.metadata
    except Exception:
        logger.debug("no metadata for %s", model.tag, exc_info=True)
        return f"Serves the model **{model.tag}**."
    facts = [str(metadata.get("architecture", "")), f"{len(metadata.get('labels', []))} classes"]
    if size := metadata.get("input_size"):
        facts.append(f"{size[0]}×{size[1]} input")
    if (top1 := metadata.get("metrics", {}).get("top1")) is not None:
        facts.append(f"held-out top-1 accuracy {top1:.1%}")
    return f"Serves the model **{model.tag}** ({', '.join(f for f in facts if f)})."
