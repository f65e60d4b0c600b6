"""The PostgreSQL server restarts under the running system: no task is lost or run twice.

The stack (gunicorn, the scheduler, two dispatchers) runs on a PostgreSQL server of the
test's own, with persistent connections as in production. Tasks are created, the server is
stopped (a fast shutdown closes every connection) for a few seconds while they run, so the
API answers 503 and callbacks, heartbeats and scheduler passes fail meanwhile; more tasks are
created as soon as it is back, and every task must end ``completed`` exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.pgserver import PostgresServer, run_postgres

from .conftest import SLEEPING_SKILL, Stack, skill_zip, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.postgres_server]


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def stack_database(postgres_server: PostgresServer) -> str:
    return postgres_server.url


@pytest.fixture(scope="module")
def stack_environment() -> dict[str, str]:
    return {
        # Persistent connections, as in production: the restart leaves every one dead.
        "DJANGO_CONN_MAX_AGE": "60",
        # The dispatchers' default retries span minutes; with the stack's short backoff
        # (0.2 s to 1 s) ten tries span the outage.
        "KOHAKKU_DISPATCHER_DOWNLOAD_ATTEMPTS": "10",
        "KOHAKKU_DISPATCHER_UPLOAD_ATTEMPTS": "10",
    }


def create_task(stack: Stack, seconds: float) -> str:
    """Create a task, sending again while the database is coming back (503 or no answer)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            response = stack.client.post(
                "/api/v1/tasks/", json={"skill": "napper", "input": {"seconds": seconds}}
            )
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 201:
            return response.json()["guid"]
        if response is not None and response.status_code != 503:
            raise AssertionError(f"{response.status_code}: {response.text}")
        assert time.monotonic() < deadline, "the controller did not come back"
        time.sleep(0.2)


def test_tasks_survive_a_database_restart(stack, postgres_server, show_logs_on_failure):
    stack.upload_skill("napper", skill_zip("napper", SLEEPING_SKILL))
    before = [create_task(stack, 3) for _ in range(8)]
    wait_until(
        lambda: sum(stack.task(guid)["status"] == "running" for guid in before) >= 2,
        timeout=30,
        what="two tasks to run",
    )

    postgres_server.stop("fast")
    outage = stack.client.get("/api/v1/tasks/")
    assert outage.status_code == 503, outage.text
    assert outage.headers["Retry-After"] == "1"
    time.sleep(4)  # the running tasks end meanwhile: their uploads or callbacks are refused
    postgres_server.start()
    after = [create_task(stack, 0.2) for _ in range(6)]

    for guid in before + after:
        task = stack.wait_until_finished(guid, timeout=120)
        assert task["status"] == "completed", task
        events = stack.client.get(f"/api/v1/tasks/{guid}/events/").json()
        kinds = Counter(event["kind"] for event in events)
        assert kinds["completed"] == 1, events
        assert kinds["created"] == 1, events
    # The dispatchers met the outage (a result upload to the controller or a final callback
    # answered 503) and tried again until it was over.
    logs = "".join((stack.workdir / f"{name}.log").read_text() for name in stack.dispatchers)
    assert "(HTTP 503" in logs
