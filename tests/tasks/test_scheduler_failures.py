"""Failure injection: dispatchers that misbehave, storage, database and Redis failures."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from django.db import InterfaceError, connection
from django.utils import timezone

from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.skills.models import SkillVersion
from kohakku_controller.tasks import scheduler as scheduler_module
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.scheduler import PollWaiter, Scheduler, make_wakeup_waiter
from kohakku_controller.tasks.services import create_task, release_task

from .conftest import wakes

pytestmark = pytest.mark.django_db

READ_TIMEOUT = 0.5
ENDLESS = 8.0  # how long an "endless" body goes on; a bounded pass ends well before


@pytest.fixture(autouse=True)
def _short_timeouts(settings: Any) -> None:
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUSH_BACKOFF_BASE_SECONDS": 30,
        "PUSH_BACKOFF_MAX_SECONDS": 60,
        "PUSH_CONNECT_TIMEOUT": READ_TIMEOUT,
        "PUSH_READ_TIMEOUT": READ_TIMEOUT,
        "PUBLIC_BASE_URL": "https://controller.example",
    }


@pytest.fixture
def fast_scheduler() -> Iterator[Scheduler]:
    with Scheduler(name="faulty", push_concurrency=4) as instance:
        yield instance


# --- dispatcher behaviours (``respond`` hooks of the stub) -------------------------------


def never_answer(stub: Any, handler: Any) -> None:
    stub.stopped.wait()


def answer(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Any:
    def respond(stub: Any, handler: Any) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def endless_body(status: int) -> Any:
    """Answers ``status`` at once, then a body that goes on (a chunk every 0.1 s) for 8 s."""

    def respond(stub: Any, handler: Any) -> None:
        handler.send_response(status)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 65536
        ends = time.monotonic() + ENDLESS
        while not stub.stopped.wait(0.1) and time.monotonic() < ends:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()

    return respond


def trickled_headers(stub: Any, handler: Any) -> None:
    """A status line, then a header line every 0.1 s for 8 s: no read ever waits long."""
    handler.wfile.write(b"HTTP/1.1 202 Accepted\r\n")
    ends = time.monotonic() + ENDLESS
    while not stub.stopped.wait(0.1) and time.monotonic() < ends:
        handler.wfile.write(b"X-Slowly: 1\r\n")


def timed_pass(sched: Scheduler) -> tuple[Any, float]:
    """Run one pass; returns its report and how long it took."""
    started = time.monotonic()
    report = sched.run_pass()
    return report, time.monotonic() - started


def assert_released_with_backoff(task: Task, reason: str) -> None:
    task.refresh_from_db()
    assert task.status == "queued"
    assert task.dispatcher_id is None
    assert task.not_before > timezone.now()  # with the backoff, not at once
    event = TaskEvent.objects.filter(task=task, kind="push_failed").get()
    assert reason in event.reason


# --- dispatchers ------------------------------------------------------------------------


def test_a_dispatcher_that_never_answers_fails_after_the_read_timeout(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    make_dispatcher(endpoint_url=stub_dispatcher(respond=never_answer).url)
    task = create_task(skill="code-review")
    report, elapsed = timed_pass(fast_scheduler)
    assert (report.claimed, report.pushed, report.push_failed) == (1, 0, 1)
    assert elapsed < READ_TIMEOUT + 2
    assert_released_with_backoff(task, "timed out")


@pytest.mark.parametrize(
    ("respond", "reason"),
    [
        (answer(500, body=b"boom"), "HTTP 500: 'boom'"),
        (answer(503, body=b"down"), "HTTP 503: 'down'"),  # no Retry-After: maybe dead
        (answer(302, {"Location": "http://127.0.0.1:9/tasks/"}), "HTTP 302"),
        (answer(307, {"Location": "/elsewhere/"}), "HTTP 307"),
    ],
)
def test_refused_and_redirected_pushes_are_released_with_backoff(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler, respond, reason
):
    stub = stub_dispatcher(respond=respond)
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")
    report, _ = timed_pass(fast_scheduler)
    assert (report.pushed, report.push_failed) == (0, 1)
    assert len(stub.pushes) == 1  # a redirect is not followed
    assert_released_with_backoff(task, reason)


@pytest.mark.parametrize(
    "respond",
    [
        answer(200, {"Content-Type": "application/json"}, b"{not json"),
        answer(202, {"Content-Type": "application/json"}, b"[" * 2_000_000),
        endless_body(200),
    ],
    ids=["malformed", "large", "endless"],
)
def test_a_2xx_answer_is_accepted_whatever_its_body(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler, respond
):
    make_dispatcher(endpoint_url=stub_dispatcher(respond=respond).url)
    task = create_task(skill="code-review")
    report, elapsed = timed_pass(fast_scheduler)
    assert (report.pushed, report.push_failed) == (1, 0)
    assert elapsed < ENDLESS / 2
    task.refresh_from_db()
    assert (task.status, task.pushed_at is not None) == ("dispatched", True)


def test_an_error_answer_with_an_endless_body_fails_the_push_in_bounded_time(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    make_dispatcher(endpoint_url=stub_dispatcher(respond=endless_body(503)).url)
    task = create_task(skill="code-review")
    report, elapsed = timed_pass(fast_scheduler)
    assert report.push_failed == 1
    assert elapsed < ENDLESS / 2
    assert_released_with_backoff(task, "HTTP 503: 'xxxx")


def test_a_dispatcher_that_trickles_its_answer_cannot_hold_the_pass(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    slow = stub_dispatcher(respond=trickled_headers)
    fine = stub_dispatcher()
    make_dispatcher("slow", endpoint_url=slow.url, capacity=1)
    make_dispatcher("fine", endpoint_url=fine.url, capacity=1)
    tasks = [create_task(skill="code-review") for _ in range(2)]
    report, elapsed = timed_pass(fast_scheduler)
    assert (report.pushed, report.push_failed) == (1, 1)
    assert elapsed < 2 * READ_TIMEOUT + 2  # the call's deadline: connect + read timeouts
    released = TaskEvent.objects.get(task__in=tasks, kind="push_failed")
    assert "timed out (ReadTimeout)" in released.reason and slow.url in released.reason


def test_pushes_go_straight_to_the_dispatcher_whatever_proxy_the_environment_names(
    skill_version, make_dispatcher, stub_dispatcher, monkeypatch
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    create_task(skill="code-review")
    with Scheduler(name="behind-a-proxy") as sched:
        assert sched.run_pass().pushed == 1
    assert len(stub.pushes) == 1


def test_the_connection_to_a_dispatcher_is_kept_alive_between_pushes(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    for _ in range(2):
        create_task(skill="code-review")
        assert fast_scheduler.run_pass().pushed == 1
    assert stub.pushes[0]["client"] == stub.pushes[1]["client"]


@pytest.mark.parametrize(
    "endpoint_url",
    ["http://127.0.0.1:9", "http://no-such-dispatcher.invalid"],
    ids=["connection-refused", "unknown-host"],
)
def test_a_dispatcher_that_cannot_be_connected_to_is_left_alone_and_costs_no_attempt(
    skill_version, make_dispatcher, fast_scheduler, endpoint_url
):
    # Stopped or crashed, it stays online until its heartbeats are missed; the push never
    # left the scheduler, so the task cannot have started.
    dispatcher = make_dispatcher(endpoint_url=endpoint_url)
    task = create_task(skill="code-review", max_attempts=1)
    for _ in range(3):
        report, _ = timed_pass(fast_scheduler)
        assert (report.claimed, report.push_failed, report.push_deferred) == (1, 0, 1)
        dispatcher.refresh_from_db()
        wait = (dispatcher.busy_until - timezone.now()).total_seconds()
        assert 25 < wait <= 30  # the floor of the busy wait: PUSH_BACKOFF_BASE_SECONDS
        assert timed_pass(fast_scheduler)[0].claimed == 0  # left alone meanwhile
        Dispatcher.objects.filter(pk=dispatcher.pk).update(busy_until=None)
    task.refresh_from_db()
    assert (task.status, task.attempt, task.dispatcher_id) == ("queued", 0, None)
    events = TaskEvent.objects.filter(task=task, kind="push_deferred")
    assert events.count() == 3
    assert all(
        f"{dispatcher.name} could not be reached; no push to it until" in event.reason
        and f"could not connect to {endpoint_url}/tasks/: ConnectError" in event.reason
        for event in events
    )
    assert not TaskEvent.objects.filter(task=task, kind="push_failed").exists()


def test_a_task_pushed_to_a_dispatcher_that_is_down_goes_to_another_one(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    make_dispatcher("a-down", endpoint_url="http://127.0.0.1:9")
    up = stub_dispatcher()
    other = make_dispatcher("b-up", endpoint_url=up.url)
    task = create_task(skill="code-review", max_attempts=1)
    assert timed_pass(fast_scheduler)[0].push_deferred == 1  # "a-down" comes first
    report, _ = timed_pass(fast_scheduler)
    assert (report.pushed, len(up.pushes)) == (1, 1)
    task.refresh_from_db()
    assert (task.status, task.dispatcher_id, task.attempt) == ("dispatched", other.pk, 1)


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A port that completes TCP connections (the kernel does) and then says nothing."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield f"https://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("handshake", ["refused", "stalled"])
def test_a_failed_tls_handshake_is_a_failed_push(
    skill_version, make_dispatcher, stub_dispatcher, silent_listener, fast_scheduler, handshake
):
    # Reached, but its TLS is wrong (a plain HTTP server) or never answers: there until
    # someone fixes it, so the task uses its attempts and fails rather than waiting for ever.
    if handshake == "refused":
        endpoint = stub_dispatcher().url.replace("http://", "https://")
    else:
        endpoint = silent_listener
    make_dispatcher(endpoint_url=endpoint)
    task = create_task(skill="code-review")
    report, _ = timed_pass(fast_scheduler)
    assert (report.pushed, report.push_failed, report.push_deferred) == (0, 1, 0)
    assert_released_with_backoff(task, f"TLS handshake with {endpoint}/tasks/ failed")


def test_many_broken_dispatchers_neither_stall_the_pass_nor_starve_a_healthy_one(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    for index in range(6):
        make_dispatcher(f"hung{index}", endpoint_url=stub_dispatcher(respond=never_answer).url)
    make_dispatcher("endless", endpoint_url=stub_dispatcher(respond=endless_body(500)).url)
    make_dispatcher("nowhere", endpoint_url="http://nowhere.invalid")
    healthy = stub_dispatcher()
    make_dispatcher("healthy", endpoint_url=healthy.url)
    for _ in range(9):
        create_task(skill="code-review")
    # Nine pushes, four at a time: three rounds of at most the read timeout each.
    report, elapsed = timed_pass(fast_scheduler)
    assert (report.claimed, report.pushed, report.push_failed, report.push_deferred) == (
        9, 1, 7, 1,
    )  # fmt: skip
    assert elapsed < 3 * READ_TIMEOUT + 3
    assert len(healthy.pushes) == 1
    assert Task.objects.filter(status="dispatched", pushed_at__isnull=False).count() == 1
    assert Task.objects.filter(status="queued").count() == 8


# --- dispatchers out of room (429, or 503 with Retry-After) -----------------------------


def busy_at_first(refusals: int, status: int = 429, retry_after: str = "45") -> Any:
    """Refuses the first ``refusals`` pushes for lack of room, then accepts."""

    def respond(stub: Any, handler: Any) -> None:
        if len(stub.pushes) <= refusals:
            body = b'{"detail": "at capacity"}'
            answer(status, {"Retry-After": retry_after}, body)(stub, handler)
        else:
            answer(202, {"Content-Type": "application/json"}, b"{}")(stub, handler)

    return respond


def test_a_full_dispatcher_keeps_the_attempt_and_gets_nothing_until_retry_after(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher(respond=busy_at_first(1))
    dispatcher = make_dispatcher("gpu", endpoint_url=stub.url, labels={"gpu": "a100"})
    make_dispatcher("plain", endpoint_url=stub_dispatcher().url)  # the backend has room
    task = create_task(skill="code-review", labels={"gpu": "a100"})
    report, _ = timed_pass(fast_scheduler)
    assert (report.claimed, report.pushed, report.push_failed, report.push_deferred) == (
        1, 0, 0, 1,
    )  # fmt: skip
    task.refresh_from_db()
    dispatcher.refresh_from_db()
    assert (task.status, task.attempt, task.dispatcher_id) == ("queued", 0, None)
    assert task.not_before <= timezone.now()  # for any other dispatcher at once
    wait = (dispatcher.busy_until - timezone.now()).total_seconds()
    assert 40 < wait <= 45
    event = TaskEvent.objects.get(task=task, kind="push_deferred")
    assert (event.from_status, event.to_status, event.attempt) == ("dispatched", "queued", 1)
    assert "HTTP 429" in event.reason and dispatcher.name in event.reason

    report, _ = timed_pass(fast_scheduler)  # still busy: left alone
    assert (report.claimed, report.unmatched, len(stub.pushes)) == (0, 1, 1)
    task.refresh_from_db()
    assert task.status_reason.endswith(
        "are at capacity; 1 of them refused a push or could not be reached, and wait"
    )
    assert task.not_before == dispatcher.busy_until  # not looked at again before then
    assert timed_pass(fast_scheduler)[0].unmatched == 0

    report = fast_scheduler.run_pass(now=dispatcher.busy_until + timedelta(seconds=1))
    assert (report.pushed, len(stub.pushes)) == (1, 2)
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("dispatched", 1)
    assert stub.pushes[1]["headers"]["Idempotency-Key"] == f"{task.guid}:1"


def test_refusals_for_lack_of_room_never_use_up_the_attempts(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher(respond=busy_at_first(3))
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=1)
    for _ in range(3):
        assert timed_pass(fast_scheduler)[0].push_deferred == 1
        Dispatcher.objects.filter(pk=dispatcher.pk).update(busy_until=None)
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("queued", 0)
    assert timed_pass(fast_scheduler)[0].pushed == 1
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("dispatched", 1)


def test_a_task_refused_by_a_full_dispatcher_goes_to_another_one(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    full = stub_dispatcher(respond=busy_at_first(1, status=503, retry_after="30"))
    free = stub_dispatcher()
    make_dispatcher("a-full", endpoint_url=full.url)
    other = make_dispatcher("b-free", endpoint_url=free.url)
    task = create_task(skill="code-review")
    assert timed_pass(fast_scheduler)[0].push_deferred == 1  # "a-full" comes first
    report, _ = timed_pass(fast_scheduler)
    assert (report.pushed, len(full.pushes), len(free.pushes)) == (1, 1, 1)
    task.refresh_from_db()
    assert (task.status, task.dispatcher_id, task.attempt) == ("dispatched", other.pk, 1)


def test_a_cancellation_pending_when_the_push_is_refused_ends_the_task(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    make_dispatcher(endpoint_url=stub_dispatcher(respond=busy_at_first(1)).url)
    task = create_task(skill="code-review")
    claims, _ = fast_scheduler.claim_and_assign(timezone.now())
    Task.objects.filter(pk=task.pk).update(cancel_requested_at=timezone.now())
    claims[0].task.cancel_requested_at = timezone.now()
    assert fast_scheduler.push_claims(claims) == (0, 0)
    task.refresh_from_db()
    assert task.status == "cancelled"


def _busy(status: int, retry_after: str | None = None) -> float | None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return scheduler_module._busy_seconds(httpx.Response(status, headers=headers))


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "45", 45),
        (429, None, 30),  # no advice: the backoff base
        (429, "0", 30),  # not below the base: a dispatcher cannot make the scheduler spin
        (429, "86400", 60),  # not beyond PUSH_BACKOFF_MAX_SECONDS
        (429, "9" * 400, 60),
        (429, "soon", 30),
        (429, "-5", 30),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", 30),  # a date in the past
        (429, "Mon, 01 Jan 2020 99999999999999999999:00:00 GMT", 30),  # overflows: unreadable
        (429, "0000000000000045", 45),
        (503, "45", 45),
        (503, None, None),  # a 503 without advice is a failed push
        (500, "45", None),
        (400, "45", None),
    ],
)
def test_how_long_a_busy_dispatcher_is_left_alone(status, retry_after, expected):
    assert _busy(status, retry_after) == expected


@pytest.mark.parametrize("retry_after", [None, "0"])
def test_a_busy_dispatcher_is_left_alone_a_second_even_without_a_backoff(settings, retry_after):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUSH_BACKOFF_BASE_SECONDS": 0,
        "PUSH_BACKOFF_MAX_SECONDS": 0,
    }
    assert _busy(429, retry_after) == 1.0  # else each refusal would start the next pass


def test_accepted_pushes_are_recorded_even_when_recording_a_failure_fails(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler, monkeypatch
):
    make_dispatcher("a-fine", endpoint_url=stub_dispatcher().url, capacity=1)
    make_dispatcher("b-down", endpoint_url=stub_dispatcher(status=500).url, capacity=1)
    tasks = [create_task(skill="code-review") for _ in range(2)]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(fast_scheduler, "record_push_failure", broken)
    report, _ = timed_pass(fast_scheduler)
    assert (report.pushed, report.push_failed) == (1, 1)
    pushed = Task.objects.filter(pk__in=[t.pk for t in tasks], pushed_at__isnull=False)
    assert pushed.count() == 1


def test_no_push_starts_once_its_claim_lease_is_nearly_over(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher()
    dispatcher = make_dispatcher(endpoint_url=stub.url)
    outcome = fast_scheduler._push(dispatcher, b"{}", {}, lease_ends=time.monotonic() + 0.5)
    assert (outcome.sent, stub.pushes) == (False, [])  # under a second of a 60 s lease left
    assert fast_scheduler._push(dispatcher, b"{}", {}, lease_ends=time.monotonic() + 5).sent


def test_the_lease_counts_from_the_claim_not_from_the_push(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")
    # A pass that took 59.5 s of its 60 s lease before it came to push (a slow sweep).
    claimed_at = timezone.now() - timedelta(seconds=59.5)
    Task.objects.filter(pk=task.pk).update(not_before=claimed_at - timedelta(seconds=1))
    claims, _ = fast_scheduler.claim_and_assign(claimed_at)
    assert len(claims) == 1
    assert fast_scheduler.push_claims(claims) == (0, 0)
    assert stub.pushes == []
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("queued", 0)


def test_a_stale_release_cannot_end_a_newer_claim_with_the_same_attempt_number(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    dispatcher = make_dispatcher(endpoint_url=stub_dispatcher(respond=busy_at_first(1)).url)
    task = create_task(skill="code-review")
    claims, _ = fast_scheduler.claim_and_assign(timezone.now())
    stale = Task.objects.get(pk=task.pk)  # as a sweep of another scheduler read it
    assert fast_scheduler.push_claims(claims) == (0, 0)  # refused: attempt 1 given back
    Dispatcher.objects.filter(pk=dispatcher.pk).update(busy_until=None)
    assert timed_pass(fast_scheduler)[0].pushed == 1  # attempt 1 again, a new claim
    assert release_task(stale, kind="lease_expired", reason="stale read") is None
    task.refresh_from_db()
    assert (task.status, task.attempt, task.pushed_at is not None) == ("dispatched", 1, True)


def test_tasks_waiting_for_full_dispatchers_do_not_hide_tasks_that_could_run(
    skill_version, make_dispatcher, stub_dispatcher
):
    make_dispatcher("k8s-full", backends=("k8s",), endpoint_url=stub_dispatcher().url, capacity=0)
    make_dispatcher("local-free", endpoint_url=stub_dispatcher().url)
    waiting = [create_task(skill="code-review", backend="k8s") for _ in range(3)]
    behind = create_task(skill="code-review")  # after a batch's worth of waiting tasks
    with Scheduler(name="small-batches", batch_size=2) as sched:
        report = sched.run_pass()
    assert report.pushed == 1
    behind.refresh_from_db()
    assert behind.status == "dispatched"
    assert set(
        Task.objects.filter(pk__in=[t.pk for t in waiting]).values_list("status", flat=True)
    ) == {"queued"}


@pytest.mark.parametrize(
    "waiting_for",
    [
        pytest.param({"labels": {"gpu": "a100"}}, id="full-label-matching-dispatchers"),
        pytest.param({"labels": {"gpu": "h100"}}, id="no-label-matching-dispatcher"),
        pytest.param({"backend": "nomad"}, id="no-dispatcher-with-the-backend"),
    ],
)
@pytest.mark.parametrize("recheck", [None, 0], ids=["default-recheck", "recheck-at-once"])
def test_tasks_no_dispatcher_can_take_now_do_not_hide_tasks_behind_them(
    skill_version, make_dispatcher, stub_dispatcher, waiting_for, recheck, settings
):
    if recheck is not None:  # then no later not_before moves them out of the way
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "UNMATCHED_RECHECK_SECONDS": recheck,
        }
    # The backend has room (on "plain"), but not on the dispatcher with the labels they need.
    make_dispatcher("gpu", endpoint_url=stub_dispatcher().url, labels={"gpu": "a100"}, capacity=0)
    make_dispatcher("plain", endpoint_url=stub_dispatcher().url)
    waiting = [create_task(skill="code-review", **waiting_for) for _ in range(5)]
    behind = [create_task(skill="code-review") for _ in range(2)]
    with Scheduler(name="small-batches", batch_size=2) as sched:
        report = sched.run_pass()
    assert report.pushed == 2
    statuses = Task.objects.filter(pk__in=[t.pk for t in behind]).values_list("status", flat=True)
    assert set(statuses) == {"dispatched"}
    for task in waiting:
        task.refresh_from_db()
        assert (task.status, task.attempt) == ("queued", 0)


def test_a_claim_reads_past_waiting_tasks_a_bounded_number_of_times(
    skill_version, make_dispatcher, stub_dispatcher
):
    make_dispatcher("plain", endpoint_url=stub_dispatcher().url)
    for _ in range(20):
        create_task(skill="code-review", backend="nomad")
    behind = create_task(skill="code-review")
    with Scheduler(name="small-batches", batch_size=2) as sched:
        reports = [sched.run_pass() for _ in range(3)]
    # Four reads of two a pass: eight tasks looked at (and put off), not all twenty at once.
    assert [r.unmatched for r in reports] == [8, 8, 4]
    assert [r.pushed for r in reports] == [0, 0, 1]
    behind.refresh_from_db()
    assert behind.status == "dispatched"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_full_batch_of_waiting_tasks_does_not_spin_the_scheduler(
    skill_version, make_dispatcher, stub_dispatcher, monkeypatch
):
    # The backend has room (on "plain"), but not the one dispatcher with the label they need.
    make_dispatcher("gpu", endpoint_url=stub_dispatcher().url, labels={"gpu": "a100"}, capacity=0)
    make_dispatcher("plain", endpoint_url=stub_dispatcher().url)
    for _ in range(3):
        create_task(skill="code-review", labels={"gpu": "a100"})
    sched = Scheduler(name="waiting", batch_size=2)
    stop, passes, began = threading.Event(), [], time.monotonic()
    real_pass = sched.run_pass

    def counted_pass() -> Any:
        passes.append(1)
        if time.monotonic() - began > 1.0:
            stop.set()
        return real_pass()

    monkeypatch.setattr(sched, "run_pass", counted_pass)
    errors = []
    monkeypatch.setattr(sched, "_after_failure", lambda exc, what: errors.append(repr(exc)))
    with sched:
        sched.run_forever(stop, poll_seconds=0.2)
    assert errors == []
    assert 2 <= len(passes) <= 8, len(passes)  # a pass per poll, not one after another


def test_a_push_not_sent_in_time_goes_back_without_using_an_attempt(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler, monkeypatch
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review", max_attempts=1)
    late = scheduler_module.CallOutcome(
        "its claim's lease ran out before the push could start", sent=False
    )
    monkeypatch.setattr(fast_scheduler, "_push", lambda *args: late)
    report, _ = timed_pass(fast_scheduler)
    assert (report.pushed, report.push_failed, report.push_deferred) == (0, 0, 1)
    assert stub.pushes == []
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("queued", 0)
    event = TaskEvent.objects.get(task=task, kind="push_deferred")
    assert "lease ran out before the push could start" in event.reason


def test_a_push_is_cut_short_when_its_claim_lease_ends(
    skill_version, make_dispatcher, stub_dispatcher, settings
):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUSH_READ_TIMEOUT": 5.0,
        "SCHEDULER_LEASE_SECONDS": 2.5,
    }
    make_dispatcher(endpoint_url=stub_dispatcher(respond=never_answer).url)
    create_task(skill="code-review")
    with Scheduler(name="short-lease") as sched:
        report, elapsed = timed_pass(sched)
    assert report.push_failed == 1
    assert 2.0 < elapsed < 4  # the lease (2.5 s, less its margin), not the 5.5 s a push may take


def test_retry_after_as_an_http_date_in_the_future():
    moment = timezone.now() + timedelta(seconds=50)
    seconds = _busy(429, format_datetime(moment, usegmt=True))
    assert 48 <= seconds <= 50


# --- storage ----------------------------------------------------------------------------


def test_storage_failing_while_the_push_is_built_releases_the_claim(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler, monkeypatch
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")

    def presign_fails(*args: Any, **kwargs: Any) -> str:
        raise OSError("storage unreachable")

    monkeypatch.setattr(scheduler_module, "storage_is_remote", lambda: True)
    monkeypatch.setattr(scheduler_module, "presigned_url", presign_fails)
    report, _ = timed_pass(fast_scheduler)
    assert (report.claimed, report.pushed, report.push_failed) == (1, 0, 1)
    assert stub.pushes == []
    assert_released_with_backoff(task, "storage unreachable")


# --- the task changes between claim and push --------------------------------------------


def test_a_task_deleted_between_claim_and_push(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher(status=503)
    make_dispatcher(endpoint_url=stub.url)
    kept = create_task(skill="code-review")
    gone = create_task(skill="code-review")
    claims, _ = fast_scheduler.claim_and_assign(timezone.now())
    Task.objects.filter(pk=gone.pk).delete()
    assert fast_scheduler.push_claims(claims) == (0, 2)
    kept.refresh_from_db()
    assert kept.status == "queued"
    assert not Task.objects.filter(pk=gone.pk).exists()


def test_a_version_yanked_between_claim_and_push_is_still_pushed(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")
    claims, _ = fast_scheduler.claim_and_assign(timezone.now())
    SkillVersion.objects.filter(pk=skill_version.pk).update(yanked=True)
    assert fast_scheduler.push_claims(claims) == (1, 0)
    assert stub.pushes[0]["body"]["skill"]["version"] == 1
    task.refresh_from_db()
    assert task.pushed_at is not None


# --- the loop: database and Redis ---------------------------------------------------------


def run_briefly(sched: Scheduler, seconds: float = 10, until: Any = None) -> None:
    """Run ``run_forever`` until ``until()`` holds (at most ``seconds``), then stop it."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            sched.run_forever(stop, poll_seconds=0.2)
        except BaseException as exc:
            failure.append(exc)
        finally:
            connection.close()  # this thread's own

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and thread.is_alive() and not (until and until()):
        time.sleep(0.1)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert not failure, f"run_forever ended with {failure[0]!r}"


@pytest.fixture
def drop_scheduler_connections(transactional_db: Any) -> Callable[[], int]:
    """Kills the test database's sessions but the test's own, as a server restart would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [test_pid] = cursor.fetchone()
    params = connection.get_connection_params()

    def drop() -> int:
        raw = connection.get_new_connection(params)
        try:
            raw.autocommit = True
            return len(
                raw.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND pid <> pg_backend_pid() AND pid <> %s",
                    [test_pid],
                ).fetchall()
            )
        finally:
            raw.close()

    return drop


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_run_forever_recovers_when_the_database_drops_between_passes(
    skill_version, make_dispatcher, stub_dispatcher, fast_scheduler, drop_scheduler_connections
):
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    create_task(skill="code-review")

    def second_task_after_a_drop() -> bool:
        if len(stub.pushes) == 1 and not Task.objects.filter(status="queued").exists():
            assert drop_scheduler_connections() >= 1
            create_task(skill="code-review")
        return len(stub.pushes) == 2

    run_briefly(fast_scheduler, until=second_task_after_a_drop)
    assert len(stub.pushes) == 2
    assert Task.objects.filter(status="dispatched", pushed_at__isnull=False).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_no_claim_is_kept_when_the_database_drops_during_the_push(
    skill_version,
    make_dispatcher,
    stub_dispatcher,
    fast_scheduler,
    settings,
    drop_scheduler_connections,
):
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "SCHEDULER_LEASE_SECONDS": 1}

    def drop_once_then_accept(stub: Any, handler: Any) -> None:
        if len(stub.pushes) == 1:
            drop_scheduler_connections()  # the pass cannot record this push
        answer(200)(stub, handler)

    stub = stub_dispatcher(respond=drop_once_then_accept)
    make_dispatcher(endpoint_url=stub.url)
    task = create_task(skill="code-review")

    def recorded() -> bool:
        return Task.objects.filter(pk=task.pk, pushed_at__isnull=False).exists()

    run_briefly(fast_scheduler, until=recorded)
    task.refresh_from_db()
    # The unrecorded push's lease expired, and the task went out again as a new attempt.
    assert (task.status, task.attempt, len(stub.pushes)) == ("dispatched", 2, 2)
    assert "lease_expired" in TaskEvent.objects.filter(task=task).values_list("kind", flat=True)


def test_start_up_survives_an_interface_error(fast_scheduler, monkeypatch):
    calls = []

    def reconcile() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise InterfaceError("connection already closed")
        return 0

    monkeypatch.setattr(fast_scheduler, "reconcile_on_startup", reconcile)
    monkeypatch.setattr(fast_scheduler, "run_pass", lambda: scheduler_module.PassReport())
    run_briefly(fast_scheduler, 2.5)
    assert len(calls) == 2


@pytest.mark.django_db(transaction=True)
def test_with_redis_down_the_scheduler_polls(
    settings, skill_version, make_dispatcher, stub_dispatcher, fast_scheduler
):
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/13",  # nothing listens there
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "SCHEDULER_WAKEUP": "redis"}
    waiter = make_wakeup_waiter()
    assert type(waiter) is PollWaiter
    stub = stub_dispatcher()
    make_dispatcher(endpoint_url=stub.url)
    create_task(skill="code-review")  # its wake-up is lost
    run_briefly(fast_scheduler, until=lambda: stub.pushes)
    assert len(stub.pushes) == 1


@pytest.mark.usefixtures("redis_cache")
def test_redis_wakeups_resume_after_redis_drops_the_connection(
    skill_version, settings, django_capture_on_commit_callbacks
):
    from django_redis import get_redis_connection

    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "SCHEDULER_WAKEUP": "redis"}
    waiter = make_wakeup_waiter()
    host, port = waiter.pubsub.connection._sock.getsockname()[:2]
    get_redis_connection("default").execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")
    stop = threading.Event()
    started = time.monotonic()
    waiter.wait(3, stop)  # notices the loss

    def create() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            create_task(skill="code-review")

    assert wakes(waiter, create)
    assert time.monotonic() - started < 10
