"""A JSON tensor body read within the limits (``service.serving.dataplane.DataPlane.parse_json`` runs
``parse_json`` in its thread): ``json_memory`` bounds what parsing may take before it starts, and
``loads_in_steps`` parses in steps so that the event loop is not held for the whole text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from service.serving.errors import ServiceError

T = TypeVar("T")


JSON_COSTS = {b"[": 96, b"{": 240, b",": 40, b":": 40, b'"': 32}
"""Bytes of Python objects that each of these characters of a JSON text can stand for, at most,
as ``json.loads`` builds them (CPython 3.11, 64-bit): a list (56 bytes, pointers over-allocated)
and its first element, a dict (232 bytes up to 5 keys), an element or a dict's value (its pointer
and a number object of up to 32 bytes), half of a string (49 bytes and its pointer). Counted in
the text, strings included, so that it over- and never under-counts (tests/test_dataplane.py
measures shapes against it)."""


def json_memory(text: bytes) -> int:
    """An upper bound of the memory ``json.loads(text)`` takes, and of what is decoded from it
    (base64 strings: three quarters of their size again): three times the text, plus ``JSON_COSTS`` per
    structural character. C-speed counts; ~16 ms for 16 MiB."""
    return 3 * len(text) + 4096 + sum(cost * text.count(char) for char, cost in JSON_COSTS.items())


def json_memory_at_most(length: int) -> int:
    """What ``json_memory`` gives at most for a text of ``length`` bytes (every byte the dearest
    structural character), known without reading the text."""
    return 3 * length + 4096 + DEAREST_CHARACTER * length


DEAREST_CHARACTER = max(JSON_COSTS.values())


WALKED_DEPTH = 3
"""JSON containers this shallow (the request, its list of instances or inputs, an image) may be
read an element at a time by ``loads_in_steps``; deeper values in one call of the C parser each."""
STEP_BYTES = 4096
"""An element of at least this much text is a step of its own (``loads_in_steps``)."""
MAX_SMALL_STEPS = 64
"""Smaller elements a walked container may have before it is parsed again in one call."""
_SCAN = json.JSONDecoder().scan_once
_SPACE = re.compile(r"[ \t\n\r]*")


def loads_in_steps(text: bytes) -> Any:
    """``json.loads(text)``, the same value and the same errors, read in steps: a container of the
    first ``WALKED_DEPTH`` levels whose first element is large (``STEP_BYTES`` of text) is walked in
    Python, each element parsed by json's C scanner; any other value is one call of it (a
    container whose elements turn out small, after ``MAX_SMALL_STEPS`` of them, is parsed again
    in one call: Python steps stay few, ~1 per 4 KiB, and the work at most doubles per level).
    ``json.loads`` holds the GIL for the whole text (0.9 s for 15.8 MiB of pixel lists on this
    machine); between two steps here another thread, the event loop's, gets it back. A text
    shorter than one step (``STEP_BYTES``: the JSON header of a binary request) is one step:
    ``json.loads`` itself, without walking it in Python first."""
    if len(text) < STEP_BYTES:
        return json.loads(text)
    string = text.decode(json.detect_encoding(text), "surrogatepass")
    value, end = _value(string, 0, 0)
    end = _SPACE.match(string, end).end()
    if end != len(string):
        raise json.JSONDecodeError("Extra data", string, end)
    return value


def _scan(string: str, at: int) -> tuple[Any, int]:
    try:
        return _SCAN(string, at)
    except StopIteration as stop:
        raise json.JSONDecodeError("Expecting value", string, stop.value) from None


def _value(string: str, at: int, depth: int) -> tuple[Any, int]:
    at = _SPACE.match(string, at).end()
    opener = string[at : at + 1]
    if depth >= WALKED_DEPTH or opener not in ("[", "{"):
        return _scan(string, at)
    walked = (_array if opener == "[" else _object)(string, at, depth)
    return walked if walked is not None else _scan(string, at)


def _array(string: str, start: int, depth: int) -> tuple[list, int] | None:
    """The array at ``start`` walked element by element; None when its elements are small."""
    at = _SPACE.match(string, start + 1).end()
    if string.startswith("]", at):
        return [], at + 1
    items, small = [], 0
    while True:
        value, end = _value(string, at, depth + 1)
        small += end - at < STEP_BYTES
        if small > (0 if not items else MAX_SMALL_STEPS):
            return None
        items.append(value)
        at = _SPACE.match(string, end).end()
        if string.startswith(",", at):
            at += 1
        elif string.startswith("]", at):
            return items, at + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", string, at)


def _object(string: str, start: int, depth: int) -> tuple[dict, int] | None:
    """The object at ``start`` walked member by member; None when its values are small."""
    at = _SPACE.match(string, start + 1).end()
    members: dict[str, Any] = {}
    if string.startswith("}", at):
        return members, at + 1
    small = 0
    while True:
        at = _SPACE.match(string, at).end()
        if not string.startswith('"', at):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", string, at)
        key, at = _scan(string, at)
        at = _SPACE.match(string, at).end()
        if not string.startswith(":", at):
            raise json.JSONDecodeError("Expecting ':' delimiter", string, at)
        members[key], end = _value(string, at + 1, depth + 1)
        small += end - at < STEP_BYTES
        if small > MAX_SMALL_STEPS:
            return None
        at = _SPACE.match(string, end).end()
        if string.startswith(",", at):
            at += 1
        elif string.startswith("}", at):
            return members, at + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", string, at)


def parse_json(text: bytes, convert: Callable[[Any], T]) -> T:
    """``DataPlane.parse_json``'s work in its thread: ``convert(loads_in_steps(text))``, 400 for
    text that is not JSON or is nested too deeply."""
    problem = None
    try:
        tree = loads_in_steps(text)
    except RecursionError:
        problem = "the JSON is nested too deeply"
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        problem = f"the request is not valid JSON ({error})"
    if problem is not None:  # raised here, not in the except clause: no context holding the text
        raise ServiceError(400, problem)
    try:
        return convert(tree)
    except RecursionError:
        problem = "the JSON is nested too deeply"
    raise ServiceError(400, problem)
