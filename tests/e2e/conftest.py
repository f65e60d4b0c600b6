"""The whole system as real processes, started once per module.

The controller runs under gunicorn with the example project's settings, read from
environment variables; the scheduler runs as ``manage.py kohakku_scheduler``; two reference
dispatchers run as ``python -m dispatcher``. They share a database of their own, never
pytest-django's test database: on PostgreSQL (``DATABASE_URL``) a uniquely named database
created and dropped here, otherwise a temporary SQLite file. With ``REDIS_URL`` the served
processes use Redis, and with ``KOHAKKU_TEST_S3=1`` the session's SeaweedFS S3 server.

Liveness timings are shortened through the example project's ``KOHAKKU_*`` variables, so a
killed dispatcher is noticed in seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PROJECT = ROOT / "example_project"
BIN = Path(sys.executable).parent
FINAL_STATUSES = {"completed", "failed", "cancelled", "timed_out"}
# Seconds between dispatcher heartbeats (the smallest a check-in may declare); a dispatcher
# is offline after 2 missed ones, and its tasks are requeued at once.
HEARTBEAT_INTERVAL = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def skill_zip(name: str, script: str) -> bytes:
    """A skill package: ``SKILL.md`` naming ``python3 main.py`` as entrypoint, and the script."""
    skill_md = textwrap.dedent(
        f"""\
        ---
        name: {name}
        description: End-to-end test skill {name}.
        metadata:
          entrypoint: python3 main.py
        ---

        # {name}
        """
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("SKILL.md", skill_md)
        archive.writestr("main.py", textwrap.dedent(script))
    return buffer.getvalue()


# Exits 3 after writing to stderr.
FAILING_SKILL = """\
import sys
sys.stdin.read()
print("preparing", file=sys.stderr)
print("boom: the input was rejected", file=sys.stderr)
sys.exit(3)
"""

# Writes its pid to input["pid_file"], sleeps input["seconds"], prints a JSON result.
SLEEPING_SKILL = """\
import json, os, sys, time
task_input = json.load(sys.stdin)
if task_input.get("pid_file"):
    with open(task_input["pid_file"], "w") as handle:
        handle.write(str(os.getpid()))
time.sleep(float(task_input.get("seconds", 1)))
print(json.dumps({"slept": task_input.get("seconds", 1)}))
"""


@dataclass
class Stack:
    """The running processes and what the tests need to talk to them."""

    url: str
    token: str
    webhook_secret: str
    workdir: Path
    dispatchers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.url, timeout=10, headers={"Authorization": f"Token {self.token}"}
        )

    def send_webhook(self, event: str, payload: dict[str, Any]) -> httpx.Response:
        """A Standard Webhooks (``custom``) delivery signed with the stack's secret."""
        body = json.dumps(payload).encode()
        message_id = f"msg_{uuid.uuid4().hex}"
        timestamp = str(int(time.time()))
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
        return self.client.post(
            "/api/v1/webhooks/",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Webhook-Event": event,
                "webhook-id": message_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": "v1," + base64.b64encode(digest.digest()).decode(),
            },
        )

    def create_task(self, skill: str, task_input: dict[str, Any], **fields: Any) -> str:
        response = self.client.post(
            "/api/v1/tasks/", json={"skill": skill, "input": task_input, **fields}
        )
        assert response.status_code == 201, response.text
        return response.json()["guid"]

    def task(self, guid: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/tasks/{guid}/")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_status(self, guid: str, statuses: set[str], timeout: float = 30) -> dict:
        return wait_until(
            lambda: (task := self.task(guid))["status"] in statuses and task,
            timeout=timeout,
            what=f"task {guid} to become one of {sorted(statuses)}",
            interval=0.2,
        )

    def wait_until_finished(self, guid: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for_status(guid, FINAL_STATUSES, timeout)

    def upload_skill(self, name: str, package: bytes) -> None:
        created = self.client.post("/api/v1/skills/", json={"name": name})
        assert created.status_code == 201, created.text
        uploaded = self.client.post(
            f"/api/v1/skills/{name}/upload/",
            files={"file": (f"{name}.zip", package, "application/zip")},
        )
        assert uploaded.status_code == 201, uploaded.text


def _postgres_database(url: str) -> tuple[str, Callable[[], None]]:
    """Create a uniquely named database on the server of ``url``; return its URL and a dropper."""
    import psycopg

    parts = urlsplit(url)
    name = f"kohakku_e2e_{secrets.token_hex(4)}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunsplit(parts._replace(path=f"/{name}")), drop


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _log_tail(path: Path, size: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


@pytest.fixture(scope="module")
def stack_database() -> Iterator[str]:
    """The database URL the stack's processes share (a module may override this fixture).

    On the PostgreSQL server of ``DATABASE_URL``: a database of its own, dropped afterwards;
    otherwise a temporary SQLite file.
    """
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")):
        workdir = Path(tempfile.mkdtemp(prefix="kohakku-e2e-db-"))
        yield f"sqlite:///{workdir / 'e2e.sqlite3'}"
        return
    url, drop = _postgres_database(database_url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="module")
def stack_environment() -> dict[str, str]:
    """Extra environment variables for every process of the stack (modules override it)."""
    return {}


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, stack_database: str, stack_environment: dict[str, str]
) -> Iterator[Stack]:
    """Controller (gunicorn), scheduler and two dispatchers, seeded with the demo."""
    workdir = Path(tempfile.mkdtemp(prefix="kohakku-e2e-"))
    port = free_port()
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "KOHAKKU_VAR_DIR": str(workdir / "var"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "KOHAKKU_CUSTOM_WEBHOOK_SECRET": webhook_secret,
        "KOHAKKU_MISSED_HEARTBEATS": "2",
        "KOHAKKU_LOST_DISPATCHER_GRACE_SECONDS": "0",
        "KOHAKKU_CANCEL_GRACE_SECONDS": "30",
        "KOHAKKU_SCHEDULER_POLL_SECONDS": "0.5",
        "KOHAKKU_SCHEDULER_LEASE_SECONDS": "20",
        "KOHAKKU_PUSH_BACKOFF_BASE_SECONDS": "0.5",
        "DATABASE_URL": stack_database,
        **stack_environment,
    }
    (workdir / "var").mkdir()
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    if os.environ.get("KOHAKKU_TEST_S3") == "1":
        server = request.getfixturevalue("s3_server")
        env.update(
            {
                "KOHAKKU_S3_ENDPOINT_URL": server.endpoint_url,
                "KOHAKKU_S3_BUCKET": f"kohakku-e2e-{secrets.token_hex(4)}",
                "AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
            }
        )
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, command: list[str], extra: dict[str, str] | None = None):
        log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            command,
            cwd=EXAMPLE_PROJECT,
            env={**env, **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        processes.append((name, process))
        return process

    manage = [str(BIN / "python"), "manage.py"]
    try:
        for command in (["migrate", "--noinput", "-v0"], ["seed_demo"]):
            done = subprocess.run(
                manage + command, cwd=EXAMPLE_PROJECT, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"
        credentials = json.loads((workdir / "var" / "demo-credentials.json").read_text())
        spawn("web", [str(BIN / "gunicorn"), "--config=gunicorn.conf.py"])
        spawn("scheduler", [*manage, "kohakku_scheduler"])
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            for name, process in processes:
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{_log_tail(workdir / f'{name}.log')}")
            try:
                return httpx.get(url + "/health/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=60, what="the controller to answer", interval=0.2)
        result = Stack(url, credentials["operator"]["token"], webhook_secret, workdir)
        client = credentials["dispatcher_client"]
        for name in ("e2e-one", "e2e-two"):
            result.dispatchers[name] = spawn(
                name,
                [str(BIN / "python"), "-m", "dispatcher", "--log-level", "INFO"],
                {
                    "KOHAKKU_DISPATCHER_CONTROLLER": url,
                    "KOHAKKU_DISPATCHER_CLIENT_ID": client["client_id"],
                    "KOHAKKU_DISPATCHER_CLIENT_SECRET": client["client_secret"],
                    "KOHAKKU_DISPATCHER_NAME": name,
                    "KOHAKKU_DISPATCHER_LISTEN": "127.0.0.1:0",
                    "KOHAKKU_DISPATCHER_STATE_DIR": str(workdir / name),
                    "KOHAKKU_DISPATCHER_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
                    "KOHAKKU_DISPATCHER_CAPACITY": "2",
                    "KOHAKKU_DISPATCHER_KILL_GRACE": "1",
                    "KOHAKKU_DISPATCHER_CALLBACK_BACKOFF_INITIAL": "0.2",
                    "KOHAKKU_DISPATCHER_CALLBACK_BACKOFF_MAX": "1",
                },
            )

        def both_online() -> bool:
            response = result.client.get("/api/v1/dispatchers/", params={"status": "online"})
            assert response.status_code == 200, response.text
            return {d["name"] for d in response.json()} >= set(result.dispatchers)

        wait_until(both_online, timeout=30, what="both dispatchers to check in", interval=0.2)
        yield result
        result.client.close()
    except BaseException:
        for name, _process in processes:
            sys.stderr.write(f"--- {name} log ---\n{_log_tail(workdir / f'{name}.log')}\n")
        raise
    finally:
        # Dispatchers first (they send their last callbacks), then the scheduler and web.
        for _name, process in reversed(processes):
            _stop(process)


@pytest.fixture
def show_logs_on_failure(stack: Stack, request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the processes' log tails when the test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(stack.workdir.glob("*.log")):
            sys.stderr.write(f"--- {log.name} ---\n{_log_tail(log)}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
