"""The HTTP layer of the reference dispatcher: timeouts, connection cap, strict parsing."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from kohakku_controller.signing import sign_request
from tests.dispatcher.conftest import skill_zip
from tests.dispatcher.fakes import push, task_body, wait_for


def secret(controller) -> str:
    return controller.secret_of("test-dispatcher")


def connect(dispatcher, timeout: float = 5.0) -> socket.socket:
    host, port = dispatcher.server.server_address[:2]
    return socket.create_connection((host, port), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the test's timeout fails)."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def json_body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_connection_that_stops_mid_body_is_closed_after_the_timeout(make_dispatcher):
    dispatcher = make_dispatcher(request_timeout=0.5)
    with connect(dispatcher) as sock:
        sock.sendall(b"POST /tasks/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        started = time.monotonic()
        answer = read_until_closed(sock)

    assert time.monotonic() - started < 4
    assert answer.startswith(b"HTTP/1.1 408")
    assert "did not arrive in time" in json_body(answer)["detail"]


def test_idle_connection_is_closed_after_the_timeout(make_dispatcher):
    dispatcher = make_dispatcher(request_timeout=0.5)
    with connect(dispatcher) as sock:
        sock.sendall(b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(4096)
        started = time.monotonic()
        rest = read_until_closed(sock)  # kept alive, then closed once idle

    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""
    assert 0.3 < time.monotonic() - started < 4


def _health_answers(dispatcher) -> bool:
    try:
        return httpx.get(dispatcher.endpoint_url + "/health/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_connections_beyond_the_cap_are_closed_at_once(make_dispatcher):
    dispatcher = make_dispatcher(request_timeout=30, max_connections=2)
    held = [connect(dispatcher), connect(dispatcher)]
    try:
        with connect(dispatcher) as extra:
            started = time.monotonic()
            assert read_until_closed(extra) == b""
            assert time.monotonic() - started < 4  # not the 30 s request timeout
    finally:
        held.pop().close()
    # A freed slot serves again.
    assert wait_for(lambda: _health_answers(dispatcher), 5, "a free connection slot")
    held[0].close()


def test_deeply_nested_push_is_a_400(controller, dispatcher):
    # Deep enough for the decoder to give up on every supported Python version.
    depth = 100_000
    response = push(dispatcher.endpoint_url, b"[" * depth + b"]" * depth, secret(controller))

    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["malformed JSON: nested too deeply"]}


@pytest.mark.parametrize(
    ("timeout", "field"),
    [
        ("NaN", "non_field_errors"),
        ("Infinity", "non_field_errors"),
        ("-Infinity", "non_field_errors"),
        ("1e400", "non_field_errors"),
        ("1e300", "timeout_seconds"),
        ("1" + "0" * 30, "timeout_seconds"),
        ("true", "timeout_seconds"),
        ("0", "timeout_seconds"),
    ],
)
def test_push_with_a_non_finite_or_out_of_range_timeout_is_refused(
    controller, store, dispatcher, timeout, field
):
    body = task_body(controller, store, skill_zip("print('{}')"), timeout_seconds=30)
    raw = (
        json.dumps(body)
        .encode()
        .replace(b'"timeout_seconds": 30', b'"timeout_seconds": ' + timeout.encode())
    )
    headers = {"Idempotency-Key": f"{body['task_guid']}:1"}
    response = httpx.post(
        dispatcher.endpoint_url + "/tasks/",
        content=raw,
        headers={**headers, **sign_request(secret(controller), raw)},
    )

    assert response.status_code == 400
    assert field in response.json()
    time.sleep(0.2)
    assert controller.callbacks_for(body["task_guid"]) == []
    assert store.downloads == 0


@pytest.mark.parametrize("length", ["1_0", "+5", "0x10", "1 0"])
def test_content_length_with_anything_but_digits_is_a_400(dispatcher, length):
    with connect(dispatcher) as sock:
        sock.sendall(
            f"POST /tasks/ HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
            + b"0123456789"
        )
        answer = read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 400")
    assert "Content-Length" in json_body(answer)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_answer_json_405_with_allow(dispatcher, method):
    response = httpx.request(method, dispatcher.endpoint_url + "/tasks/", content=b"{}")

    assert response.status_code == 405
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Allow"] == "GET, POST"
    assert response.json() == {"detail": f"method {method} is not allowed"}


def test_head_answers_405_without_a_body(dispatcher):
    with connect(dispatcher) as sock:
        sock.sendall(b"HEAD /health/ HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert b"Allow: GET, POST" in head
    assert body == b""


@pytest.mark.parametrize(
    ("raw_request", "status"),
    [
        (b"BREW /tasks/ HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /health/ HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
)
def test_errors_of_the_http_layer_are_json(dispatcher, raw_request, status):
    with connect(dispatcher) as sock:
        sock.sendall(raw_request)
        answer = read_until_closed(sock)

    assert answer.startswith(f"HTTP/1.1 {status}".encode())
    assert b"Content-Type: application/json" in answer
    assert "detail" in json_body(answer)
