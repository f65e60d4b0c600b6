"""Exactly-once on PostgreSQL: several schedulers, stub dispatchers, hundreds of tasks."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.scheduler import Scheduler
from kohakku_controller.tasks.services import create_task

from .conftest import signed_headers, wakes

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


class Completer(threading.Thread):
    """Plays the dispatchers' side: answers each accepted push with a signed callback."""

    def __init__(
        self, inbox: queue.Queue, secrets: dict[str, str], *, skip: set[str] | None = None
    ):
        super().__init__(daemon=True)
        self.inbox, self.secrets, self.skip = inbox, secrets, skip or set()
        self.stop = threading.Event()
        self.codes: Counter[int] = Counter()

    def run(self) -> None:
        client = APIClient()
        try:
            while not self.stop.is_set():
                try:
                    stub, push = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                if stub.url in self.skip:
                    continue
                body = json.dumps({"status": "completed", "exit_code": 0}).encode()
                task = push["body"]
                headers = signed_headers(task["callback_token"], self.secrets[stub.url], body)
                response = client.generic(
                    "POST",
                    f"/api/v1/tasks/{task['task_guid']}/callback/",
                    body,
                    content_type="application/json",
                    **headers,
                )
                self.codes[response.status_code] += 1
        finally:
            connection.close()


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the condition")


def scheduler_process(name: str) -> subprocess.Popen:
    settings = connection.settings_dict
    url = f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'example_project'}",
        "DJANGO_LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)  # wake-ups go through PostgreSQL LISTEN/NOTIFY here
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django",
            "kohakku_scheduler",
            "--settings=tests.settings",
            "--poll-seconds=0.5",
            f"--name={name}",
            "--batch-size=50",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_three_scheduler_processes_push_each_attempt_once(
    skill_version, make_dispatcher, stub_dispatcher
):
    inbox: queue.Queue = queue.Queue()
    stubs = [stub_dispatcher(inbox=inbox) for _ in range(3)]
    secrets = {}
    for index, stub in enumerate(stubs):
        dispatcher = make_dispatcher(f"d{index}", endpoint_url=stub.url, capacity=40)
        secrets[stub.url] = dispatcher.secret
    completer = Completer(inbox, secrets)
    completer.start()
    processes = [scheduler_process(f"sched-{n}") for n in range(3)]
    try:
        total = 300
        for n in range(total):
            create_task(skill="code-review", input={"n": n}, priority=n % 3)
        wait_for(lambda: Task.objects.filter(status="completed").count() == total, timeout=120)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        errors = [p.communicate(timeout=30)[1].decode() for p in processes]
        completer.stop.set()
        completer.join()
    assert all(p.returncode == 0 for p in processes), errors
    keys = Counter(p["headers"]["Idempotency-Key"] for stub in stubs for p in stub.pushes)
    assert len(keys) == total
    assert max(keys.values()) == 1  # no (task, attempt) pushed twice
    assert Task.objects.exclude(status="completed").count() == 0
    assert set(Task.objects.values_list("attempt", flat=True)) == {1}
    finished = Counter(TaskEvent.objects.filter(kind="completed").values_list("task_id", flat=True))
    assert len(finished) == total and set(finished.values()) == {1}
    dispatched = Counter(
        TaskEvent.objects.filter(kind="dispatched").values_list("task_id", flat=True)
    )
    assert set(dispatched.values()) == {1}
    assert completer.codes == Counter({200: total})
    # Every scheduler took part (work was spread, not serialised through one).
    claimers = set(
        TaskEvent.objects.filter(kind="dispatched").values_list("data__scheduler", flat=True)
    )
    assert len(claimers) >= 2


def test_dispatcher_stopped_mid_task_is_requeued_and_finished_elsewhere(
    skill_version, make_dispatcher, stub_dispatcher, settings
):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "LOST_DISPATCHER_GRACE_SECONDS": 1,
        "RECONCILE_REPORTED_TASKS": False,
    }
    inbox: queue.Queue = queue.Queue()
    doomed_stub = stub_dispatcher(inbox=inbox)
    doomed = make_dispatcher("doomed", endpoint_url=doomed_stub.url, capacity=100)
    tasks = [create_task(skill="code-review", input={"n": n}) for n in range(30)]
    with Scheduler(name="a") as first, Scheduler(name="b") as second:
        first.run_pass()
        assert Task.objects.filter(status="dispatched", dispatcher=doomed).count() == 30
        doomed_stub.stop()  # it dies mid-task: no callbacks, no heartbeats
        survivor_stub = stub_dispatcher(inbox=inbox)
        survivor = make_dispatcher("survivor", endpoint_url=survivor_stub.url, capacity=100)
        completer = Completer(inbox, {survivor_stub.url: survivor.secret}, skip={doomed_stub.url})
        completer.start()
        try:
            Dispatcher.objects.filter(pk=doomed.pk).update(
                last_heartbeat_at=timezone.now() - timedelta(seconds=200)
            )
            runners = [threading.Thread(target=_passes, args=(s, 3)) for s in (first, second)]
            for runner in runners:
                runner.start()
            for runner in runners:
                runner.join()
            wait_for(lambda: Task.objects.filter(status="completed").count() == 30)
        finally:
            completer.stop.set()
            completer.join()
    for task in tasks:
        task.refresh_from_db()
        assert task.status == "completed"
        assert task.attempt == 2
        assert task.dispatcher_id == survivor.pk
        kinds = list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))
        assert kinds == ["created", "dispatched", "requeued", "dispatched", "completed"]
    keys = Counter(p["headers"]["Idempotency-Key"] for p in survivor_stub.pushes)
    assert len(keys) == 30 and max(keys.values()) == 1


def _passes(scheduler: Scheduler, count: int) -> None:
    try:
        for _ in range(count):
            scheduler.run_pass()
    finally:
        connection.close()


def test_concurrent_in_process_schedulers_never_exceed_capacity(
    skill_version, make_dispatcher, stub_dispatcher
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url, capacity=7)
    for n in range(40):
        create_task(skill="code-review", input={"n": n})
    schedulers = [Scheduler(name=f"s{n}", batch_size=5) for n in range(4)]
    try:
        runners = [threading.Thread(target=_passes, args=(s, 3)) for s in schedulers]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
    finally:
        for scheduler in schedulers:
            scheduler.close()
    assert Task.objects.filter(dispatcher=dispatcher, status="dispatched").count() == 7
    assert len(stub.pushes) == 7


def _together(*jobs) -> None:
    """Run the callables in threads that start at once; each closes its connection."""
    barrier = threading.Barrier(len(jobs))

    def run(job) -> None:
        try:
            barrier.wait()
            job()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_schedulers_racing_over_unreported_tasks_requeue_each_once_after_the_grace(
    skill_version, make_dispatcher, stub_dispatcher, settings
):
    from kohakku_controller.dispatchers.services import record_heartbeat

    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "REPORTED_TASKS_GRACE_SECONDS": 1,
    }
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url, capacity=100)
    tasks = [create_task(skill="code-review", input={"n": n}) for n in range(30)]
    listed, dropped = tasks[:15], tasks[15:]
    with Scheduler(name="a") as first, Scheduler(name="b") as second:
        first.run_pass()
        # Started long ago: the grace counts from the first heartbeat without them.
        Task.objects.update(status="running", started_at=timezone.now() - timedelta(seconds=60))
        released: list[int] = []

        def heartbeat_then_race() -> None:
            record_heartbeat(
                guid=dispatcher.guid,
                application=None,
                running_task_guids=[task.guid for task in listed],
            )
            now = timezone.now()
            _together(
                *[
                    lambda s=s: released.append(s.release_tasks_not_reported(now))
                    for s in (first, second)
                ]
            )

        heartbeat_then_race()  # the first heartbeat without them: the grace starts
        assert sum(released) == 0
        assert Task.objects.filter(status="running").count() == 30
        time.sleep(1.1)
        heartbeat_then_race()
    assert sum(released) == 15
    for task in dropped:
        reasons = list(
            TaskEvent.objects.filter(task=task, kind="requeued").values_list("reason", flat=True)
        )
        assert len(reasons) == 1 and "no longer reports this task" in reasons[0]
        assert Task.objects.get(pk=task.pk).status == "queued"
    for task in listed:
        task.refresh_from_db()
        assert (task.status, task.unreported_since) == ("running", None)


def test_late_callbacks_racing_scheduler_passes_time_out_once_and_get_a_cancel(
    skill_version, make_dispatcher, stub_dispatcher
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url, capacity=100)
    tasks = [create_task(skill="code-review", timeout_seconds=5) for _ in range(20)]
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    with Scheduler(name="a") as first, Scheduler(name="b") as second:
        first.run_pass()
        tokens = {p["body"]["task_guid"]: p["body"]["callback_token"] for p in stub.pushes}
        Task.objects.update(deadline_at=timezone.now() - timedelta(seconds=1))

        def late_callback(task) -> None:
            body = json.dumps({"status": "completed", "exit_code": 0}).encode()
            headers = signed_headers(tokens[str(task.guid)], dispatcher.secret, body)
            response = APIClient().generic(
                "POST",
                f"/api/v1/tasks/{task.guid}/callback/",
                body,
                content_type="application/json",
                **headers,
            )
            with lock:
                codes[response.status_code] += 1

        _together(*[lambda t=t: late_callback(t) for t in tasks], first.run_pass, second.run_pass)
        first.run_pass()  # sends what the racing passes found before the callbacks ended
    assert codes == Counter({409: 20})
    cancelled = Counter(c["body"]["task_guid"] for c in stub.cancels)
    for task in tasks:
        assert Task.objects.get(pk=task.pk).status == "timed_out"
        kinds = Counter(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))
        assert (kinds["timed_out"], kinds["cancel_sent"]) == (1, 1)
        assert cancelled[str(task.guid)] >= 1
    assert {c["body"]["reason"] for c in stub.cancels} == {"timed out"}


def test_create_wakes_a_listening_scheduler(skill_version):
    from kohakku_controller.tasks.scheduler import PostgresWaiter

    assert wakes(PostgresWaiter(), lambda: create_task(skill="code-review"))


def test_a_task_ending_wakes_a_listening_scheduler(skill_version, dispatch):
    from kohakku_controller.tasks.scheduler import PostgresWaiter
    from kohakku_controller.tasks.services import end_task

    task, _token = dispatch(create_task(skill="code-review"))
    ended = []

    def end() -> None:
        # The update, its event and the NOTIFY are one statement on PostgreSQL.
        ended.append(end_task(task, "cancelled", reason="test", now=timezone.now()))

    assert wakes(PostgresWaiter(), end)
    assert ended == [True]
    assert Task.objects.get(pk=task.pk).status == "cancelled"
    assert list(
        TaskEvent.objects.filter(task=task, kind="cancelled").values_list("reason", flat=True)
    ) == ["test"]
    assert not end_task(task, "failed", reason="again", now=timezone.now())
    assert TaskEvent.objects.filter(task=task, kind="failed").count() == 0


def test_scheduler_survives_its_database_connections_being_killed(
    skill_version, make_dispatcher, stub_dispatcher
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url, capacity=50)
    stop = threading.Event()

    def loop() -> None:
        try:
            with Scheduler(name="survivor") as scheduler:
                scheduler.run_forever(stop, poll_seconds=0.1)
        finally:
            connection.close()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        create_task(skill="code-review", input={"before": True})
        wait_for(lambda: len(stub.pushes) == 1)
        with connection.cursor() as cursor:  # what a database restart does to clients
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        create_task(skill="code-review", input={"after": True})
        wait_for(lambda: len(stub.pushes) == 2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert [p["body"]["input"] for p in stub.pushes] == [{"before": True}, {"after": True}]
