"""The scheduler racing operators and heartbeats, on PostgreSQL with real transactions.

Each test lets another connection commit a change at the worst moment: while a push is in
flight, between a claim's read of the dispatchers and its lock, or between a sweep's
decision and its release. The scheduler must act on what was committed, not on what it read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from kohakku_controller.dispatchers import services as dispatcher_services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.tasks import scheduler as scheduler_module
from kohakku_controller.tasks.models import Task
from kohakku_controller.tasks.scheduler import Scheduler
from kohakku_controller.tasks.services import create_task

from ..concurrency import run_all

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def in_another_connection(work: Callable[[], Any]) -> Any:
    """Run ``work`` on its own connection, committed, and wait for it."""
    (result,) = run_all([work])
    if isinstance(result, Exception):
        raise result
    return result


# --- a cancel accepted while a push is in flight ----------------------------------------------


def cancel_then_answer(staff_client: APIClient, statuses: list[int]) -> Any:
    """A dispatcher that, while it answers the first push, sees the operator cancel the
    task (over the API, committed), then answers 500; later pushes get 200."""
    authorization = staff_client._credentials["HTTP_AUTHORIZATION"]

    def respond(stub: Any, handler: Any) -> None:
        first = not statuses
        if first:
            guid = stub.pushes[-1]["body"]["task_guid"]

            def cancel() -> int:
                client = APIClient()
                client.credentials(HTTP_AUTHORIZATION=authorization)
                return client.post(f"/api/v1/tasks/{guid}/cancel/").status_code

            statuses.append(in_another_connection(cancel))
        handler.send_response(500 if first else 200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


def test_a_cancel_accepted_while_a_push_fails_ends_the_task_and_it_is_not_pushed_again(
    skill_version, make_dispatcher, stub_dispatcher, staff_client, scheduler
):
    cancels: list[int] = []
    stub = stub_dispatcher(respond=cancel_then_answer(staff_client, cancels))
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=3)

    report = scheduler.run_pass()
    assert (report.claimed, report.push_failed, cancels) == (1, 1, [202])
    task.refresh_from_db()
    assert task.status == "cancelled", task.status_reason

    scheduler.run_pass(now=timezone.now() + timedelta(minutes=5))  # past any push backoff
    assert [p["body"]["attempt"] for p in stub.pushes if p["path"] == "/tasks/"] == [1]


# --- operator changes committed between a claim's read and its lock ---------------------------


def claim_while_an_operator_commits(change: Callable[[], Any]) -> list[Any] | Exception:
    """Run a claim that reads the dispatchers while ``change`` is made in another
    transaction, which commits only after the claim has asked for its locks."""
    changed, results = threading.Event(), {}

    def operator() -> None:
        with transaction.atomic():
            change()
            changed.set()
            time.sleep(1.0)  # the claim reads the old rows, then waits for the lock

    def claim() -> list[Any]:
        changed.wait(10)
        with Scheduler(name="racer", batch_size=10) as sched:
            return sched.claim_and_assign(timezone.now())[0]

    results["operator"], results["claims"] = run_all([operator, claim])
    assert results["operator"] is None, results["operator"]
    return results["claims"]


def test_a_dispatcher_drained_during_a_claim_gets_no_task(skill_version, make_dispatcher):
    dispatcher = make_dispatcher(capacity=4)
    task = create_task(skill="code-review")
    claims = claim_while_an_operator_commits(
        lambda: dispatcher_services.set_dispatcher_controls(dispatcher, draining=True)
    )
    assert claims == []
    task.refresh_from_db()
    assert task.status == "queued", task.status_reason


def test_a_capacity_lowered_during_a_claim_is_respected(skill_version, make_dispatcher):
    dispatcher = make_dispatcher(capacity=4)
    for _ in range(4):
        create_task(skill="code-review")
    claims = claim_while_an_operator_commits(
        lambda: dispatcher_services.set_dispatcher_controls(dispatcher, capacity=1)
    )
    assert len(claims) == 1
    assert Task.objects.filter(dispatcher=dispatcher, status="dispatched").count() == 1


def test_a_dispatcher_deleted_during_a_claim_does_not_break_the_claim(
    skill_version, make_dispatcher
):
    doomed = make_dispatcher("doomed", capacity=4)
    make_dispatcher("other", capacity=4, backends=("k8s",))
    task = create_task(skill="code-review")
    other = create_task(skill="code-review", backend="k8s")
    claims = claim_while_an_operator_commits(
        lambda: dispatcher_services.delete_dispatcher(doomed, force=True)
    )
    assert not isinstance(claims, Exception), claims
    assert [claim.task.pk for claim in claims] == [other.pk]
    task.refresh_from_db()
    assert task.status == "queued"


def test_no_push_reaches_a_dispatcher_after_its_forced_delete_returned(
    skill_version, make_dispatcher, stub_dispatcher
):
    # A pass pushes five tasks one at a time to a dispatcher that answers in 50 ms, while an
    # operator deletes it with force=true, retrying while the answer is 409 (pushes in
    # flight). After the 204 no push may arrive: each task is requeued at most once, after
    # its push was recorded, and goes elsewhere only then.
    from kohakku_controller.exceptions import Conflict

    def slowly(stub: Any, handler: Any) -> None:
        time.sleep(0.05)
        handler.send_response(200)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"{}")

    late, refusals = [], 0
    for round_ in range(10):
        stub = stub_dispatcher(respond=slowly)
        doomed = make_dispatcher(f"doomed-{round_}", endpoint_url=stub.url, capacity=5)
        for number in range(5):
            create_task(skill="code-review", input={"n": number})
        deleted_at: list[float] = []

        def run_pass() -> None:
            with Scheduler(name="pusher", push_concurrency=1) as sched:
                sched.run_pass()

        def delete(
            pk: int = doomed.pk, deleted_at: list[float] = deleted_at, delay: float = 0.02 * round_
        ) -> None:
            nonlocal refusals
            time.sleep(0.02 + delay)
            while True:
                try:
                    dispatcher_services.delete_dispatcher(Dispatcher.objects.get(pk=pk), force=True)
                    deleted_at.append(time.monotonic())
                    return
                except Conflict:
                    refusals += 1
                    time.sleep(0.01)

        results = run_all([run_pass, delete])
        assert not [r for r in results if isinstance(r, Exception)], results
        late += [push for push in stub.pushes if push["received_at"] > deleted_at[0]]
        pushed = {push["body"]["task_guid"] for push in stub.pushes}
        assert len(pushed) == len(stub.pushes)  # none pushed twice to it
        assert Task.objects.filter(status="queued").count() == 5
        Task.objects.all().delete()
    assert late == []
    assert refusals > 0  # the deletions did meet pushes in flight


def heartbeat_without_waiting(dispatcher: Dispatcher) -> Callable[[], Any]:
    """A heartbeat of ``dispatcher`` that gives up at once if its row is locked."""

    def beat() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '50ms'")
            heartbeat_listing(dispatcher, [])()

    return beat


def test_a_claim_holds_up_no_heartbeat_but_those_of_the_dispatchers_it_chose(
    skill_version, make_dispatcher, monkeypatch
):
    # All of them could take the task; the first (lowest pk, all idle) is chosen.
    chosen = make_dispatcher("chosen", capacity=1)
    bystanders = [make_dispatcher(f"bystander-{n}") for n in range(3)]
    create_task(skill="code-review")
    claiming, done = threading.Event(), threading.Event()
    mark_dispatched = Scheduler._mark_dispatched

    def slowly(self: Scheduler, *args: Any) -> Any:
        claiming.set()
        done.wait(10)
        return mark_dispatched(self, *args)

    monkeypatch.setattr(Scheduler, "_mark_dispatched", slowly)

    def claim() -> list[Any]:
        with Scheduler(name="holder") as sched:
            return sched.claim_and_assign(timezone.now())[0]

    def heartbeats() -> list[Any]:
        claiming.wait(10)
        try:
            return run_all([heartbeat_without_waiting(d) for d in [chosen, *bystanders]])
        finally:
            done.set()

    claims, beats = run_all([claim, heartbeats])
    assert [claim.dispatcher.pk for claim in claims] == [chosen.pk]
    # The chosen dispatcher is locked while its capacity is counted; the rest of the fleet
    # beats on.
    assert isinstance(beats[0], OperationalError), beats[0]
    assert beats[1:] == [None, None, None]


# --- a heartbeat committed between a sweep's decision and its release --------------------------


def after_the_sweep_reads(monkeypatch: Any, change: Callable[[], Any]) -> None:
    """Commit ``change`` on another connection once a sweep has read the tasks it means to
    release, before it releases any."""
    read_tasks = scheduler_module._by_dispatcher

    def then_the_change(tasks: Any) -> Any:
        groups = read_tasks(tasks)
        in_another_connection(change)
        return groups

    monkeypatch.setattr(scheduler_module, "_by_dispatcher", then_the_change)


def heartbeat_listing(dispatcher: Dispatcher, running: list[Task]) -> Callable[[], Any]:
    return lambda: dispatcher_services.record_heartbeat(
        guid=dispatcher.guid, application=None, running_task_guids=[t.guid for t in running]
    )


def running_tasks(scheduler: Scheduler, count: int, started: timedelta) -> list[Task]:
    tasks = [create_task(skill="code-review") for _ in range(count)]
    scheduler.claim_and_assign(timezone.now())
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(
        status="running", started_at=timezone.now() - started
    )
    return tasks


def test_tasks_of_a_dispatcher_back_during_the_lost_sweep_keep_running(
    skill_version, make_dispatcher, scheduler, monkeypatch
):
    dispatcher = make_dispatcher(capacity=4)
    tasks = running_tasks(scheduler, 3, started=timedelta(hours=1))
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    after_the_sweep_reads(monkeypatch, heartbeat_listing(dispatcher, tasks))

    assert scheduler.release_tasks_of_lost_dispatchers(timezone.now()) == 0
    statuses = Task.objects.filter(pk__in=[t.pk for t in tasks]).values_list("status", flat=True)
    assert list(statuses) == ["running"] * 3


def unreported_running_task(
    scheduler: Scheduler, make_dispatcher: Any, settings: Any, *, grace: int
) -> tuple[Dispatcher, Task]:
    """A running task its dispatcher's latest heartbeat (just now) left out a minute ago."""
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "REPORTED_TASKS_GRACE_SECONDS": grace,
    }
    dispatcher = make_dispatcher(capacity=4)
    (task,) = running_tasks(scheduler, 1, started=timedelta(minutes=5))
    Task.objects.filter(pk=task.pk).update(unreported_since=timezone.now() - timedelta(minutes=1))
    now = timezone.now()
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        last_heartbeat_at=now, tasks_reported_at=now, reported_task_guids=[]
    )
    return dispatcher, task


def test_a_task_listed_again_during_the_unreported_sweep_keeps_running(
    skill_version, make_dispatcher, scheduler, settings, monkeypatch
):
    dispatcher, task = unreported_running_task(scheduler, make_dispatcher, settings, grace=1)
    after_the_sweep_reads(monkeypatch, heartbeat_listing(dispatcher, [task]))

    assert scheduler.release_tasks_not_reported(timezone.now()) == 0
    task.refresh_from_db()
    assert task.status == "running", task.status_reason


def test_a_task_whose_stamp_another_pass_moved_meanwhile_is_not_released_on_the_old_one(
    skill_version, make_dispatcher, scheduler, settings, monkeypatch
):
    _, task = unreported_running_task(scheduler, make_dispatcher, settings, grace=30)
    # Another scheduler saw the task listed again, then dropped again just now.
    after_the_sweep_reads(
        monkeypatch,
        lambda: Task.objects.filter(pk=task.pk).update(unreported_since=timezone.now()),
    )

    assert scheduler.release_tasks_not_reported(timezone.now()) == 0
    task.refresh_from_db()
    assert task.status == "running"
