"""A multipart upload checked and parsed once, as it is read (``FormInspector``; the fast path of a
plain form: ``split_plain_form``), and left for the route in the request's scope (``FORM``,
``ParsedForm``): ``service.http.body.RequestGuard`` calls it, ``service.protocols.convzoo.ClassifyRoute``
reads what it left.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import TOKEN_CHARS, MultipartParser, parse_options_header

FORM = "convzoo.form"
"""The scope key under which ``RequestGuard`` leaves a parsed upload (``ParsedForm``)."""
BODY = "convzoo.body"
"""The scope key under which ``RequestGuard`` leaves the body of a POST to a tensor route (bytes,
read and checked), for a route that answers from it (``service.protocols.oip.InferRoute``)."""
RAW_IMAGE_TYPES = (b"image/", b"application/octet-stream")
"""Content types of a raw upload: the body is one image file (query: ``top_k``, ``model``)."""
MAX_FORM_PARTS = 1000
MAX_TEXT_BYTES = 1024 * 1024
"""What Starlette's form parser (which BentoML calls with its defaults) accepts: 1000 files, 1000
text fields, 1 MiB per text value. Beyond, or on a part without a name, it raises and BentoML
answers 500; the guard refuses first, with a 400."""


class FormInspector:
    """Streams a multipart body through a parser that looks only at each part's headers."""

    def __init__(self, boundary: bytes, file_field: str) -> None:
        self.file_field = file_field
        self.boundary = boundary
        self.files = 0
        self.parts: list[
            tuple[str, str | None, list[tuple[bytes, int, int]]]
        ] = []  # (field, filename, spans)
        self.fields = 0
        self.problem: str | None = None
        self._text_bytes: int | None = None  # size of the current part, if it is a text value
        self._field = b""
        self._value = b""
        self._disposition = b""
        self._streaming: MultipartParser | None = None  # made on first use: a plain form needs none

    @property
    def _parser(self) -> MultipartParser:
        if self._streaming is None:
            self._streaming = MultipartParser(
                self.boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                },
            )
        return self._streaming

    def feed_body(self, body: bytes) -> str | None:
        """Parse the whole body; the first problem found, if any. A body of the plain shape every
        client sends (``split_plain_form``) is split with a few searches; any other goes through
        python-multipart's streaming parser; the same checks apply to the parts either way."""
        parts = split_plain_form(body, self.boundary)
        if parts is None:
            return self.feed(body, last=True)
        for headers, start, end in parts:
            self._part_begin()
            for name, value in headers:
                self._field, self._value = name, value
                self._header_end()
            self._headers_finished()
            if end > start:
                self._part_data(body, start, end)
        return self._finish()

    def feed(self, chunk: bytes, last: bool) -> str | None:
        """Parse one chunk; the first problem found, once known (at the latest with the last)."""
        try:
            self._parser.write(chunk)
            if last:
                self._parser.finalize()
        except Exception as error:
            self.problem = self.problem or f"malformed multipart body ({error})"
        return self._finish() if last else self.problem

    def _finish(self) -> str | None:
        if not self.problem and self.files == 0:
            self.problem = (
                f"no files in the field '{self.file_field}': send one or more images "
                f"as multipart/form-data, e.g. curl -F {self.file_field}=@photo.jpg"
            )
        return self.problem

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            self._refuse("a part without a field name (Content-Disposition: form-data; name=...)")
            return
        name = _user_safe_decode(options[b"name"])
        is_file = b"filename" in options
        self._text_bytes = None if is_file else 0
        self.parts.append((name, _user_safe_decode(options[b"filename"]) if is_file else None, []))
        if name == self.file_field and is_file:
            self.files += 1
        elif name == self.file_field:
            self._refuse(f"the field '{self.file_field}' must hold uploaded files, not text")
        elif is_file:
            self._refuse(f"a file was sent in the field '{name}'; images go in the field '{self.file_field}'")
        else:
            self.fields += 1
        if max(self.files, self.fields) > MAX_FORM_PARTS:
            self._refuse(f"more than {MAX_FORM_PARTS} files or fields in one form")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.parts and self.problem is None:
            self.parts[-1][2].append((data, start, end))
        if self._text_bytes is not None:
            self._text_bytes += end - start
            if self._text_bytes > MAX_TEXT_BYTES:
                self._refuse(f"a text field of more than {MAX_TEXT_BYTES} bytes")

    def _refuse(self, problem: str) -> None:
        self.problem = self.problem or problem

    def form(self) -> ParsedForm:
        """What the body held: the files of ``file_field`` and every text value, by field (a part
        that came in one piece is one copy of it)."""
        files = [
            (filename or "", _join(spans)) for name, filename, spans in self.parts if filename is not None
        ]
        fields: dict[str, list[str]] = {}
        for name, filename, spans in self.parts:
            if filename is None:
                fields.setdefault(name, []).append(_join(spans).decode("utf-8", "replace"))
        return ParsedForm(files, fields)


def _join(spans: list[tuple[bytes, int, int]]) -> bytes:
    if len(spans) == 1:
        data, start, end = spans[0]
        return data[start:end]
    return b"".join(memoryview(data)[start:end] for data, start, end in spans)


MAX_PLAIN_HEADERS = 8
"""Header lines per part that ``split_plain_form`` takes (python-multipart's own limit)."""
MAX_PLAIN_HEADER_LINE = 4096
"""Longest header line ``split_plain_form`` takes (python-multipart allows 4096 + 128)."""


def split_plain_form(body: bytes, boundary: bytes) -> list[tuple[list[tuple[bytes, bytes]], int, int]] | None:
    """The parts of a multipart body of the plain shape that browsers, curl and HTTP libraries send,
    as (header (name, value) pairs, start, end of the data in ``body``); None for any other shape,
    which the caller hands to python-multipart instead.

    Plain: the body starts with the first delimiter, every delimiter is followed by CRLF (another
    part) or ``--`` (the last, then nothing or one CRLF), header lines are ``name: value`` with a
    token name and no lone CR or LF (at most ``MAX_PLAIN_HEADERS`` of ``MAX_PLAIN_HEADER_LINE``
    bytes), and there are at most twice ``MAX_FORM_PARTS`` parts. Within that shape the parts are
    exactly what python-multipart finds (tests/test_fuzz.py compares the two); values keep what
    python-multipart keeps (leading spaces dropped, nothing else)."""
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    delimiter = b"\r\n--" + boundary
    parts: list[tuple[list[tuple[bytes, bytes]], int, int]] = []
    at = len(opening)
    while len(parts) <= 2 * MAX_FORM_PARTS:
        if body.startswith(b"\r\n", at):
            headers, start = [], at + 2
        else:
            head_end = body.find(b"\r\n\r\n", at)
            if head_end < 0:
                return None
            headers = _plain_headers(body[at:head_end])
            if headers is None:
                return None
            start = head_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            return None
        parts.append((headers, start, end))
        after = end + len(delimiter)
        if body.startswith(b"\r\n", after):
            at = after + 2
        elif body.startswith(b"--", after):
            tail = len(body) - after - 2  # what follows the last delimiter: nothing, or one CRLF
            return parts if tail == 0 or (tail == 2 and body.endswith(b"\r\n")) else None
        else:
            return None
    return None


def _plain_headers(block: bytes) -> list[tuple[bytes, bytes]] | None:
    lines = block.split(b"\r\n")
    if len(lines) > MAX_PLAIN_HEADERS:
        return None
    headers = []
    for line in lines:
        colon = line.find(b":")
        if colon <= 0 or len(line) > MAX_PLAIN_HEADER_LINE or b"\r" in line or b"\n" in line:
            return None
        name = line[:colon]
        if name.translate(None, TOKEN_CHARS):
            return None
        headers.append((name, line[colon + 1 :].lstrip(b" ")))
    return headers


@dataclass(frozen=True)
class ParsedForm:
    """An upload the guard has read and parsed (``scope[FORM]``): the route need not parse it again.
    ``files``: (filename, bytes) in order; ``fields``: text values by name."""

    files: list[tuple[str, bytes]]
    fields: dict[str, list[str]]


def _user_safe_decode(value: bytes) -> str:
    """A field name as Starlette decodes it (UTF-8, else Latin-1; the guard refuses other charsets)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
