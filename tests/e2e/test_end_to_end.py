"""End to end: webhook, scheduler, dispatchers and skills as real processes.

See ``conftest.py`` for the stack. The tests share it and run in this order; the last one
kills a dispatcher.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from demo.management.commands.seed_demo import DEMO_EVENT, DEMO_WORKFLOW

from .conftest import FAILING_SKILL, SLEEPING_SKILL, Stack, skill_zip, wait_until

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


@pytest.fixture(scope="module")
def skills(stack: Stack) -> None:
    """The failing and sleeping skills, uploaded through the API."""
    stack.upload_skill("e2e-fail", skill_zip("e2e-fail", FAILING_SKILL))
    stack.upload_skill("e2e-sleep", skill_zip("e2e-sleep", SLEEPING_SKILL))


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state  # exited, waiting to be reaped


def test_signed_webhook_becomes_a_completed_task_with_a_downloadable_result(stack):
    response = stack.send_webhook(DEMO_EVENT, {"type": DEMO_EVENT, "name": "Grace"})

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "ok"
    assert answer["routed_to"] == DEMO_WORKFLOW
    task = stack.wait_until_finished(answer["task_guid"])
    assert task["status"] == "completed", task
    assert task["exit_code"] == 0
    assert task["origin"] == "workflow"
    assert task["input"] == {"name": "Grace"}
    assert task["dispatcher"]["name"] in stack.dispatchers
    assert task["result_key"].startswith(f"results/{task['guid']}/")
    result = stack.client.get(f"/api/v1/tasks/{task['guid']}/result/", follow_redirects=True)
    assert result.status_code == 200, result.text
    assert result.json() == {
        "greeting": "Hello, Grace!",
        "input": {"name": "Grace"},
        "task_guid": task["guid"],
    }
    assert task["result_metadata"]["size_bytes"] == len(result.content)


def test_badly_signed_webhook_creates_no_task(stack):
    stack.webhook_secret, real = "whsec_" + "A" * 44, stack.webhook_secret
    try:
        response = stack.send_webhook(DEMO_EVENT, {"type": DEMO_EVENT, "name": "Mallory"})
    finally:
        stack.webhook_secret = real

    assert response.status_code == 401, response.text
    tasks = stack.client.get("/api/v1/tasks/", params={"origin": "workflow"}).json()
    assert all(task["input"] != {"name": "Mallory"} for task in tasks)


def test_skill_that_exits_non_zero_fails_with_its_exit_code_and_stderr_tail(stack, skills):
    guid = stack.create_task("e2e-fail", {"any": "input"})

    task = stack.wait_until_finished(guid)

    assert task["status"] == "failed", task
    assert task["exit_code"] == 3
    assert "exited with code 3" in task["error_message"]
    assert "boom: the input was rejected" in task["error_message"]
    assert task["result_key"] == ""


def test_skill_that_exceeds_its_timeout_ends_timed_out(stack, skills):
    pid_file = stack.workdir / "timeout.pid"
    guid = stack.create_task(
        "e2e-sleep", {"seconds": 60, "pid_file": str(pid_file)}, timeout_seconds=2
    )

    task = stack.wait_until_finished(guid, timeout=30)

    assert task["status"] == "timed_out", task
    assert "timeout of 2 s" in task["status_reason"]
    pid = int(wait_until(pid_file.exists, timeout=5, what="the pid file") and pid_file.read_text())
    wait_until(lambda: process_is_gone(pid), timeout=15, what="the skill process to be stopped")


def test_cancel_stops_a_running_task(stack, skills):
    pid_file = stack.workdir / "cancel.pid"
    guid = stack.create_task("e2e-sleep", {"seconds": 60, "pid_file": str(pid_file)})
    stack.wait_for_status(guid, {"running"})
    wait_until(pid_file.exists, timeout=10, what="the skill to start")
    pid = int(pid_file.read_text())

    response = stack.client.post(f"/api/v1/tasks/{guid}/cancel/")

    assert response.status_code == 202, response.text
    task = stack.wait_until_finished(guid, timeout=20)
    assert task["status"] == "cancelled", task
    # Confirmed by the dispatcher (the controller's own grace is 30 s).
    assert task["status_reason"] == "cancelled by the dispatcher"
    wait_until(lambda: process_is_gone(pid), timeout=10, what="the skill process to be stopped")


def test_pushes_a_full_dispatcher_refuses_cost_no_attempt(stack, skills):
    # The controller believes each dispatcher has room for 4; each really runs 2, answers
    # the third push 429 with Retry-After, and must not be pushed to again before then.
    urls = {
        d["name"]: f"/api/v1/dispatchers/{d['guid']}/"
        for d in stack.client.get("/api/v1/dispatchers/").json()
    }
    try:
        for name in stack.dispatchers:
            patched = stack.client.patch(urls[name], json={"capacity": 4})
            assert patched.status_code == 200, patched.text
        tasks = [stack.create_task("e2e-sleep", {"seconds": 2}, max_attempts=1) for _ in range(6)]
        finished = [stack.wait_until_finished(guid, timeout=60) for guid in tasks]
    finally:
        for name in stack.dispatchers:
            stack.client.patch(urls[name], json={"capacity": 2})

    assert [task["status"] for task in finished] == ["completed"] * 6, finished
    assert [task["attempt"] for task in finished] == [1] * 6
    deferred = [
        event
        for guid in tasks
        for event in stack.client.get(f"/api/v1/tasks/{guid}/events/").json()
        if event["kind"] == "push_deferred"
    ]
    assert deferred, "no push was refused: the dispatchers never ran out of room"
    assert all("HTTP 429" in event["reason"] for event in deferred)


def test_a_secret_rotated_by_an_operator_is_recovered_by_its_dispatcher(stack, skills):
    # The operator rotates one dispatcher's secret and hands it over to nobody: the
    # dispatcher refuses the next push (a failed attempt), gets a secret of its own by
    # checking in, and runs the retry. The other one drains meanwhile, so it gets the task.
    dispatchers = {d["name"]: d for d in stack.client.get("/api/v1/dispatchers/").json()}
    rotated, other = sorted(stack.dispatchers)
    other_url = f"/api/v1/dispatchers/{dispatchers[other]['guid']}/"
    assert stack.client.patch(other_url, json={"draining": True}).status_code == 200
    try:
        answer = stack.client.post(
            f"/api/v1/dispatchers/{dispatchers[rotated]['guid']}/rotate-secret/", json={}
        )
        assert answer.status_code == 200, answer.text
        guid = stack.create_task("e2e-sleep", {"seconds": 1}, max_attempts=3)
        task = stack.wait_until_finished(guid, timeout=60)
    finally:
        stack.client.patch(other_url, json={"draining": False})

    assert task["status"] == "completed", task
    assert task["dispatcher"]["name"] == rotated
    assert task["attempt"] == 2
    events = stack.client.get(f"/api/v1/tasks/{guid}/events/").json()
    failed = [event for event in events if event["kind"] == "push_failed"]
    assert len(failed) == 1, events
    assert "401" in failed[0]["reason"] and "mismatch" in failed[0]["reason"], failed


def test_task_of_a_killed_dispatcher_is_requeued_and_finished_by_the_other(stack, skills):
    pid_file = stack.workdir / "killed.pid"
    guid = stack.create_task("e2e-sleep", {"seconds": 3, "pid_file": str(pid_file)})
    running = stack.wait_for_status(guid, {"running"})
    victim = running["dispatcher"]["name"]
    survivor = next(name for name in stack.dispatchers if name != victim)

    stack.dispatchers[victim].send_signal(signal.SIGKILL)
    stack.dispatchers[victim].wait(timeout=10)

    task = stack.wait_until_finished(guid, timeout=45)
    assert task["status"] == "completed", task
    assert task["attempt"] == 2
    assert task["dispatcher"]["name"] == survivor
    events = stack.client.get(f"/api/v1/tasks/{guid}/events/").json()
    kinds = [event["kind"] for event in events]
    assert kinds.count("dispatched") == 2, kinds
    result = stack.client.get(f"/api/v1/tasks/{guid}/result/", follow_redirects=True)
    assert result.status_code == 200
    assert result.json() == {"slept": 3}
