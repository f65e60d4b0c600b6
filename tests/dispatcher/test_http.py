"""The HTTP layer of the reference dispatcher: timeouts, connection cap, strict parsing."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import uuid

import httpx
import pytest

from dispatcher.server import MAX_HEADER_BYTES
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


def read_until_dropped(sock: socket.socket) -> bytes:
    """Like :func:`read_until_closed`, for a server that may reset the connection."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset, as a client that crashes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize(
    "start",
    [
        b"GET /health",
        b"POST /tasks/ HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"POST /tasks/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
    ],
    ids=["request line", "headers", "body"],
)
def test_request_that_trickles_in_is_cut_off_at_its_deadline(make_dispatcher, start):
    # Each byte comes well within the silence timeout: only the overall deadline ends it.
    dispatcher = make_dispatcher(request_timeout=5, request_deadline=1)
    stop = threading.Event()

    def drip(sock: socket.socket) -> None:
        try:
            sock.sendall(start)
            while not stop.wait(0.1):
                sock.sendall(b"a")
        except OSError:
            pass  # the server closed the connection

    with connect(dispatcher, timeout=15) as sock:
        dripper = threading.Thread(target=drip, args=(sock,), daemon=True)
        started = time.monotonic()
        dripper.start()
        try:
            answer = read_until_dropped(sock)
        finally:
            stop.set()
            dripper.join()

    assert time.monotonic() - started < 1 + 4
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_request_deadline_starts_again_for_each_kept_alive_request(make_dispatcher):
    dispatcher = make_dispatcher(request_timeout=5, request_deadline=1)
    with connect(dispatcher) as sock:
        for _ in range(3):
            time.sleep(0.6)  # idle between requests does not count against the deadline
            sock.sendall(b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_headers_larger_than_the_cap_in_all_are_a_431(dispatcher):
    # Each line is short; only their sum is too large. Send no more than the server reads.
    line = b"X-Filler: " + b"a" * 4000 + b"\r\n"
    count = MAX_HEADER_BYTES // len(line) + 1
    with connect(dispatcher) as sock:
        sock.sendall(b"GET /health/ HTTP/1.1\r\nHost: x\r\n" + line * count)
        answer = read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 431")
    assert json_body(answer) == {"detail": f"the headers are larger than {MAX_HEADER_BYTES} bytes"}


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 2\r\nContent-Length: 5\r\n",
        b"Content-Length: 2\r\nContent-Length: 2\r\n",
        b"Content-Length: \r\n",
    ],
    ids=["conflicting", "repeated", "empty"],
)
def test_content_length_that_is_repeated_or_empty_is_a_400(dispatcher, headers):
    with connect(dispatcher) as sock:
        sock.sendall(b"POST /tasks/ HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n{}")
        answer = read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 400")
    assert "Content-Length" in json_body(answer)


@pytest.mark.parametrize("encoding", ["chunked", "gzip, chunked", "identity"])
def test_any_transfer_encoding_is_a_411_and_its_body_is_not_read_as_a_request(dispatcher, encoding):
    with connect(dispatcher) as sock:
        sock.sendall(
            f"POST /tasks/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {encoding}\r\n\r\n".encode()
            + b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = read_until_dropped(sock)

    assert answer.startswith(b"HTTP/1.1 411")
    assert b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1") == 1  # the smuggled request got no answer


def test_clients_that_reset_the_connection_leave_no_traceback(dispatcher, capfd, caplog):
    caplog.set_level(logging.WARNING)
    # One resets in the middle of its body, one before reading the answers it asked for.
    with connect(dispatcher) as sock:
        sock.sendall(b"POST /tasks/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        reset(sock)
    with connect(dispatcher) as sock:
        sock.sendall(b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        reset(sock)
    slots = dispatcher.server._connection_slots
    wait_for(lambda: slots._value == dispatcher.config.max_connections, 5, "connections to end")

    assert _health_answers(dispatcher)
    assert "Traceback" not in capfd.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("callback_url", "http://"),
        ("callback_url", "http://[::1/"),
        ("callback_token", "token\r\nX-Injected: 1"),
        ("callback_token", "t\u00f6ken"),
        ("skill.download_url", "https:///package.zip"),
        ("result.upload_url", "http://store:port/"),
        ("result.headers", {"X-Amz-Meta": "caf\u00e9"}),
        ("result.headers", {"Bad Name": "x"}),
        ("result.headers", {"X-Split": "a\r\nb"}),
    ],
)
def test_push_whose_urls_or_headers_cannot_be_sent_is_a_400(
    controller, store, dispatcher, field, value
):
    # Refused before anything runs: accepted, they would only fail (or never report) later.
    body = task_body(controller, store, skill_zip("print('{}')"))
    *parents, name = field.split(".")
    target = body
    for parent in parents:
        target = target[parent]
    target[name] = value
    response = push(dispatcher.endpoint_url, body, secret(controller))

    assert response.status_code == 400
    assert field in response.json()
    assert dispatcher.tasks.running_task_guids() == []


def test_cancel_whose_body_names_another_task_or_attempt_is_refused(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("import time; time.sleep(30)"), attempt=2)
    assert push(dispatcher.endpoint_url, body, secret(controller)).status_code == 202
    path = f"/tasks/{body['task_guid']}/cancel/"
    # A signed cancel of another task, replayed against this one.
    other = {"task_guid": str(uuid.uuid4()), "attempt": 1, "reason": "cancellation requested"}

    replayed = push(
        dispatcher.endpoint_url, json.dumps(other).encode(), secret(controller), path=path
    )
    not_json = push(dispatcher.endpoint_url, b"[1]", secret(controller), path=path)
    # The task's own signed push, replayed against its cancel path.
    replayed_push = push(dispatcher.endpoint_url, body, secret(controller), path=path)
    assert replayed_push.status_code == 400

    assert replayed.status_code == 400
    assert replayed.json() == {"task_guid": ["must be the task named in the path"]}
    assert not_json.status_code == 400
    assert dispatcher.tasks.running_task_guids() == [body["task_guid"]]
    own = {**other, "task_guid": body["task_guid"]}
    # A cancel of an earlier attempt (a replay after a requeue) does not stop this one.
    older = push(
        dispatcher.endpoint_url,
        json.dumps({**own, "attempt": body["attempt"] - 1}).encode(),
        secret(controller),
        path=path,
    )
    bad_attempt = push(
        dispatcher.endpoint_url,
        json.dumps({**own, "attempt": "1"}).encode(),
        secret(controller),
        path=path,
    )
    assert (older.status_code, older.json()["status"]) == (200, "unknown")
    assert bad_attempt.status_code == 400
    assert dispatcher.tasks.running_task_guids() == [body["task_guid"]]
    response = push(
        dispatcher.endpoint_url,
        json.dumps({**own, "attempt": body["attempt"]}).encode(),
        secret(controller),
        path=path,
    )
    assert response.status_code == 202
    assert controller.final_callback(body["task_guid"])["status"] == "cancelled"


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
        # No version to read an answer's format from: still a full HTTP/1.1 answer.
        (b"\x00garbage\r\n\r\n", 400),
        (b"GET /health/ HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_errors_of_the_http_layer_are_json(dispatcher, raw_request, status):
    with connect(dispatcher) as sock:
        sock.sendall(raw_request)
        answer = read_until_closed(sock)

    assert answer.startswith(f"HTTP/1.1 {status}".encode())
    assert b"Content-Type: application/json" in answer
    assert "detail" in json_body(answer)


def test_an_unreachable_controller_is_named_without_the_urls_secrets():
    import socket

    import httpx

    from dispatcher.controller import transport_problem

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/v1/skills/x/download/?version=1&signature=secret"
    with pytest.raises(httpx.ConnectError) as failure:
        httpx.get(url, timeout=2)
    problem = transport_problem(failure.value, url)
    assert problem.startswith(f"ConnectError reaching http://127.0.0.1:{port}: ")
    assert "secret" not in problem and "/api/" not in problem


def test_an_unreachable_redirect_target_is_the_host_named_without_credentials():
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import httpx

    from dispatcher.controller import transport_problem

    with socket.socket() as sock:  # where the redirect points: nothing listens there
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{dead}/elsewhere?signature=x")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://user:pass@127.0.0.1:{server.server_port}/download?signature=secret"
        with pytest.raises(httpx.ConnectError) as failure:
            httpx.get(url, follow_redirects=True, timeout=2)
        problem = transport_problem(failure.value, url)
    finally:
        server.shutdown()
        server.server_close()
    assert problem.startswith(f"ConnectError reaching http://127.0.0.1:{dead}: ")
    assert "pass" not in problem and "secret" not in problem


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://127.0.0.1:99999/api/v1/tasks/x/callback/", "http://127.0.0.1:99999"),
        ("http://[::1]:9/api/v1/tasks/x/callback/", "http://[::1]:9"),
    ],
    ids=["port-out-of-range", "ipv6"],
)
def test_an_odd_controller_address_is_named_as_written(url, named):
    import httpx

    from dispatcher.controller import transport_problem

    with pytest.raises(httpx.HTTPError) as failure:
        httpx.post(url, timeout=2)
    assert transport_problem(failure.value, url).startswith(
        f"{type(failure.value).__name__} reaching {named}: "
    )


def test_a_push_while_shutting_down_is_a_503_with_retry_after(controller, store, dispatcher):
    # With Retry-After the controller gives the attempt back and sends the task elsewhere.
    dispatcher.tasks.shutdown()
    body = task_body(controller, store, skill_zip("print('{}')"))

    answer = push(dispatcher.endpoint_url, body, secret(controller))

    assert answer.status_code == 503
    assert answer.json() == {"detail": "dispatcher is shutting down"}
    assert answer.headers["Retry-After"] == "1"  # the test dispatcher's heartbeat interval
