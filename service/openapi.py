"""The service's own OpenAPI description (``/docs.json``, shown by the Swagger page at ``/``).

BentoML 1.4 titles the spec with the service name, versions it ``None`` outside a Bento and
describes it with a placeholder README ("This is a Machine Learning Service created with
BentoML"). ``ConvzooService`` (passed as ``service_class`` to ``@bentoml.service``) replaces that
``info`` block with convzoo's: what is served, how to call it with curl, and the page at ``/ui/``.
Everything else in the spec (paths, schemas) stays BentoML's.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import Any

import attrs
import bentoml
from bentoml._internal.service.openapi.specification import Info, OpenAPISpecification

logger = logging.getLogger("bentoml.convzoo")

TITLE = "convzoo image classifier"

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
or too large files, 415 for a body that is not multipart. `POST /metadata` (body `{{}}`) describes
the model and the request limits.
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


class ConvzooService(bentoml.Service):
    """A ``bentoml.Service`` whose OpenAPI ``info`` describes convzoo."""

    @property
    def openapi_spec(self) -> OpenAPISpecification:
        spec = super().openapi_spec
        return attrs.evolve(
            spec,
            info=Info(
                title=TITLE,
                version=convzoo_version(self.bento),
                description=describe(self),
            ),
        )


def describe(service: Any, url: str = "localhost:3000") -> str:
    """The Markdown description of ``service``: the served model, curl calls, the page."""
    return DESCRIPTION.format(
        model=_model_line(service),
        ui="./ui/",
        url=url,
        auth=AUTH if os.environ.get("CONVZOO_API_KEY") else "",  # as service.config reads it
    )


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
