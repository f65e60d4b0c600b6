"""The scheduler: matching, pushes, backoff, leases, lost dispatchers, timeouts, cancels."""

from __future__ import annotations

import math
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from kohakku_controller import signals
from kohakku_controller.conf import kohakku_settings
from kohakku_controller.dispatchers import services as dispatcher_services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.signing import verify_signature
from kohakku_controller.storage import storage_is_remote
from kohakku_controller.tasks.deadlines import push_deadline_seconds
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.scheduler import PassReport, Scheduler
from kohakku_controller.tasks.services import cancel_task, create_task

from .conftest import callback

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_backoff(settings):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUSH_BACKOFF_BASE_SECONDS": 0.001,
        "PUSH_BACKOFF_MAX_SECONDS": 0.002,
        "PUSH_CONNECT_TIMEOUT": 1.0,
        "PUSH_READ_TIMEOUT": 2.0,
        "PUBLIC_BASE_URL": "https://controller.example",
    }


def kinds(task):
    return list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))


def test_push_body_headers_and_signature(
    skill_version, make_dispatcher, stub_dispatcher, scheduler
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url + "/")
    task = create_task(skill="code-review", input={"pr": 1}, labels={}, timeout_seconds=120)
    report = scheduler.run_pass()
    assert (report.claimed, report.pushed, report.push_failed) == (1, 1, 0)
    [push] = stub.pushes
    assert push["path"] == "/tasks/"
    assert push["headers"]["Idempotency-Key"] == f"{task.guid}:1"
    assert push["headers"]["Content-Type"] == "application/json"
    verify_signature(
        [dispatcher.secret],
        push["raw"],
        push["headers"]["X-Kohakku-Timestamp"],
        push["headers"]["X-Kohakku-Signature"],
    )
    body = push["body"]
    assert body["task_guid"] == str(task.guid)
    assert body["attempt"] == 1
    assert body["skill"]["slug"] == "code-review"
    assert body["skill"]["version"] == 1
    assert body["skill"]["content_hash"] == "a" * 64
    if storage_is_remote():
        assert "X-Amz-Signature=" in body["skill"]["download_url"]
    else:
        assert body["skill"]["download_url"].startswith("https://controller.example/")
    assert body["input"] == {"pr": 1}
    assert body["backend"] == "local"
    assert body["labels"] == {}
    assert body["timeout_seconds"] == 120
    assert body["callback_url"] == (
        f"https://controller.example/api/v1/tasks/{task.guid}/callback/"
    )
    assert body["result"]["key_prefix"] == f"results/{task.guid}/"
    assert body["result"]["method"] == "PUT"
    assert body["result"]["upload_url"]
    task = Task.objects.select_related("dispatcher").get(pk=task.pk)
    assert task.status == "dispatched"
    assert task.pushed_at is not None
    assert task.lease_expires_at is None
    assert task.callback_token_matches(body["callback_token"])
    assert len(stub.pushes) == 1
    assert scheduler.run_pass().claimed == 0
    assert len(stub.pushes) == 1


def test_matching_backend_labels_capacity_least_loaded(skill_version, make_dispatcher, scheduler):
    gpu = make_dispatcher("gpu", backends=("k8s",), labels={"gpu": "a100", "zone": "a"}, capacity=2)
    small = make_dispatcher("small", backends=("k8s", "local"), capacity=1)
    make_dispatcher("draining", backends=("k8s",), labels={"gpu": "a100"}, draining=True)
    make_dispatcher("disabled", backends=("k8s",), labels={"gpu": "a100"}, enabled=False)
    make_dispatcher("offline", backends=("k8s",), labels={"gpu": "a100"}, online=False)
    wants_gpu = [
        create_task(skill="code-review", backend="k8s", labels={"gpu": "a100"}) for _ in range(3)
    ]
    plain = create_task(skill="code-review", backend="k8s")
    claims, unmatched = scheduler.claim_and_assign(timezone.now())
    assigned = {c.task.pk: c.dispatcher.name for c in claims}
    assert assigned[wants_gpu[0].pk] == "gpu"
    assert assigned[wants_gpu[1].pk] == "gpu"
    assert wants_gpu[2].pk not in assigned
    assert assigned[plain.pk] == "small"
    assert unmatched == 1
    waiting = Task.objects.get(pk=wants_gpu[2].pk)
    assert waiting.status == "queued"
    assert waiting.status_reason == (
        "waiting: all 1 online dispatcher(s) with backend 'k8s' and labels {gpu: a100} "
        "are at capacity"
    )
    assert gpu.pk and small.pk


def test_least_loaded_wins(skill_version, make_dispatcher, scheduler):
    a = make_dispatcher("a", capacity=10)
    b = make_dispatcher("b", capacity=10)
    tasks = [create_task(skill="code-review") for _ in range(4)]
    claims, _ = scheduler.claim_and_assign(timezone.now())
    counts = {a.name: 0, b.name: 0}
    for claim in claims:
        counts[claim.dispatcher.name] += 1
    assert counts == {"a": 2, "b": 2}
    assert len(tasks) == 4


def test_choices_for_one_kind_of_task_count_for_the_others(
    skill_version, make_dispatcher, scheduler
):
    # "gpu" matches both kinds of task, "plain" only the unlabelled kind: a choice made for
    # one kind must weigh on the next choice for the other.
    make_dispatcher("gpu", labels={"gpu": "a100"}, capacity=2)
    make_dispatcher("plain", capacity=2)
    kinds = [{"gpu": "a100"}, {}, {}, {"gpu": "a100"}, {}]
    tasks = [create_task(skill="code-review", labels=labels) for labels in kinds]
    claims, unmatched = scheduler.claim_and_assign(timezone.now())
    chosen = {claim.task.pk: claim.dispatcher.name for claim in claims}
    assert [chosen.get(task.pk) for task in tasks] == ["gpu", "plain", "gpu", None, "plain"]
    assert unmatched == 1


@pytest.mark.parametrize(
    ("dispatchers", "task_kwargs", "reason"),
    [
        ([], {}, "waiting: no online dispatcher (needs backend 'local')"),
        (
            [{"backends": ("local",)}],
            {"backend": "k8s"},
            "waiting: no online dispatcher with backend 'k8s'",
        ),
        (
            [{"backends": ("k8s",), "labels": {"gpu": "t4"}}],
            {"backend": "k8s", "labels": {"gpu": "a100"}},
            "waiting: no online dispatcher with backend 'k8s' and labels {gpu: a100}",
        ),
    ],
)
def test_status_reason_when_nothing_matches(
    skill_version, make_dispatcher, scheduler, dispatchers, task_kwargs, reason
):
    for index, kwargs in enumerate(dispatchers):
        make_dispatcher(f"d{index}", **kwargs)
    task = create_task(skill="code-review", **task_kwargs)
    report = scheduler.run_pass()
    assert report.unmatched == 1
    task.refresh_from_db()
    assert task.status == "queued"
    assert task.status_reason == reason
    assert task.not_before > timezone.now()  # looked at again later, not every pass


def test_priority_then_age(skill_version, make_dispatcher, scheduler):
    make_dispatcher(capacity=1)
    old_low = create_task(skill="code-review", priority=0)
    high = create_task(skill="code-review", priority=5)
    create_task(skill="code-review", priority=0)
    claims, _ = scheduler.claim_and_assign(timezone.now())
    assert [c.task.pk for c in claims] == [high.pk]
    Task.objects.filter(pk=high.pk).update(status="completed")
    claims, _ = scheduler.claim_and_assign(timezone.now())
    assert [c.task.pk for c in claims] == [old_low.pk]


def test_push_fails_twice_then_succeeds(skill_version, make_dispatcher, stub_dispatcher, scheduler):
    stub = stub_dispatcher(fail_times=2)
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=3)
    for _ in range(3):
        Task.objects.filter(pk=task.pk, status="queued").update(not_before=timezone.now())
        scheduler.run_pass()
    task.refresh_from_db()
    assert task.status == "dispatched"
    assert task.attempt == 3
    assert task.pushed_at is not None
    assert [p["headers"]["Idempotency-Key"] for p in stub.pushes] == [
        f"{task.guid}:1",
        f"{task.guid}:2",
        f"{task.guid}:3",
    ]
    failures = TaskEvent.objects.filter(task=task, kind="push_failed").order_by("id")
    assert [e.attempt for e in failures] == [1, 2]
    assert all(e.data["backoff_seconds"] > 0 and e.data["not_before"] for e in failures)
    assert all("HTTP 503" in e.reason for e in failures)
    assert kinds(task) == [
        "created",
        "dispatched",
        "push_failed",
        "dispatched",
        "push_failed",
        "dispatched",
    ]


def test_backoff_grows_and_is_honoured(skill_version, make_dispatcher, stub_dispatcher, settings):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUSH_BACKOFF_BASE_SECONDS": 10,
        "PUSH_BACKOFF_MAX_SECONDS": 100,
    }
    stub = stub_dispatcher(fail_times=5)
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=5)
    with Scheduler(name="s") as sched:
        sched.run_pass()
        assert sched.run_pass().claimed == 0  # still backing off
        event = TaskEvent.objects.get(task=task, kind="push_failed")
        assert 5 <= event.data["backoff_seconds"] <= 10
        sched.run_pass(now=timezone.now() + timedelta(seconds=11))
    second = TaskEvent.objects.filter(task=task, kind="push_failed").order_by("-id").first()
    assert 10 <= second.data["backoff_seconds"] <= 20


def test_push_failure_after_max_attempts_fails_the_task(
    skill_version, make_dispatcher, stub_dispatcher, scheduler
):
    make_dispatcher(endpoint_url=stub_dispatcher(status=500).url)
    task = create_task(skill="code-review", max_attempts=2)
    for _ in range(2):
        Task.objects.filter(pk=task.pk, status="queued").update(not_before=timezone.now())
        scheduler.run_pass()
    task.refresh_from_db()
    assert task.status == "failed"
    assert task.attempt == 2
    assert "gave up after 2 of 2 attempts" in task.status_reason
    assert "answered HTTP 500" in task.error_message
    assert task.finished_at is not None


@pytest.mark.parametrize("endpoint_url", ["http://[v1.x]:8080", "http://a..b:8080"])
def test_a_host_no_client_can_call_is_a_failed_push_not_a_crash(
    skill_version, make_dispatcher, scheduler, endpoint_url
):
    """Such URLs are refused at check-in now; rows written before must not stop the pass."""
    make_dispatcher(endpoint_url=endpoint_url)
    task = create_task(skill="code-review", max_attempts=3)
    report = scheduler.run_pass()
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("queued", 1)
    assert task.not_before is not None
    reasons = TaskEvent.objects.filter(task=task).values_list("reason", flat=True)
    assert any("could not reach" in reason for reason in reasons), list(reasons)
    assert (report.claimed, report.push_failed) == (1, 1)


def test_a_pass_that_raises_does_not_stop_the_scheduler(scheduler, monkeypatch):
    passes = []

    def failing_pass():
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("a bug")
        stop.set()
        return PassReport()

    stop = threading.Event()
    monkeypatch.setattr(scheduler, "run_pass", failing_pass)
    monkeypatch.setattr(scheduler, "reconcile_on_startup", lambda: 0)
    scheduler.run_forever(stop, poll_seconds=0.01)
    assert len(passes) == 2


def test_push_rejected_with_4xx_is_retried(
    skill_version, make_dispatcher, stub_dispatcher, scheduler
):
    stub = stub_dispatcher(status=400)
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=3)
    scheduler.run_pass()
    task.refresh_from_db()
    assert task.status == "queued"
    assert "HTTP 400" in task.status_reason


def test_expired_lease_is_taken_back(skill_version, make_dispatcher, scheduler):
    make_dispatcher()
    task = create_task(skill="code-review")
    claims, _ = scheduler.claim_and_assign(timezone.now())  # claimed, never pushed: "crash"
    assert claims
    with Scheduler(name="restarted") as fresh:
        assert fresh.reconcile_on_startup() == 0  # lease still valid
        Task.objects.filter(pk=task.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert fresh.reconcile_on_startup() == 1
    task.refresh_from_db()
    assert task.status == "queued"
    assert task.dispatcher is None
    assert "never confirmed" in task.status_reason
    assert kinds(task)[-1] == "lease_expired"


def test_lost_dispatcher_tasks_requeued_after_grace(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, settings
):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "LOST_DISPATCHER_GRACE_SECONDS": 60,
    }
    stub_a, stub_b = stub_dispatcher(), stub_dispatcher()
    a = make_dispatcher("a", endpoint_url=stub_a.url)
    task = create_task(skill="code-review")
    scheduler.run_pass()
    assert Task.objects.get(pk=task.pk).dispatcher_id == a.pk
    b = make_dispatcher("b", endpoint_url=stub_b.url)
    # a stops heartbeating: offline after 3 x 60 s, tasks taken back 60 s after that.
    Dispatcher.objects.filter(pk=a.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=200)
    )
    report = scheduler.run_pass()
    assert report.lost_dispatchers == 1
    assert Task.objects.get(pk=task.pk).dispatcher_id == a.pk  # inside the grace period
    Dispatcher.objects.filter(pk=a.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=250)
    )
    scheduler.run_pass()
    task.refresh_from_db()
    assert task.dispatcher_id == b.pk
    assert task.attempt == 2
    assert len(stub_b.pushes) == 1 and stub_b.pushes[0]["body"]["attempt"] == 2
    assert "stopped sending heartbeats" in TaskEvent.objects.get(task=task, kind="requeued").reason


def test_timeout_marks_timed_out_and_asks_dispatcher_to_cancel(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, api_client
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", timeout_seconds=5)
    scheduler.run_pass()
    token = stub.pushes[0]["body"]["callback_token"]
    report = scheduler.run_pass(now=timezone.now() + timedelta(seconds=6))
    assert report.timed_out == 1
    task = Task.objects.select_related("dispatcher").get(pk=task.pk)
    assert task.status == "timed_out"
    assert "timeout of 5 s" in task.status_reason
    assert [c["path"] for c in stub.cancels] == [f"/tasks/{task.guid}/cancel/"]
    verify_signature(
        [dispatcher.secret],
        stub.cancels[0]["raw"],
        stub.cancels[0]["headers"]["X-Kohakku-Timestamp"],
        stub.cancels[0]["headers"]["X-Kohakku-Signature"],
    )
    task.signing_secret = dispatcher.secret
    late = callback(api_client, task, token, {"status": "completed", "exit_code": 0})
    assert late.status_code == 409


@pytest.mark.parametrize("noticed_by", ["scheduler", "late callback"])
def test_timed_out_task_gets_one_cancel_request_however_the_timeout_was_noticed(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, api_client, noticed_by
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", timeout_seconds=5)
    scheduler.run_pass()
    token = stub.pushes[0]["body"]["callback_token"]
    task = Task.objects.select_related("dispatcher").get(pk=task.pk)
    after_deadline = timezone.now() + timedelta(seconds=6)
    if noticed_by == "late callback":
        Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
        task.signing_secret = dispatcher.secret
        late = callback(api_client, task, token, {"status": "completed", "exit_code": 0})
        assert late.status_code == 409
        assert Task.objects.get(pk=task.pk).status == "timed_out"
    report = scheduler.run_pass(now=after_deadline)
    assert report.timed_out == (1 if noticed_by == "scheduler" else 0)
    assert report.cancels_sent == 1
    assert [(c["path"], c["body"]) for c in stub.cancels] == [
        (
            f"/tasks/{task.guid}/cancel/",
            {"task_guid": str(task.guid), "attempt": 1, "reason": "timed out"},
        )
    ]
    verify_signature(
        [dispatcher.secret],
        stub.cancels[0]["raw"],
        stub.cancels[0]["headers"]["X-Kohakku-Timestamp"],
        stub.cancels[0]["headers"]["X-Kohakku-Signature"],
    )
    assert scheduler.run_pass(now=after_deadline).cancels_sent == 0
    assert len(stub.cancels) == 1  # sent once
    assert kinds(task)[-2:] == ["timed_out", "cancel_sent"]
    assert Task.objects.get(pk=task.pk).status == "timed_out"


#: The push backoff as shipped (the autouse ``_fast_backoff`` above makes it instant).
SHIPPED_BACKOFF = {"PUSH_BACKOFF_BASE_SECONDS": 2, "PUSH_BACKOFF_MAX_SECONDS": 300}


def pushed_then_unreachable(scheduler, make_dispatcher, stub):
    """A task pushed to ``stub`` with a 5 s timeout, whose dispatcher's endpoint then refuses
    connections; returns the dispatcher, the task and the time the task has timed out by."""
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", timeout_seconds=5)
    scheduler.run_pass()
    Dispatcher.objects.filter(pk=dispatcher.pk).update(endpoint_url="http://127.0.0.1:9")
    return dispatcher, task, timezone.now() + timedelta(seconds=6)


def test_failed_cancel_of_a_timed_out_task_is_retried_until_the_grace_ends(
    skill_version, make_dispatcher, stub_dispatcher, scheduler
):
    stub = stub_dispatcher()
    dispatcher, task, timed_out_at = pushed_then_unreachable(scheduler, make_dispatcher, stub)
    report = scheduler.run_pass(now=timed_out_at)
    assert (report.timed_out, report.cancels_sent) == (1, 0)  # refused connection
    Dispatcher.objects.filter(pk=dispatcher.pk).update(endpoint_url=stub.url)
    assert scheduler.run_pass(now=timed_out_at + timedelta(seconds=61)).cancels_sent == 0
    assert stub.cancels == []  # the grace is over
    assert scheduler.run_pass(now=timed_out_at + timedelta(seconds=30)).cancels_sent == 1
    assert [c["body"]["reason"] for c in stub.cancels] == ["timed out"]
    assert kinds(task)[-2:] == ["timed_out", "cancel_sent"]


def test_a_dispatcher_whose_cancel_failed_is_asked_again_only_after_a_backoff(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, settings
):
    # A dispatcher that does not answer must not hold up every pass (and every other
    # dispatcher's pushes) for the push timeouts, pass after pass.
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, **SHIPPED_BACKOFF}
    stub = stub_dispatcher()
    dispatcher, _, timed_out_at = pushed_then_unreachable(scheduler, make_dispatcher, stub)
    assert scheduler.run_pass(now=timed_out_at).cancels_sent == 0  # refused connection
    Dispatcher.objects.filter(pk=dispatcher.pk).update(endpoint_url=stub.url)

    assert scheduler.run_pass(now=timed_out_at + timedelta(seconds=0.5)).cancels_sent == 0
    assert stub.cancels == []  # within the backoff (1 to 2 s after one failure)
    assert scheduler.run_pass(now=timed_out_at + timedelta(seconds=2.5)).cancels_sent == 1
    assert len(stub.cancels) == 1


def test_a_dispatcher_in_cancel_backoff_does_not_hold_back_another_dispatchers_cancels(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, settings
):
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, **SHIPPED_BACKOFF}
    dead = make_dispatcher("dead")
    stub = stub_dispatcher()
    alive = make_dispatcher("alive", endpoint_url=stub.url)
    tasks = [create_task(skill="code-review") for _ in range(3)]
    scheduler.claim_and_assign(timezone.now())
    # The two oldest cancel requests are the unreachable dispatcher's.
    pushed = timezone.now()
    Task.objects.filter(pk__in=[t.pk for t in tasks[:2]]).update(dispatcher=dead, pushed_at=pushed)
    Task.objects.filter(pk=tasks[2].pk).update(dispatcher=alive, pushed_at=pushed)
    Dispatcher.objects.filter(pk=dead.pk).update(endpoint_url="http://127.0.0.1:9")
    for task in tasks:
        cancel_task(Task.objects.get(pk=task.pk))
    scheduler.batch_size = 2
    now = timezone.now()

    sent = [scheduler.send_cancel_requests(now + timedelta(seconds=0.1 * n)) for n in range(3)]

    assert sum(sent) == 1
    assert [c["body"]["task_guid"] for c in stub.cancels] == [str(tasks[2].guid)]


def test_cancels_to_a_failing_dispatcher_are_retried_within_the_cancel_grace(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, settings, monkeypatch
):
    from kohakku_controller.tasks import services as task_services

    grace = {"CANCEL_GRACE_SECONDS": 16}  # retried at least every 4 s
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, **grace, **SHIPPED_BACKOFF}
    monkeypatch.setattr(task_services.random, "uniform", lambda low, high: high)  # 2, 4, 8 s
    stub = stub_dispatcher()
    dispatcher, _, timed_out_at = pushed_then_unreachable(scheduler, make_dispatcher, stub)
    for second in (0, 2.1, 6.2):  # three failures in a row, each once its backoff ended
        assert scheduler.run_pass(now=timed_out_at + timedelta(seconds=second)).cancels_sent == 0
    Dispatcher.objects.filter(pk=dispatcher.pk).update(endpoint_url=stub.url)

    # Not 8 s after the third failure (past the grace's end for a longer outage): 4.
    assert scheduler.run_pass(now=timed_out_at + timedelta(seconds=10.3)).cancels_sent == 1


def test_cancel_of_running_task(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, api_client
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")
    scheduler.run_pass()
    token = stub.pushes[0]["body"]["callback_token"]
    task = Task.objects.select_related("dispatcher").get(pk=task.pk)
    cancel_task(task)
    scheduler.run_pass()
    assert [c["body"]["reason"] for c in stub.cancels] == ["cancellation requested"]
    scheduler.run_pass()
    assert len(stub.cancels) == 1  # sent once
    task.signing_secret = dispatcher.secret
    confirmed = callback(api_client, task, token, {"status": "cancelled"})
    assert confirmed.status_code == 200
    task.refresh_from_db()
    assert task.status == "cancelled"
    assert kinds(task)[-3:] == ["cancel_requested", "cancel_sent", "cancelled"]


@pytest.mark.parametrize(
    "meanwhile, recorded",
    [
        ("cancelled", False),  # its dispatcher was lost and the task ended cancelled
        ("running", True),  # it started: the dispatcher still got the cancel
    ],
)
def test_a_cancel_accepted_while_the_task_changed_is_recorded_only_if_it_is_still_active(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, monkeypatch, meanwhile, recorded
):
    from concurrent.futures import Future

    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")
    scheduler.run_pass()
    cancel_task(Task.objects.get(pk=task.pk))
    post = scheduler._post_signed

    def post_then_change(dispatcher, path, body, headers):
        answer = post(dispatcher, path, body, headers)
        Task.objects.filter(pk=task.pk).update(status=meanwhile)
        return answer

    def on_this_connection(work, *args):
        future = Future()
        future.set_result(work(*args))
        return future

    monkeypatch.setattr(scheduler, "_post_signed", post_then_change)
    monkeypatch.setattr(scheduler.pool, "submit", on_this_connection)

    assert scheduler.send_cancel_requests() == 1  # the dispatcher accepted it
    assert ("cancel_sent" in kinds(task)) is recorded


def test_unconfirmed_cancel_ends_after_grace(skill_version, make_dispatcher, scheduler):
    make_dispatcher()
    task = create_task(skill="code-review")
    scheduler.claim_and_assign(timezone.now())
    Task.objects.filter(pk=task.pk).update(pushed_at=timezone.now())
    cancel_task(Task.objects.get(pk=task.pk))
    scheduler.run_pass(now=timezone.now() + timedelta(seconds=61))
    task.refresh_from_db()
    assert task.status == "cancelled"
    assert "did not confirm" in task.status_reason


def test_tasks_a_dispatcher_no_longer_reports_are_requeued(
    skill_version, make_dispatcher, scheduler
):
    dispatcher = make_dispatcher()
    kept = create_task(skill="code-review")
    dropped = create_task(skill="code-review")
    scheduler.claim_and_assign(timezone.now())
    started = timezone.now() - timedelta(seconds=120)
    Task.objects.filter(pk__in=[kept.pk, dropped.pk]).update(status="running", started_at=started)
    beat(dispatcher, timezone.now(), [kept])
    # The first heartbeat seen without it starts the grace; it does not end it.
    assert scheduler.release_tasks_not_reported(timezone.now()) == 0
    later = timezone.now() + timedelta(seconds=61)
    beat(dispatcher, later)  # the list left out: unchanged
    released = scheduler.release_tasks_not_reported(later)
    assert released == 1
    assert Task.objects.get(pk=kept.pk).status == "running"
    dropped.refresh_from_db()
    assert dropped.status == "queued"
    assert "no longer reports" in dropped.status_reason


def test_recently_started_tasks_are_not_reconciled(skill_version, make_dispatcher, scheduler):
    dispatcher = make_dispatcher()
    task = create_task(skill="code-review")
    scheduler.claim_and_assign(timezone.now())
    heard = timezone.now()  # a heartbeat sent before the task started, not listing it
    Task.objects.filter(pk=task.pk).update(status="running", started_at=timezone.now())
    beat(dispatcher, heard, [])
    assert scheduler.release_tasks_not_reported(timezone.now()) == 0
    assert Task.objects.get(pk=task.pk).unreported_since is None


def beat(dispatcher, at, running=None):
    """What a heartbeat at ``at`` stores: listing ``running`` tasks, or (``None``) leaving
    the list out."""
    changes = {"last_heartbeat_at": at, "tasks_reported_at": at}
    if running is not None:
        changes["reported_task_guids"] = [str(task.guid) for task in running]
    Dispatcher.objects.filter(pk=dispatcher.pk).update(**changes)


class HeartbeatClock:
    """Sends heartbeats through the heartbeat service at chosen server times."""

    def __init__(self, dispatcher, monkeypatch, start):
        self.dispatcher, self.start = dispatcher, start
        self.monkeypatch = monkeypatch

    def beat(self, second, running):
        at = self.start + timedelta(seconds=second)
        with self.monkeypatch.context() as patch:
            patch.setattr(dispatcher_services.timezone, "now", lambda: at)
            dispatcher_services.record_heartbeat(
                guid=self.dispatcher.guid,
                application=None,
                running_task_guids=[str(task.guid) for task in running],
            )

    def at(self, second):
        return self.start + timedelta(seconds=second)


@pytest.fixture
def running_task(skill_version, make_dispatcher, dispatch, api_client):
    """A task its dispatcher reported as started (callback ``running``)."""
    dispatcher = make_dispatcher()
    task, token = dispatch(create_task(skill="code-review"), dispatcher)
    assert callback(api_client, task, token, {"status": "running"}).status_code == 200
    return dispatcher, Task.objects.get(pk=task.pk)


def requeues(task):
    return list(
        TaskEvent.objects.filter(task=task, kind="requeued").values_list("reason", flat=True)
    )


def test_running_task_is_requeued_only_after_missing_from_heartbeats_for_the_grace(
    running_task, scheduler, settings, monkeypatch
):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "REPORTED_TASKS_GRACE_SECONDS": 20,
    }
    dispatcher, task = running_task
    clock = HeartbeatClock(dispatcher, monkeypatch, timezone.now())
    for second in range(5, 31, 5):
        clock.beat(second, [task])
        scheduler.run_pass(now=clock.at(second + 1))
    clock.beat(35, [])  # the first heartbeat without it
    scheduler.run_pass(now=clock.at(36))
    assert Task.objects.get(pk=task.pk).status == "running"
    for second in (40, 45, 50):
        clock.beat(second, [])
        scheduler.run_pass(now=clock.at(second + 1))
    assert Task.objects.get(pk=task.pk).status == "running"
    assert requeues(task) == []
    clock.beat(55, [])  # missing from the heartbeats for 20 s
    scheduler.run_pass(now=clock.at(56))
    assert requeues(task) == [
        f"dispatcher {dispatcher.name} no longer reports this task "
        "(missing from its heartbeats for 20 s)"
    ]
    # Taken back and handed out again (its endpoint refuses connections, so the push is
    # deferred and the task queued once more, without using an attempt).
    kinds = TaskEvent.objects.filter(task=task).order_by("id").values_list("kind", flat=True)
    assert list(kinds)[-3:] == ["requeued", "dispatched", "push_deferred"]


def test_a_task_listed_again_starts_a_new_grace_when_it_drops_out(
    running_task, scheduler, settings, monkeypatch
):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "REPORTED_TASKS_GRACE_SECONDS": 20,
    }
    dispatcher, task = running_task
    clock = HeartbeatClock(dispatcher, monkeypatch, timezone.now())
    for second, running in ((5, []), (10, []), (15, [task]), (20, []), (25, []), (30, [])):
        clock.beat(second, running)
        scheduler.run_pass(now=clock.at(second + 1))
    clock.beat(35, [])  # 30 s after the first miss, but only 15 s after the last one
    assert scheduler.release_tasks_not_reported(clock.at(36)) == 0
    clock.beat(40, [])
    assert scheduler.release_tasks_not_reported(clock.at(41)) == 1
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_a_task_never_listed_gets_the_grace_from_the_first_heartbeat_after_its_start(
    running_task, scheduler, settings, monkeypatch
):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "REPORTED_TASKS_GRACE_SECONDS": 20,
    }
    dispatcher, task = running_task
    clock = HeartbeatClock(dispatcher, monkeypatch, timezone.now())
    for second in (5, 10, 15, 20):
        clock.beat(second, [])
        assert scheduler.release_tasks_not_reported(clock.at(second + 1)) == 0
    clock.beat(25, [])
    assert scheduler.release_tasks_not_reported(clock.at(26)) == 1
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_dispatcher_deleting_receiver_counts_and_requeues(
    skill_version, make_dispatcher, scheduler
):
    dispatcher = make_dispatcher()
    tasks = [create_task(skill="code-review") for _ in range(2)]
    claims, _ = scheduler.claim_and_assign(timezone.now())
    scheduler.record_pushed(claims)
    answers = signals.dispatcher_deleting.send(
        sender=Dispatcher, dispatcher=dispatcher, force=False
    )
    assert [count for _, count in answers] == [2]
    assert Task.objects.filter(status="dispatched").count() == 2
    answers = signals.dispatcher_deleting.send(sender=Dispatcher, dispatcher=dispatcher, force=True)
    assert [count for _, count in answers] == [2]
    assert Task.objects.filter(pk__in=[t.pk for t in tasks], status="queued").count() == 2


def test_a_forced_delete_waits_for_the_pushes_in_flight(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, staff_client
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    tasks = [create_task(skill="code-review") for _ in range(2)]
    claims, _ = scheduler.claim_and_assign(timezone.now())
    # Claimed, not pushed yet: requeued now, each task could go to another dispatcher while
    # this pass still pushes it here.
    url = f"/api/v1/dispatchers/{dispatcher.guid}/"
    refused = staff_client.delete(url, QUERY_STRING="force=true")
    assert refused.status_code == 409
    assert "pushing 2 tasks" in refused.json()["detail"]
    # Within the push deadline (3 s here), not the rest of the lease.
    assert 1 <= int(refused["Retry-After"]) <= math.ceil(push_deadline_seconds())
    assert push_deadline_seconds() < kohakku_settings.SCHEDULER_LEASE_SECONDS
    assert Dispatcher.objects.filter(pk=dispatcher.pk).exists()
    assert Task.objects.filter(status="dispatched", dispatcher=dispatcher).count() == 2
    assert scheduler.push_claims(claims) == (2, 0)
    assert staff_client.delete(url, QUERY_STRING="force=true").status_code == 204
    assert Task.objects.filter(pk__in=[t.pk for t in tasks], status="queued").count() == 2
    assert len(stub.pushes) == 2  # each task once, before the deletion


def test_a_forced_delete_takes_back_a_claim_whose_lease_ran_out(
    skill_version, make_dispatcher, scheduler
):
    dispatcher = make_dispatcher()
    task = create_task(skill="code-review")
    scheduler.claim_and_assign(timezone.now())
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    dispatcher_services.delete_dispatcher(dispatcher, force=True)
    task.refresh_from_db()
    assert task.status == "queued"


def test_deleted_dispatcher_tasks_are_requeued_by_the_pass(
    skill_version, make_dispatcher, scheduler
):
    dispatcher = make_dispatcher()
    task = create_task(skill="code-review")
    claims, _ = scheduler.claim_and_assign(timezone.now())
    scheduler.record_pushed(claims)
    dispatcher.delete()
    scheduler.release_tasks_of_lost_dispatchers(timezone.now())
    task.refresh_from_db()
    assert task.status == "queued"


def test_a_lost_dispatcher_keeps_a_push_in_flight_until_it_is_recorded(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, settings
):
    # Another scheduler's pass finds the dispatcher lost while this one is pushing to it:
    # requeued then, the task could be pushed elsewhere too. It is taken back only once
    # the push is recorded.
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "LOST_DISPATCHER_GRACE_SECONDS": 0,
    }
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")
    claims, _ = scheduler.claim_and_assign(timezone.now())
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    with Scheduler(name="other") as other:
        assert other.release_tasks_of_lost_dispatchers(timezone.now()) == 0
        assert Task.objects.get(pk=task.pk).status == "dispatched"
        assert scheduler.push_claims(claims) == (1, 0)
        assert other.release_tasks_of_lost_dispatchers(timezone.now()) == 1
    assert Task.objects.get(pk=task.pk).status == "queued"
    assert len(stub.pushes) == 1


def test_a_change_committed_between_claim_and_push_applies_to_the_push(
    skill_version, make_dispatcher, stub_dispatcher, scheduler
):
    # A check-in moved the dispatcher and rotated its secret after the claim: the push goes
    # to where it is now, signed with the secret it now has.
    old, new = stub_dispatcher(), stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=old.url)
    create_task(skill="code-review")
    claims, _ = scheduler.claim_and_assign(timezone.now())
    Dispatcher.objects.filter(pk=dispatcher.pk).update(endpoint_url=new.url)
    secret = dispatcher_services.rotate_signing_secret(
        Dispatcher.objects.get(pk=dispatcher.pk), grace_seconds=0
    )
    assert scheduler.push_claims(claims) == (1, 0)
    assert (len(old.pushes), len(new.pushes)) == (0, 1)
    [push] = new.pushes
    verify_signature(
        [secret],
        push["raw"],
        push["headers"]["X-Kohakku-Timestamp"],
        push["headers"]["X-Kohakku-Signature"],
    )


@pytest.mark.parametrize("change", ["backends", "deleted"])
def test_a_claim_its_dispatcher_no_longer_fits_goes_back_with_its_attempt(
    skill_version, make_dispatcher, stub_dispatcher, scheduler, change
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=1)
    claims, _ = scheduler.claim_and_assign(timezone.now())
    rows = Dispatcher.objects.filter(pk=dispatcher.pk)
    if change == "backends":
        rows.update(backends=["k8s"])  # a check-in that no longer offers "local"
    else:
        rows.delete()
    assert scheduler.push_claims(claims) == (0, 0)
    assert stub.pushes == []
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("queued", 0)
    assert kinds(task)[-1] == "push_deferred"


def test_management_command_once(skill_version, make_dispatcher, stub_dispatcher, capsys):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    create_task(skill="code-review")
    call_command("kohakku_scheduler", "--once")
    assert "claimed=1 pushed=1" in capsys.readouterr().out
    assert len(stub.pushes) == 1


def test_claim_query_budget(
    skill_version, make_dispatcher, scheduler, django_assert_max_num_queries
):
    make_dispatcher("a", capacity=50)
    make_dispatcher("b", capacity=50)
    for _ in range(20):
        create_task(skill="code-review")
    # anything to claim 1, dispatchers 2, counts (which backends are full) 1, savepoint 1,
    # claim 1, lock the chosen dispatchers 1, their counts 1, conditional UPDATE 1, bulk UPDATE
    # 1, event INSERT 1, release savepoint 1: the same for 20 tasks as for one.
    with django_assert_max_num_queries(12):
        claims, _ = scheduler.claim_and_assign(timezone.now())
    assert len(claims) == 20


def test_a_claim_with_nothing_queued_reads_no_dispatcher(
    skill_version, make_dispatcher, scheduler, django_assert_num_queries
):
    for index in range(30):
        make_dispatcher(f"idle-{index}")
    later = create_task(skill="code-review")
    Task.objects.filter(pk=later.pk).update(not_before=timezone.now() + timedelta(hours=1))
    # A quiet controller's pass costs one indexed query here, however large the fleet.
    with django_assert_num_queries(1):
        assert scheduler.claim_and_assign(timezone.now()) == ([], 0)


@pytest.mark.django_db(transaction=True)
def test_run_forever_pushes_new_work_until_stopped(skill_version, make_dispatcher, stub_dispatcher):
    import threading

    from django.db import connection

    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url, capacity=10)
    stop = threading.Event()

    def loop() -> None:
        try:
            with Scheduler(name="looping") as looping:
                looping.run_forever(stop, poll_seconds=0.05)
        finally:
            connection.close()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        tasks = [create_task(skill="code-review", input={"n": n}) for n in range(5)]
        for _ in range(200):
            if len(stub.pushes) == 5:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(p["body"]["task_guid"] for p in stub.pushes) == sorted(str(t.guid) for t in tasks)
    assert Task.objects.filter(status="dispatched", pushed_at__isnull=False).count() == 5


def test_reported_tasks_are_compared_in_constant_queries_however_many_dispatchers(
    skill_version, make_dispatcher, dispatch, scheduler, django_assert_num_queries
):
    for index in range(5):
        dispatcher = make_dispatcher(f"d{index}")
        task, _token = dispatch(create_task(skill="code-review"), dispatcher)
        Task.objects.filter(pk=task.pk).update(status="running", started_at=timezone.now())
        beat(dispatcher, timezone.now(), [task])
    # One read of tasks, the liveness of their dispatchers a condition of it.
    with django_assert_num_queries(1):
        assert scheduler.release_tasks_not_reported(timezone.now()) == 0


def test_timeout_sweep_takes_the_most_overdue_tasks_first(skill_version, make_dispatcher):
    dispatcher = make_dispatcher(capacity=20)
    tasks = [create_task(skill="code-review", timeout_seconds=60) for _ in range(11)]
    now = timezone.now()
    with Scheduler(name="claimer") as claimer:
        claimer.claim_and_assign(now)
    # Deadlines 1 to 11 s ago, in neither creation order nor its reverse.
    overdue_by = {task.pk: (index * 4 + 3) % 11 + 1 for index, task in enumerate(tasks)}
    for pk, seconds in overdue_by.items():
        Task.objects.filter(pk=pk).update(deadline_at=now - timedelta(seconds=seconds))
    with Scheduler(name="sweeper", batch_size=1) as sweeper:  # ten timeouts per pass
        timed_out = sweeper.time_out_overdue_tasks(now)
    assert len(timed_out) == 10
    least_overdue = min(overdue_by, key=overdue_by.get)
    assert Task.objects.get(status="dispatched").pk == least_overdue  # it waits for the next pass
    assert Task.objects.filter(dispatcher=dispatcher, status="timed_out").count() == 10


def test_a_check_in_does_not_restate_the_task_list(
    skill_version, make_dispatcher, dispatch, scheduler, monkeypatch
):
    # A heartbeat whose list was made just before the dispatcher accepted a push leaves the
    # task out. A check-in past the grace carries no list: it must not count as a second
    # report without the task (it used to, since it stamps the last heartbeat). A heartbeat
    # that leaves the list out says it is unchanged, and does.
    from oauth2_provider.models import get_application_model

    application = get_application_model().objects.create(
        name="fleet", client_type="confidential", authorization_grant_type="client-credentials"
    )
    dispatcher = make_dispatcher("d1", application=application)
    task, _token = dispatch(create_task(skill="code-review"), dispatcher)
    accepted = timezone.now()
    Task.objects.filter(pk=task.pk).update(pushed_at=accepted)

    def at(second: int, send: Any, **data: Any) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(
                dispatcher_services.timezone, "now", lambda: accepted + timedelta(seconds=second)
            )
            send(application=application, **data)

    at(1, dispatcher_services.record_heartbeat, guid=dispatcher.guid, running_task_guids=[])
    assert scheduler.release_tasks_not_reported(accepted + timedelta(seconds=2)) == 0
    assert Task.objects.get(pk=task.pk).unreported_since is not None  # the grace starts
    at(
        70,
        dispatcher_services.checkin,
        data={"name": "d1", "endpoint_url": dispatcher.endpoint_url},
    )
    assert scheduler.release_tasks_not_reported(accepted + timedelta(seconds=71)) == 0
    assert Task.objects.get(pk=task.pk).status == "dispatched"
    at(72, dispatcher_services.record_heartbeat, guid=dispatcher.guid)
    assert scheduler.release_tasks_not_reported(accepted + timedelta(seconds=73)) == 1
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_an_accepted_task_its_dispatcher_stopped_listing_is_requeued(
    skill_version, make_dispatcher, scheduler
):
    # The dispatcher answered the push, then restarted before the task started: it will
    # never report on it, and the task must not wait for its timeout.
    dispatcher = make_dispatcher()
    lost, listed, unconfirmed = (create_task(skill="code-review") for _ in range(3))
    scheduler.claim_and_assign(timezone.now())
    accepted = timezone.now() - timedelta(seconds=120)
    Task.objects.filter(pk__in=[lost.pk, listed.pk]).update(pushed_at=accepted)
    Task.objects.filter(pk=unconfirmed.pk).update(pushed_at=None)  # the lease's to decide
    beat(dispatcher, timezone.now(), [listed])
    assert scheduler.release_tasks_not_reported(timezone.now()) == 0
    later = timezone.now() + timedelta(seconds=61)
    beat(dispatcher, later)  # the list left out: unchanged

    assert scheduler.release_tasks_not_reported(later) == 1

    lost.refresh_from_db()
    assert lost.status == "queued" and "no longer reports" in lost.status_reason
    assert Task.objects.get(pk=listed.pk).status == "dispatched"
    assert Task.objects.get(pk=unconfirmed.pk).status == "dispatched"
