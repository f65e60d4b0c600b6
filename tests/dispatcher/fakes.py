"""A small fake controller and a fake object store, speaking the documented contracts.

The fake controller implements ``/o/token/`` (client credentials), check-in, heartbeat and
the task callback (checking the bearer token and the signature); it can be stopped and
started again on the same port to play a controller that is down. The fake store serves
packages (as a presigned S3 URL would) and takes result uploads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from kohakku_controller.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign_request,
    verify_signature,
)

CLIENT_ID = "dispatcher-client"
CLIENT_SECRET = "dispatcher-client-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # One request per connection, so a stopped service really stops answering.
    protocol_version = "HTTP/1.0"
    wbufsize = 64 * 1024

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        status, answer, headers = self.server.route(request)
        raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Type" not in headers:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, route: Callable[[Request], tuple[int, Any, dict]]) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.route = route  # type: ignore[assignment]


class _Service:
    """A routed HTTP service on a fixed port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: _Server | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = _Server(self.port, self.route)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def route(self, request: Request) -> tuple[int, Any, dict]:
        raise NotImplementedError


@dataclass
class FakeDispatcherRecord:
    guid: str
    secret: str
    checkin: dict[str, Any]
    application: str


@dataclass
class Callback:
    task_guid: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeController(_Service):
    """Token endpoint, check-in, heartbeat and callbacks, as the controller documents them."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.dispatchers: dict[str, FakeDispatcherRecord] = {}
        self.checkins: list[dict[str, Any]] = []
        self.checkin_answers: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.heartbeat_statuses: list[int] = []
        self.callbacks: list[Callback] = []
        self.callback_attempts: list[Callback] = []
        self.callback_tokens: dict[str, str] = {}
        # status code to answer per callback status (e.g. {"completed": 409}); default 200.
        self.callback_answers: dict[str, int] = {}

    # -- helpers for tests -------------------------------------------------------------------
    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def secret_of(self, name: str) -> str:
        return self.dispatchers[name].secret

    def callbacks_for(self, task_guid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c.body for c in self.callbacks if c.task_guid == task_guid]

    def final_callback(self, task_guid: str, timeout: float = 10.0) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            for body in self.callbacks_for(task_guid):
                if body["status"] != "running":
                    return body
            return None

        return wait_for(final, timeout, f"final callback of {task_guid}")

    def callback_url(self, task_guid: str) -> str:
        return f"{self.url}/api/v1/tasks/{task_guid}/callback/"

    # -- routes ----------------------------------------------------------------------------------
    def route(self, request: Request) -> tuple[int, Any, dict]:
        path = request.path.split("?", 1)[0]
        if path == "/o/token/" and request.method == "POST":
            return self._token(request)
        if path.endswith("/callback/") and path.startswith("/api/v1/tasks/"):
            return self._callback(request, path.split("/")[4])
        application = self._bearer_application(request)
        if application is None:
            return 401, {"detail": "Authentication credentials were not provided."}, {}
        if path == "/api/v1/dispatchers/checkin/":
            return self._checkin(request, application)
        if path.startswith("/api/v1/dispatchers/") and path.endswith("/heartbeat/"):
            return self._heartbeat(request, path.split("/")[4])
        return 404, {"detail": "not found"}, {}

    def _token(self, request: Request) -> tuple[int, Any, dict]:
        auth = request.headers.get("authorization", "")
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        form = dict(part.split("=", 1) for part in request.body.decode().split("&") if "=" in part)
        if auth != f"Basic {expected}" or form.get("grant_type") != "client_credentials":
            return 401, {"error": "invalid_client"}, {}
        if form.get("scope") != "dispatchers":
            return 400, {"error": "invalid_scope"}, {}
        token = secrets.token_hex(8)
        with self.lock:
            self.tokens.add(token)
            self.token_requests += 1
        answer = {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        return 200, {**answer, "scope": "dispatchers"}, {}

    def _bearer_application(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        with self.lock:
            return CLIENT_ID if auth.startswith("Bearer ") and token in self.tokens else None

    def _checkin(self, request: Request, application: str) -> tuple[int, Any, dict]:
        body = request.json()
        with self.lock:
            self.checkins.append(body)
            record = self.dispatchers.get(body["name"])
            answer: dict[str, Any] = {"status": "ok"}
            if record is None:
                record = FakeDispatcherRecord(
                    str(uuid.uuid4()), secrets.token_hex(16), body, application
                )
                self.dispatchers[body["name"]] = record
                answer.update(action="created", signing_secret=record.secret)
            else:
                record.checkin = body
                answer["action"] = "updated"
                if body.get("rotate_secret") is True:
                    record.secret = secrets.token_hex(16)
                    answer["signing_secret"] = record.secret
            answer.update(dispatcher_guid=record.guid, dispatcher_slug=body["name"])
            self.checkin_answers.append(answer)
        return (201 if answer["action"] == "created" else 200), answer, {}

    def _heartbeat(self, request: Request, guid: str) -> tuple[int, Any, dict]:
        with self.lock:
            known = any(record.guid == guid for record in self.dispatchers.values())
            if not known:
                return 404, {"detail": "not found"}, {}
            self.heartbeats.append({"guid": guid, **request.json()})
        return 200, {"status": "ok", "dispatcher_guid": guid}, {}

    def _callback(self, request: Request, task_guid: str) -> tuple[int, Any, dict]:
        token = self.callback_tokens.get(task_guid)
        if token is None:
            return 404, {"detail": "not found"}, {}
        if request.headers.get("authorization") != f"Bearer {token}":
            return 401, {"detail": "bad callback token"}, {}
        with self.lock:
            dispatcher_secrets = [record.secret for record in self.dispatchers.values()]
        try:
            verify_signature(
                dispatcher_secrets,
                request.body,
                request.headers.get(TIMESTAMP_HEADER.lower()),
                request.headers.get(SIGNATURE_HEADER.lower()),
            )
        except SignatureError as exc:
            return 401, {"detail": str(exc)}, {}
        callback = Callback(task_guid, request.json(), request.headers)
        with self.lock:
            self.callback_attempts.append(callback)
            status = self.callback_answers.get(callback.body["status"], 200)
            if status == 200:
                self.callbacks.append(callback)
        return status, {"status": "ok"}, {}


class FakeStore(_Service):
    """Serves skill packages and takes result uploads (like presigned S3 URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.packages: dict[str, bytes] = {}
        self.uploads: dict[str, Request] = {}
        self.downloads = 0
        self.download_attempts = 0
        # Statuses answered to the next package downloads instead of the package.
        self.download_failures: list[int] = []

    def add_package(self, data: bytes) -> tuple[str, str]:
        """Store ``data``; return its download URL and sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self.packages[digest] = data
        return f"{self.url}/packages/{digest}.zip?X-Amz-Signature=fake", digest

    def upload_url(self, task_guid: str) -> str:
        return f"{self.url}/results/{task_guid}/result.json?X-Amz-Signature=fake"

    def route(self, request: Request) -> tuple[int, Any, dict]:
        path = request.path.split("?", 1)[0]
        if request.method == "GET" and path.startswith("/packages/"):
            with self.lock:
                self.download_attempts += 1
                if self.download_failures:
                    return self.download_failures.pop(0), {"detail": "unavailable"}, {}
            data = self.packages.get(path.removeprefix("/packages/").removesuffix(".zip"))
            if data is None:
                return 404, {"detail": "no such package"}, {}
            with self.lock:
                self.downloads += 1
            return 200, data, {"Content-Type": "application/zip"}
        if request.method == "PUT" and path.startswith("/results/"):
            with self.lock:
                self.uploads[path.removeprefix("/results/")] = request
            return 200, b"", {}
        return 404, {"detail": "not found"}, {}


def task_body(
    controller: FakeController,
    store: FakeStore,
    package: bytes,
    task_input: Any = None,
    *,
    timeout_seconds: float = 30,
    content_hash: str | None = None,
    result_headers: dict[str, str] | None = None,
    task_guid: str | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """A push body as the controller pins it; registers the task's callback token."""
    task_guid = task_guid or str(uuid.uuid4())
    download_url, digest = store.add_package(package)
    token = controller.callback_tokens.setdefault(task_guid, secrets.token_hex(16))
    return {
        "task_guid": task_guid,
        "attempt": attempt,
        "skill": {
            "slug": "test-skill",
            "version": 1,
            "content_hash": content_hash or digest,
            "download_url": download_url,
        },
        "input": {} if task_input is None else task_input,
        "backend": "local",
        "labels": {},
        "timeout_seconds": timeout_seconds,
        "callback_url": controller.callback_url(task_guid),
        "callback_token": token,
        "result": {
            "key_prefix": f"results/{task_guid}/",
            "upload_url": store.upload_url(task_guid),
            "method": "PUT",
            "headers": {} if result_headers is None else result_headers,
        },
    }


def push(
    endpoint_url: str,
    body: dict[str, Any] | bytes,
    secret: str,
    *,
    path: str = "/tasks/",
    idempotency_key: str | None = None,
    timestamp: int | None = None,
) -> httpx.Response:
    """POST a signed request to the dispatcher, as the controller's scheduler does."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **sign_request(secret, raw, timestamp)}
    if isinstance(body, dict) and "task_guid" in body:
        headers["Idempotency-Key"] = idempotency_key or f"{body['task_guid']}:{body['attempt']}"
    return httpx.post(endpoint_url + path, content=raw, headers=headers, timeout=10)
