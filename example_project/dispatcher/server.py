"""The dispatcher's HTTP side: signed pushes and cancels from the controller.

Routes:

- ``POST /tasks/`` (signed): accept a task. 202 accepted, 200 repeated push, 400 invalid
  body, 401 bad signature, 409 another attempt of the task is still running, 413 body too
  large, 429 at capacity (with ``Retry-After``), 503 not checked in yet or shutting down.
- ``POST /tasks/<guid>/cancel/`` (signed): 202 cancelling, 200 already finished or unknown.
- ``GET /health/``: 200 with the dispatcher guid and its load (no secrets).

Every answer is JSON, errors of the HTTP layer included (405 for other methods). A
connection that stays silent for ``request_timeout`` seconds (a request, headers or body
that stop arriving, an idle kept-alive connection) is closed, and at most
``max_connections`` are served at once: further ones are closed at once.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


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
        max_connections: int = 128,
    ) -> None:
        super().__init__(address, DispatcherRequestHandler)
        self.tasks = tasks
        self.secret_provider = secret_provider
        self.guid_provider = guid_provider
        self.max_body_bytes = max_body_bytes
        self.signature_tolerance = signature_tolerance
        self.request_timeout = request_timeout
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


class DispatcherRequestHandler(BaseHTTPRequestHandler):
    """Routes the controller's requests; every answer is JSON."""

    server: DispatcherHTTPServer
    server_version = "kohakku-reference-dispatcher"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Buffer the answer so headers and body leave in one segment (no Nagle/delayed-ACK
    # stall on kept-alive connections); the base class flushes after each request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def setup(self) -> None:
        # The socket timeout: a silent connection ends instead of holding its thread.
        self.timeout = self.server.request_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (bad request line, unknown method, …) as JSON."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        detail = message or self.responses.get(code, ("error",))[0]
        self._answer(code, {"detail": detail}, {"Connection": "close"})

    def _method_not_allowed(self) -> None:
        # The body, if any, is not read: close the connection rather than drain it.
        self.close_connection = True
        self._answer(
            405,
            {"detail": f"method {self.command} is not allowed"},
            {"Allow": _ALLOWED_METHODS, "Connection": "close"},
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
        except Exception:
            logger.exception("error while handling %s %s", self.command, self.path)
            self.close_connection = True
            self._answer(500, {"detail": "internal dispatcher error"})

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        if path.rstrip("/") == "/tasks":
            if self._verified(body):
                self._push(body)
            return
        match = _CANCEL_PATH.match(path)
        if match:
            if self._verified(body):
                status, answer = self.server.tasks.cancel(match["guid"].lower())
                self._answer(status, answer)
            return
        self._answer(404, {"detail": "not found"})

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._answer(411, {"detail": "Content-Length is required"})
            return None
        raw_length = (self.headers.get("Content-Length") or "0").strip()
        # Only ASCII digits: int() would also take "1_0", "+5" or non-ASCII digits.
        if not (raw_length.isascii() and raw_length.isdigit()):
            self.close_connection = True
            self._answer(400, {"Content-Length": ["must be a number of bytes in digits 0-9"]})
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
            return False
        return True

    def _push(self, body: bytes) -> None:
        try:
            # NaN, Infinity and numbers beyond a float (1e400) are refused, not decoded.
            data = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (UnicodeDecodeError, ValueError) as exc:
            self._answer(400, {"non_field_errors": [f"malformed JSON: {exc}"]})
            return
        except RecursionError:
            self._answer(400, {"non_field_errors": ["malformed JSON: nested too deeply"]})
            return
        try:
            push = parse_push(data, list(self.server.tasks.backends))
            status, answer = self.server.tasks.accept(push, self.headers.get("Idempotency-Key"))
        except PushError as exc:
            self._answer(exc.status, exc.body, exc.headers)
            return
        self._answer(status, answer)
