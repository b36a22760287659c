"""convzoo's own API, ``POST /classify``: a thin adapter over ``service.serving.dataplane``.

``/classify`` has one definition, the ``@bentoml.api classify`` of ``service.service.Classifier``
(its parameters, their types and bounds: what ``/schema.json`` and ``/docs.json`` show and what
BentoML's clients send), and one implementation, ``classify`` here. Over HTTP, ``ClassifyRoute``
answers every ``/classify`` request from the form ``RequestGuard`` already parsed (``FORM``), or
from a raw image body (``Content-Type: image/...``, ``top_k`` and ``model`` in the query), without
BentoML parsing the multipart body a second time into temporary files (benchmarks/README.md,
"The HTTP path"); it validates the fields with the API's own input model (``input_spec``) after
reading each as BentoML's own server reads a form field (``form_value``), so curl's
``-F model=imagenette:2`` and BentoML's ``SyncHTTPClient``'s JSON-encoded ``"imagenette:2"`` mean
the same, as they would to BentoML. It sits behind BentoML's own middlewares (metrics,
concurrency limit, timeout), like the API.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from service.answers import top_k_answer
from service.http.forms import FORM, ParsedForm
from service.serving.dataplane import DataPlane
from service.serving.errors import ServiceError, send_error
from service.serving.requests import Files, InferRequest, ModelSpec, Upload

PATH = "/classify"
COMPACT_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``, without making its encoder per answer."""


async def classify(plane: DataPlane, uploads: list[Upload], top_k: int, model: str | None) -> list[dict]:
    """The predictions of ``/classify``, in request order; ``ServiceError`` when refused."""
    answer = await plane.infer(InferRequest("convzoo", ModelSpec(text=model), Files(uploads)))
    labels = answer.served.labels
    top_k = min(top_k, len(labels))
    return [top_k_answer(p, labels, top_k) for p in answer.probabilities]


def form_value(text: str) -> Any:
    """A text field of a form as BentoML's own server reads it (``_bentoml_impl/serde.py``,
    ``MultipartSerde``): its JSON value, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def validation_problem(error: ValidationError) -> str:
    """pydantic's refusal of a request's fields, as one line (``top_k: Input should be ...``)."""
    problems = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        problems.append(f"{where}: {problem['msg']}, got {ascii(str(problem['input'])[:20])}")
    return "; ".join(problems)


class ClassifyRoute:
    """``POST /classify`` over HTTP (module docstring). ``spec``: the ``classify`` API's input
    model (``Classifier.apis["classify"].input_spec``)."""

    def __init__(self, app: Any, *, plane: DataPlane, spec: Any) -> None:
        self.app = app
        self.plane = plane
        self.spec = spec
        # a form of files only (most requests): the API's own defaults, nothing to validate
        self.defaults = {name: field.get_default() for name, field in spec.model_fields.items()}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        form: ParsedForm | None = scope.get(FORM) if scope["type"] == "http" else None
        if form is None or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        fields = {name: form_value(values[-1]) for name, values in form.fields.items() if values}
        uploads = [Upload(name, data) for name, data in form.files]
        try:
            if fields:
                try:
                    request = self.spec.model_validate({**fields, "images": uploads})
                except ValidationError as error:
                    raise ServiceError(400, validation_problem(error)) from None
                uploads, top_k, model = request.images, request.top_k, request.model
            else:
                top_k, model = self.defaults["top_k"], self.defaults["model"]
            answer = await classify(self.plane, uploads, top_k, model)
        except ServiceError as error:
            await send_error(send, error)
            return
        body = COMPACT_UTF8.encode(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
