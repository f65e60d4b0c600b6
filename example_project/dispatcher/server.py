"""The dispatcher's HTTP side: signed pushes and cancels from the controller.

Routes:

- ``POST /tasks/`` (signed): accept a task. 202 accepted, 200 repeated push, 400 invalid
  body, 401 bad signature, 409 another attempt of the task is still running, 413 body too
  large, 429 at capacity (with ``Retry-After``), 503 not checked in yet, or shutting down
  (with ``Retry-After``).
- ``POST /tasks/<guid>/cancel/`` (signed): 202 cancelling, 200 already finished or unknown,
  400 a body that names another task.
- ``GET /health/``: 200 with the dispatcher guid and its load (no secrets).

Every answer is JSON, errors of the HTTP layer included (405 for other methods). A
connection that stays silent for ``request_timeout`` seconds (a request, headers or body
that stop arriving, an idle kept-alive connection) is closed, a request must arrive whole
(request line, headers and body) within ``request_deadline`` seconds of its first byte
however slowly it trickles in, its headers may take at most ``MAX_HEADER_BYTES``, and at
most ``max_connections`` connections are served at once: further ones are closed at once.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dispatcher.tasks import PushError, TaskManager, parse_push
from kohakku_controller.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify_signature,
)

logger = logging.getLogger(__name__)

_CANCEL_PATH = re.compile(r"^/tasks/(?P<guid>[0-9a-fA-F-]{36})/cancel/?$")
_ALLOWED_METHODS = "GET, POST"
# All header lines of one request together (each line is also capped at 64 KiB).
MAX_HEADER_BYTES = 64 * 1024


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _decode_json(body: bytes) -> Any:
    """The JSON of a request body; raise :class:`PushError` (400) when it is malformed."""
    try:
        # NaN, Infinity and numbers beyond a float (1e400) are refused, not decoded.
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PushError(400, {"non_field_errors": [f"malformed JSON: {exc}"]}) from None
    except RecursionError:
        raise PushError(400, {"non_field_errors": ["malformed JSON: nested too deeply"]}) from None


class _HeadersTooLarge(Exception):
    """The header lines of a request exceed ``MAX_HEADER_BYTES``."""


class _DeadlineSocketReader(io.RawIOBase):
    """The reads of one connection: each waits ``silence`` seconds at most, and none goes
    past the deadline of the current request, set when its first bytes arrive."""

    def __init__(self, sock: socket.socket, silence: float, deadline_seconds: float) -> None:
        super().__init__()
        self.sock = sock
        self.silence = silence
        self.deadline_seconds = deadline_seconds
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self.silence
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request did not arrive before its deadline")
        self.sock.settimeout(timeout)
        try:
            count = self.sock.recv_into(buffer)
        finally:
            # Writes keep the plain silence timeout.
            self.sock.settimeout(self.silence)
        if count and self.deadline is None:
            self.deadline = time.monotonic() + self.deadline_seconds
        return count


class _RequestReader(io.BufferedReader):
    """Buffered reads of one connection; caps the header lines while they are parsed."""

    raw: _DeadlineSocketReader
    header_bytes_left: int | None = None

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        if self.header_bytes_left is not None:
            self.header_bytes_left -= len(line)
            if self.header_bytes_left < 0:
                raise _HeadersTooLarge
        return line


class DispatcherHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the task manager and the signing secret."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        tasks: TaskManager,
        secret_provider: Callable[[], str],
        guid_provider: Callable[[], str],
        max_body_bytes: int,
        signature_tolerance: int,
        *,
        request_timeout: float = 10.0,
        request_deadline: float = 30.0,
        max_connections: int = 128,
        on_signature_mismatch: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(address, DispatcherRequestHandler)
        # Told of each request signed in the right form and in time but with another key.
        self.on_signature_mismatch = on_signature_mismatch
        self.tasks = tasks
        self.secret_provider = secret_provider
        self.guid_provider = guid_provider
        self.max_body_bytes = max_body_bytes
        self.signature_tolerance = signature_tolerance
        self.request_timeout = request_timeout
        self.request_deadline = request_deadline
        self.max_connections = max_connections
        self._connection_slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Each connection holds a thread: beyond the cap, close new ones instead.
        if not self._connection_slots.acquire(blocking=False):
            logger.warning(
                "closed a connection from %s: %d connections are open",
                client_address[0] if client_address else "?",
                self.max_connections,
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connection_slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (reset, closed before reading its answer) is routine:
        # no traceback on stderr for it. Anything else is logged with its traceback.
        client = client_address[0] if client_address else "?"
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("connection from %s lost", client)
            return
        logger.exception("error while serving %s", client)


class DispatcherRequestHandler(BaseHTTPRequestHandler):
    """Routes the controller's requests; every answer is JSON."""

    server: DispatcherHTTPServer
    server_version = "kohakku-reference-dispatcher"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Not HTTP/0.9: errors in a request line that names no version still get a status line.
    default_request_version = "HTTP/1.1"
    rfile: _RequestReader
    # Buffer the answer so headers and body leave in one segment (no Nagle/delayed-ACK
    # stall on kept-alive connections); the base class flushes after each request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def setup(self) -> None:
        # The socket timeout: a silent connection ends instead of holding its thread.
        self.timeout = self.server.request_timeout
        super().setup()
        # Read through the request deadline instead (a trickle of bytes does not hold the
        # connection either); the plain reader is closed so the socket can close.
        self.rfile.close()
        self.rfile = _RequestReader(
            _DeadlineSocketReader(
                self.connection, self.server.request_timeout, self.server.request_deadline
            )
        )

    def handle_one_request(self) -> None:
        self.rfile.raw.deadline = None
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.rfile.header_bytes_left = MAX_HEADER_BYTES
        try:
            return super().parse_request()
        except TimeoutError:
            self.send_error(408, "the headers did not arrive in time")
        except _HeadersTooLarge:
            self.send_error(431, f"the headers are larger than {MAX_HEADER_BYTES} bytes")
        finally:
            self.rfile.header_bytes_left = None
        return False

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (bad request line, unknown method, …) as JSON."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        detail = message or self.responses.get(code, ("error",))[0]
        self._answer(code, {"detail": detail})

    def _method_not_allowed(self) -> None:
        # The body, if any, is not read: close the connection rather than drain it.
        self.close_connection = True
        self._answer(
            405,
            {"detail": f"method {self.command} is not allowed"},
            {"Allow": _ALLOWED_METHODS},
        )

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _method_not_allowed
    do_TRACE = do_CONNECT = _method_not_allowed

    def _answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            # Tell the client not to send another request on this connection.
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") == "/health":
            self._answer(
                200,
                {
                    "status": "ok",
                    "dispatcher_guid": self.server.guid_provider() or None,
                    "running_tasks": len(self.server.tasks.running_task_guids()),
                    "free_capacity": self.server.tasks.free_capacity(),
                },
            )
            return
        self._answer(404, {"detail": "not found"})

    def do_POST(self) -> None:
        try:
            self._post()
        except ConnectionError:
            raise  # the client went away: nothing to answer (see handle_error)
        except Exception:
            logger.exception("error while handling %s %s", self.command, self.path)
            self.close_connection = True
            self._answer(500, {"detail": "internal dispatcher error"})

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        cancel = _CANCEL_PATH.match(path)
        if not cancel and path.rstrip("/") != "/tasks":
            self._answer(404, {"detail": "not found"})
            return
        if not self._verified(body):
            return
        try:
            if cancel:
                status, answer = self._cancel(cancel["guid"].lower(), body)
            else:
                push = parse_push(_decode_json(body), list(self.server.tasks.backends))
                idempotency_key = self.headers.get("Idempotency-Key")
                status, answer = self.server.tasks.accept(push, idempotency_key)
        except PushError as exc:
            self._answer(exc.status, exc.body, exc.headers)
            return
        self._answer(status, answer)

    def _read_body(self) -> bytes | None:
        if "Transfer-Encoding" in self.headers:
            # Whatever its value: a body framed otherwise than by Content-Length is not read.
            self.close_connection = True
            self._answer(411, {"detail": "Content-Length is required (no Transfer-Encoding)"})
            return None
        lengths = self.headers.get_all("Content-Length") or ["0"]
        raw_length = lengths[0].strip()
        # Only ASCII digits: int() would also take "1_0", "+5" or non-ASCII digits. Several
        # Content-Length headers are refused too: which one frames the body is ambiguous.
        if len(lengths) > 1 or not (raw_length.isascii() and raw_length.isdigit()):
            self.close_connection = True
            self._answer(400, {"Content-Length": ["must be one number of bytes in digits 0-9"]})
            return None
        digits = raw_length.lstrip("0") or "0"
        # int() refuses thousands of digits; any such length is far too large anyway.
        length = int(digits) if len(digits) <= 20 else self.server.max_body_bytes + 1
        if length > self.server.max_body_bytes:
            # The body is not read: close the connection instead of draining it.
            self.close_connection = True
            self._answer(413, {"detail": f"body is larger than {self.server.max_body_bytes} bytes"})
            return None
        if not length:
            return b""
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            self._answer(408, {"detail": "the body did not arrive in time"})
            return None
        if len(body) < length:
            self.close_connection = True
            self._answer(400, {"detail": "the body is shorter than its Content-Length"})
            return None
        return body

    def _verified(self, body: bytes) -> bool:
        secret = self.server.secret_provider()
        if not secret:
            self._answer(503, {"detail": "dispatcher has not checked in yet"})
            return False
        try:
            verify_signature(
                [secret],
                body,
                self.headers.get(TIMESTAMP_HEADER),
                self.headers.get(SIGNATURE_HEADER),
                tolerance=self.server.signature_tolerance,
            )
        except SignatureError as exc:
            logger.warning("refused %s %s: signature %s", self.command, self.path, exc.reason)
            self._answer(401, {"detail": str(exc), "reason": exc.reason})
            if exc.reason == "mismatch" and self.server.on_signature_mismatch is not None:
                self.server.on_signature_mismatch()
            return False
        return True

    def _cancel(self, task_guid: str, body: bytes) -> tuple[int, dict[str, Any]]:
        # The signature covers the body but not the path: a body that names another task is
        # refused, so a cancel captured for one task cannot be replayed against another.
        data = _decode_json(body) if body.strip() else {}
        if not isinstance(data, dict):
            raise PushError(400, {"non_field_errors": ["the body must be a JSON object"]})
        if str(data.get("task_guid", task_guid)).lower() != task_guid:
            raise PushError(400, {"task_guid": ["must be the task named in the path"]})
        if "callback_token" in data:
            # The push of this very task, replayed against its cancel path.
            raise PushError(400, {"non_field_errors": ["a task push is not a cancel request"]})
        attempt = data.get("attempt")
        if attempt is not None and (
            isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1
        ):
            raise PushError(400, {"attempt": ["must be an integer of at least 1"]})
        return self.server.tasks.cancel(task_guid, attempt)
