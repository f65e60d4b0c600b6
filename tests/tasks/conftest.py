"""Factories for task tests: skills, dispatchers, dispatched tasks, signed callbacks, stubs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.utils import timezone

from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.dispatchers.secrets import encrypt_secret, generate_signing_secret
from kohakku_controller.signing import sign_request
from kohakku_controller.skills.models import Skill, SkillVersion
from kohakku_controller.tasks.models import Task
from kohakku_controller.tasks.scheduler import Scheduler


@pytest.fixture
def skill_version(db: Any) -> SkillVersion:
    skill = Skill.objects.create(name="Code review", slug="code-review")
    return SkillVersion.objects.create(
        skill=skill,
        version_number=1,
        content_hash="a" * 64,
        size=10,
        storage_ref="skills/code-review/" + "a" * 64 + ".zip",
    )


@pytest.fixture
def make_dispatcher(db: Any) -> Callable[..., Dispatcher]:
    def make(
        name: str = "d1",
        *,
        backends: tuple[str, ...] = ("local",),
        labels: dict | None = None,
        capacity: int = 4,
        endpoint_url: str = "http://127.0.0.1:9",
        online: bool = True,
        **extra: Any,
    ) -> Dispatcher:
        secret = generate_signing_secret()
        dispatcher = Dispatcher.objects.create(
            name=name,
            slug=name,
            endpoint_url=endpoint_url,
            backends=list(backends),
            labels=labels or {},
            capacity=capacity,
            heartbeat_interval_seconds=60,
            signing_secret_encrypted=encrypt_secret(secret),
            last_heartbeat_at=timezone.now() if online else None,
            **extra,
        )
        dispatcher.secret = secret
        return dispatcher

    return make


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 resets bursts of pushes
    daemon_threads = True


class StubDispatcher:
    """A threaded HTTP server on 127.0.0.1 that records pushes and cancel requests.

    ``respond(stub, handler)``, if given, answers each push in place of the usual JSON reply
    (a dispatcher that never answers, redirects, streams an endless body…); it may wait on
    ``stub.stopped``, which is set when the stub stops.
    """

    def __init__(
        self,
        fail_times: int = 0,
        status: int = 200,
        inbox: Any = None,
        respond: Callable[[StubDispatcher, BaseHTTPRequestHandler], None] | None = None,
    ) -> None:
        self.inbox = inbox  # a queue.Queue that also receives each accepted push
        self.respond = respond
        self.stopped = threading.Event()
        self.pushes: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fail_times = fail_times
        self.status = status
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real dispatcher

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                record = {
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "raw": raw,
                    "body": json.loads(raw or b"{}"),
                    "client": self.client_address,
                    "received_at": time.monotonic(),
                }
                with stub.lock:
                    if self.path.endswith("/cancel/"):
                        stub.cancels.append(record)
                        code = 200
                    else:
                        stub.pushes.append(record)
                        if stub.fail_times > 0:
                            stub.fail_times -= 1
                            code = 503
                        else:
                            code = stub.status
                        if stub.inbox is not None and 200 <= code < 300:
                            stub.inbox.put((stub, record))
                if stub.respond is not None and not self.path.endswith("/cancel/"):
                    stub.respond(stub, self)
                    return
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_dispatcher() -> Iterator[Callable[..., StubDispatcher]]:
    started: list[StubDispatcher] = []

    def start(**kwargs: Any) -> StubDispatcher:
        stub = StubDispatcher(**kwargs)
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.stop()


@pytest.fixture
def scheduler(settings: Any) -> Iterator[Scheduler]:
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUSH_CONNECT_TIMEOUT": 1.0,
        "PUSH_READ_TIMEOUT": 2.0,
    }
    with Scheduler(name="test-scheduler", push_concurrency=4) as instance:
        yield instance


@pytest.fixture
def dispatch(make_dispatcher: Callable[..., Dispatcher]) -> Callable[..., tuple[Task, str]]:
    """Claim a task for a dispatcher (without pushing); returns (task, callback token)."""

    def run(task: Task, dispatcher: Dispatcher | None = None) -> tuple[Task, str]:
        dispatcher = dispatcher or make_dispatcher()
        with Scheduler(name="claimer") as sched:
            claims, _ = sched.claim_and_assign(timezone.now())
        claim = next(c for c in claims if c.task.pk == task.pk)
        task = Task.objects.select_related("dispatcher", "skill_version__skill").get(pk=task.pk)
        task.dispatcher.secret = dispatcher.secret
        task.signing_secret = dispatcher.secret  # survives refresh_from_db
        return task, claim.callback_token

    return run


def signed_headers(
    token: str, secret: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    headers = sign_request(secret, body, timestamp)
    return {
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_X_KOHAKKU_TIMESTAMP": headers["X-Kohakku-Timestamp"],
        "HTTP_X_KOHAKKU_SIGNATURE": headers["X-Kohakku-Signature"],
    }


def callback(
    client: Any,
    task: Task,
    token: str,
    payload: Any,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
    raw: bytes | None = None,
    **extra: Any,
) -> Any:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = signed_headers(token, secret or task.signing_secret, body, timestamp)
    headers.update(extra)
    return post_callback(client, task, body, headers)


def post_callback(client: Any, task: Task, body: bytes, headers: dict[str, str]) -> Any:
    """POST ``body`` to the task's callback URL with exactly ``headers``."""
    return client.generic(
        "POST", f"/api/v1/tasks/{task.guid}/callback/", body, content_type="application/json",
        **headers,
    )  # fmt: skip


def wakes(waiter: Any, action: Callable[[], Any]) -> bool:
    """Whether ``action`` wakes a scheduler that waits on ``waiter`` (closed afterwards)."""
    stop = threading.Event()
    woke = threading.Event()
    try:
        waiter.wait(0.01, stop)  # connects and subscribes before the action

        def wait() -> None:
            waiter.wait(30, stop)
            woke.set()

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.2)
        action()
        thread.join(timeout=10)
        return woke.is_set()
    finally:
        stop.set()
        waiter.close()
