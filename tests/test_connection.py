"""Issue #31, item 1: the request head (line and headers) is bounded in size and time in the HTTP
connection itself (``service.http.connection``), for both of uvicorn's HTTP implementations.

Each test runs a real uvicorn server in a thread, with the guarded protocol (httptools, which
``bentoml serve`` uses, and h11) and small bounds (16 KiB, 1 s), and attacks it over a socket.
tests/test_attack_served.py does the same against a real ``bentoml serve``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from service.http.connection import GuardedH11Protocol, GuardedHttpToolsProtocol

MAX_HEADER_BYTES = 16 * 1024
TIMEOUT_S = 1.0


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b"ok %d" % len(body)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
    )
    await send({"type": "http.response.body", "body": answer})


def small(protocol: type) -> type:
    return type(
        protocol.__name__, (protocol,), {"max_header_bytes": MAX_HEADER_BYTES, "header_timeout_s": TIMEOUT_S}
    )


@pytest.fixture(scope="module", params=["httptools", "h11"])
def port(request):
    protocol = small(GuardedHttpToolsProtocol if request.param == "httptools" else GuardedH11Protocol)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=protocol, log_level="warning", lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def reply_of(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    reply = b""
    try:
        while chunk := connection.recv(65536):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return reply


def read_until(connection: socket.socket, suffix: bytes) -> bytes:
    reply = b""
    while not reply.endswith(suffix) and (chunk := connection.recv(4096)):
        reply += chunk
    return reply


def test_a_normal_request_and_keep_alive_work(port):
    connection = connect(port)
    for _ in range(2):
        connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert read_until(connection, b"ok 3").startswith(b"HTTP/1.1 200")
        time.sleep(TIMEOUT_S * 1.5)  # idle between requests: the keep-alive timeout's business
    connection.close()


def test_pipelined_requests_are_answered(port):
    connection = connect(port)
    connection.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply_of(connection).count(b"ok 0") == 4


def test_a_slow_body_is_not_cut_by_the_head_timer(port):
    """Only the head has the header timeout; a body arriving over 2 s is the body guard's business."""
    connection = connect(port)
    connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
    for byte in b"abcd":
        time.sleep(TIMEOUT_S / 2)
        connection.sendall(bytes([byte]))
    assert read_until(connection, b"ok 4").startswith(b"HTTP/1.1 200")


def test_a_never_finished_header_is_refused_at_the_limit(port):
    """8 MiB of one header value, never finished (no API key needed to send it): refused once the
    head passes 16 KiB (431 from the guard, 400 from h11's own limit), the rest never read."""
    connection = connect(port)
    connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, started = 0, time.monotonic()
    with pytest.raises(OSError):  # the server closed the connection: the client's send fails
        for _ in range(8 * 64):
            connection.sendall(b"a" * 16384)
            sent += 16384
    assert sent < 4 * 1024 * 1024 and time.monotonic() - started < 5, sent


def test_a_chunked_body_and_its_trailer_work(port):
    connection = connect(port)
    connection.sendall(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3\r\nabc\r\n" * 1000
        + b"0\r\nX-Checksum: 1\r\n\r\n"
    )
    assert read_until(connection, b"ok 3000").startswith(b"HTTP/1.1 200")


def test_a_never_finished_trailer_is_refused_at_the_limit(port):
    """A chunked body's trailer (header lines after the last chunk), never finished: httptools
    joins its pieces as it joins the head's, so it is bounded the same way."""
    connection = connect(port)
    connection.sendall(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: "
    )
    sent = 0
    with pytest.raises(OSError):
        for _ in range(8 * 64):
            connection.sendall(b"a" * 16384)
            sent += 16384
    assert sent < 4 * 1024 * 1024, sent


@pytest.mark.parametrize(
    "head", [b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000, b"GET /" + b"a" * 40000]
)
def test_an_oversized_head_gets_its_answer(port, head):
    """A head over the limit sent whole (a header, or the URL): the answer says why."""
    connection = connect(port)
    connection.sendall(head)
    reply = reply_of(connection)
    assert reply.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), reply[:200]


def test_a_slow_head_is_cut_after_the_header_timeout(port):
    """Slowloris: 50 connections sending one header byte every 0.3 s are all answered 408 and
    closed within the header timeout (1 s) and a bit."""
    connections = [connect(port) for _ in range(50)]
    for connection in connections:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        connection.setblocking(False)
    started, closed = time.monotonic(), {}
    while len(closed) < len(connections) and time.monotonic() - started < 5:
        for index, connection in enumerate(connections):
            if index in closed:
                continue
            try:
                closed[index] = connection.recv(4096)
            except BlockingIOError:
                try:
                    connection.send(b"X")
                except OSError:
                    closed[index] = b""
            except OSError:
                closed[index] = b""
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    assert len(closed) == len(connections) and elapsed < TIMEOUT_S + 1.5, (len(closed), elapsed)
    assert sum(reply.startswith(b"HTTP/1.1 408") for reply in closed.values()) >= 45
    for connection in connections:
        connection.close()


def test_a_silent_connection_is_closed_without_an_answer(port):
    connection = connect(port)
    started = time.monotonic()
    assert reply_of(connection) == b""
    assert time.monotonic() - started < TIMEOUT_S + 1
