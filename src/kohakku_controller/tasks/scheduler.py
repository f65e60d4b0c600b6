"""The scheduler: claims queued tasks, matches them to dispatchers and pushes them.

One pass (:meth:`Scheduler.run_pass`):

1. marks lost dispatchers, and takes back the unfinished tasks of dispatchers that have
   been gone longer than ``LOST_DISPATCHER_GRACE_SECONDS``;
2. takes back claims whose push was never recorded (a scheduler died between claim and
   push) once their lease expires, and running tasks a dispatcher's heartbeats stopped
   listing ``REPORTED_TASKS_GRACE_SECONDS`` ago;
3. times out overdue tasks and finishes cancellations the dispatcher never confirmed;
4. claims a batch of queued tasks (priority, then age; ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL), matches each to a dispatcher, marks it ``dispatched`` with a lease, and
   commits;
5. pushes the claimed tasks over HTTP, several at once, and records the outcome: a failed
   push sends the task back to ``queued`` with exponential backoff, or to ``failed`` once
   its attempts are used up; a dispatcher that answers it is out of room (429, or 503 with
   ``Retry-After``) gets the attempt back and no task until the time it asked for, and so
   does one that could not be connected to (the push never left the scheduler);
6. sends cancel requests to dispatchers: for pending cancellations, and for timed-out
   tasks (whether a pass or a late callback noticed the timeout).

Any number of schedulers may run at once against PostgreSQL; each task is claimed by one.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from ..conf import kohakku_settings
from ..dispatchers.models import Dispatcher, DispatcherStatus
from ..dispatchers.secrets import current_signing_secret
from ..dispatchers.services import mark_lost_dispatchers
from ..fields import with_offset
from ..signing import sign_request
from ..skills.services import package_download_url
from ..storage import presigned_url, storage_is_remote
from .deadlines import DeadlineTransport, call_deadline, push_deadline_seconds
from .models import ACTIVE_STATUSES, Task, TaskEvent, TaskStatus, hash_callback_token
from .services import (
    WAKEUP_CHANNEL,
    end_task,
    notify_scheduler,
    push_backoff_seconds,
    record_event,
    redis_wakeup_channel,
    release_task,
    time_out_task,
)

logger = logging.getLogger(__name__)

USER_AGENT = "kohakku-controller-scheduler"


@dataclass
class Claim:
    """A task this scheduler marked ``dispatched`` and must now push."""

    task: Task
    dispatcher: Dispatcher
    callback_token: str
    claimed_at: datetime


@dataclass
class PassReport:
    """What one pass did (counts), for logs and tests."""

    lost_dispatchers: int = 0
    released: int = 0
    timed_out: int = 0
    claimed: int = 0
    unmatched: int = 0
    pushed: int = 0
    push_failed: int = 0
    push_deferred: int = 0
    cancels_sent: int = 0
    errors: list[str] = field(default_factory=list)


def public_url(path: str) -> str:
    return kohakku_settings.PUBLIC_BASE_URL.rstrip("/") + path


_URL_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


@functools.lru_cache(maxsize=32)
def _task_path_template(url_name: str, urlconf: str) -> str:
    return reverse(url_name, kwargs={"guid": _URL_PLACEHOLDER}, urlconf=urlconf)


def task_url(url_name: str, guid: Any) -> str:
    """Absolute URL of a per-task controller endpoint (reversed once, then filled in)."""
    template = _task_path_template(url_name, settings.ROOT_URLCONF)
    return public_url(template.replace(_URL_PLACEHOLDER, str(guid)))


def result_name(attempt: int, claims: int = 0) -> str:
    """The file a claim is told to write its result to, under the task's result prefix.

    ``output.json`` for the first attempt, ``attempt-<n>/output.json`` for a later one, and
    ``attempt-<n>/claim-<c>/output.json`` for the ``c``-th claim of a task when it reuses
    attempt number ``n`` (given back after a push was refused for lack of room). A claim that
    was taken back, or whose push was refused, may still upload with its presigned URL,
    which cannot be revoked: with a name of its own, it can never replace the result of the
    claim that completed.
    """
    if claims > attempt:
        return f"attempt-{attempt}/claim-{claims}/output.json"
    return "output.json" if attempt <= 1 else f"attempt-{attempt}/output.json"


def result_target(task: Task, callback_token: str) -> dict[str, Any]:
    """Where the dispatcher puts the task's result (the ``result`` object of a push)."""
    name = result_name(task.attempt, task.claims)
    key = f"{task.result_prefix}{name}"
    expires = max(kohakku_settings.RESULT_URL_EXPIRES_SECONDS, task.timeout_seconds + 300)
    if storage_is_remote():
        url = presigned_url(key, expires_seconds=expires, method="put_object")
        headers: dict[str, str] = {}
    else:
        url = task_url("kohakku_controller:task-result-upload", task.guid)
        if name != result_name(1):
            url += "?" + urlencode({"name": name})
        headers = {"Authorization": f"Bearer {callback_token}"}
    return {
        "key_prefix": task.result_prefix,
        "key": key,
        "upload_url": url,
        "method": "PUT",
        "headers": headers,
        "max_bytes": kohakku_settings.RESULT_MAX_BYTES,
    }


def build_push_body(task: Task, callback_token: str) -> dict[str, Any]:
    """The body of ``POST {endpoint_url}/tasks/`` (docs/dispatcher-contract.md)."""
    version = task.skill_version
    return {
        "task_guid": str(task.guid),
        "attempt": task.attempt,
        "skill": {
            "slug": version.skill.slug,
            "version": version.version_number,
            "content_hash": version.content_hash,
            "download_url": package_download_url(
                version,
                base_url=kohakku_settings.PUBLIC_BASE_URL,
            ),
            "entrypoint": version.entrypoint,
        },
        "input": task.input,
        "backend": task.backend,
        "labels": task.labels,
        "priority": task.priority,
        "timeout_seconds": task.timeout_seconds,
        "deadline_at": with_offset(task.deadline_at).isoformat() if task.deadline_at else None,
        "callback_url": task_url("kohakku_controller:task-callback", task.guid),
        "callback_token": callback_token,
        "result": result_target(task, callback_token),
    }


def _labels_text(labels: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())) + "}"


def _carries_labels(dispatcher: Dispatcher, labels: dict[str, Any]) -> bool:
    have = dispatcher.labels if isinstance(dispatcher.labels, dict) else {}
    return all(k in have and str(have[k]) == str(v) for k, v in labels.items())


@dataclass(frozen=True)
class Waiting:
    """Why no dispatcher can take a task now (see :func:`explain_no_match`)."""

    #: In words an operator understands; becomes the task's ``status_reason``.
    reason: str
    #: Some online dispatcher could take it, once it has room.
    at_capacity: bool = False
    #: When every such dispatcher refused a push (or could not be reached) and waits: the
    #: first ``busy_until``.
    busy_until: datetime | None = None


def explain_no_match(
    task: Task,
    dispatchers: list[Dispatcher],
    active: dict[int, int],
    now: datetime | None = None,
) -> Waiting:
    """Why no dispatcher can take ``task`` now."""
    wanted = f"backend {task.backend!r}"
    if task.labels:
        wanted += f" and labels {_labels_text(task.labels)}"
    if not dispatchers:
        return Waiting(f"waiting: no online dispatcher (needs {wanted})")
    with_backend = [d for d in dispatchers if task.backend in (d.backends or [])]
    if not with_backend:
        return Waiting(f"waiting: no online dispatcher with backend {task.backend!r}")
    matching = [d for d in with_backend if _carries_labels(d, task.labels)]
    if not matching:
        return Waiting(f"waiting: no online dispatcher with {wanted}")
    reason = f"waiting: all {len(matching)} online dispatcher(s) with {wanted} are at capacity"
    busy = [d for d in matching if d.is_busy(now)]
    if not busy:
        return Waiting(reason, at_capacity=True)
    # No time in the words: they stay the same while the same dispatchers wait, so a
    # waiting task is not rewritten on every pass.
    reason += f"; {len(busy)} of them refused a push or could not be reached, and wait"
    first = min(d.busy_until for d in busy) if len(busy) == len(matching) else None
    return Waiting(reason, at_capacity=True, busy_until=first)


def _lost_for(dispatcher: Dispatcher | None, now: datetime, grace: timedelta) -> str | None:
    """Why ``dispatcher``'s tasks go back to the queue: it has been offline longer than the
    grace (``None`` while it has not, or if it is gone: its tasks then have no dispatcher)."""
    if dispatcher is None:
        return None
    seen = dispatcher.last_heartbeat_at or dispatcher.last_checkin_at
    if seen is not None and now - seen <= dispatcher.offline_after + grace:
        return None
    return (
        f"dispatcher {dispatcher.name} stopped sending heartbeats "
        f"(last at {with_offset(seen).isoformat() if seen else 'never'})"
    )


def _by_dispatcher(tasks: Any) -> dict[int | None, list[Task]]:
    """``tasks`` grouped by their dispatcher's pk, in the order they were read."""
    groups: dict[int | None, list[Task]] = defaultdict(list)
    for task in tasks:
        groups[task.dispatcher_id].append(task)
    return groups


def _active_counts(dispatcher_ids: list[int] | None = None) -> dict[int, int]:
    """How many tasks each dispatcher holds (``dispatched`` or ``running``): those of
    ``dispatcher_ids``, or of every dispatcher holding one (read from the active tasks, so
    its cost follows the work in flight, not the size of the fleet)."""
    active = Task.objects.filter(status__in=list(ACTIVE_STATUSES), dispatcher__isnull=False)
    if dispatcher_ids is not None:
        active = active.filter(dispatcher_id__in=dispatcher_ids)
    return dict(
        active.order_by()
        .values_list("dispatcher_id")
        .annotate(n=Count("id"))
        .values_list("dispatcher_id", "n")
    )


def _can_take(dispatcher: Dispatcher, task: Task) -> bool:
    """``dispatcher`` offers the task's backend and carries its labels (room aside)."""
    return task.backend in (dispatcher.backends or []) and _carries_labels(dispatcher, task.labels)


def _by_backend(dispatchers: list[Dispatcher]) -> dict[str, list[Dispatcher]]:
    """``dispatchers`` under each backend they offer, in their order."""
    grouped: dict[str, list[Dispatcher]] = defaultdict(list)
    for dispatcher in dispatchers:
        backends = dispatcher.backends if isinstance(dispatcher.backends, list) else []
        # Names only (check-in allows nothing else; a row written by hand might).
        for backend in dict.fromkeys(name for name in backends if isinstance(name, str)):
            grouped[backend].append(dispatcher)
    return grouped


class _Matcher:
    """Chooses dispatchers for one claim's tasks: for each, the least loaded of the
    candidates that can take it (load over capacity, then load, then lowest pk), counting
    each choice in ``active``.

    Tasks with the same backend and labels share their matching dispatchers, found once per
    claim and kept in a heap by load, so a claim costs the size of the fleet once per kind
    of task, not once per task.
    """

    def __init__(self, candidates: list[Dispatcher], active: dict[int, int], now: datetime):
        self.candidates = candidates
        self.active = active
        self.now = now
        self.by_backend = _by_backend(candidates)
        # Per kind of task: its matching dispatchers with room, in a heap by load.
        self.heaps: dict[tuple[str, str], list[Any]] = {}
        self.explanations: dict[tuple[str, str], Waiting] = {}

    def choose(self, task: Task) -> Dispatcher | None:
        heap = self._heap(task)
        while heap:
            *stored, dispatcher = heap[0]
            if not self._has_room(dispatcher):
                heapq.heappop(heap)
            elif tuple(stored) != self._key(dispatcher):
                # Loads only grow during a claim: refresh the key and look again.
                heapq.heapreplace(heap, (*self._key(dispatcher), dispatcher))
            else:
                self.active[dispatcher.pk] = self.active.get(dispatcher.pk, 0) + 1
                heapq.heapreplace(heap, (*self._key(dispatcher), dispatcher))
                return dispatcher
        return None

    def explain(self, task: Task) -> Waiting:
        """Why nothing can take ``task``; the same for its kind for the rest of the claim
        (whatever matched it is full or busy, and stays so until the claim ends)."""
        key = self._group_key(task)
        if key not in self.explanations:
            offering = self.by_backend.get(task.backend) or self.candidates
            self.explanations[key] = explain_no_match(task, offering, self.active, self.now)
        return self.explanations[key]

    @staticmethod
    def _group_key(task: Task) -> tuple[str, str]:
        return task.backend, json.dumps(task.labels, sort_keys=True, default=str)

    def _heap(self, task: Task) -> list[Any]:
        key = self._group_key(task)
        if key not in self.heaps:
            heap = [
                (*self._key(d), d)
                for d in self.by_backend.get(task.backend, [])
                if _carries_labels(d, task.labels) and self._has_room(d)
            ]
            heapq.heapify(heap)  # keys end in the unique pk: dispatchers are never compared
            self.heaps[key] = heap
        return self.heaps[key]

    def _key(self, dispatcher: Dispatcher) -> tuple[float, int, int]:
        load = self.active.get(dispatcher.pk, 0)
        return (load / max(dispatcher.capacity, 1), load, dispatcher.pk)

    def _has_room(self, dispatcher: Dispatcher) -> bool:
        load = self.active.get(dispatcher.pk, 0)
        return load < dispatcher.capacity and not dispatcher.is_busy(self.now)


def _full_backends(
    dispatchers: list[Dispatcher], active: dict[int, int], now: datetime
) -> set[str]:
    """Backends that online dispatchers offer, but none with room (all full or busy)."""
    offered: set[str] = set()
    with_room: set[str] = set()
    for dispatcher in dispatchers:
        backends = set(dispatcher.backends or [])
        offered |= backends
        if active.get(dispatcher.pk, 0) < dispatcher.capacity and not dispatcher.is_busy(now):
            with_room |= backends
    return offered - with_room


def _set_assignment_columns(
    assignments: list[tuple[Task, Dispatcher, str]], claimed_by: str, claimed_at: datetime
) -> None:
    """Write each claimed row's own dispatcher, deadline, token hash and reason.

    Only rows this claim moved (same ``claimed_by`` and ``dispatched_at``) are touched. It
    is one ``UPDATE … FROM (VALUES …)``; Django's ``bulk_update`` builds a CASE per row and
    per field, which costs more than the claim itself at batch sizes.
    """
    if not assignments:
        return
    quote = connection.ops.quote_name
    column = {
        name: quote(Task._meta.get_field(name).column)
        for name in (
            "id",
            "dispatcher",
            "deadline_at",
            "callback_token_hash",
            "status_reason",
            "claimed_by",
            "dispatched_at",
        )
    }
    names = "id, dispatcher_id, deadline_at, token_hash, reason"
    postgres = connection.vendor == "postgresql"
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = []
    for task, chosen, _ in assignments:
        deadline = task.deadline_at if postgres else adapt(task.deadline_at)
        params += [task.pk, chosen.pk, deadline, task.callback_token_hash, task.status_reason]
    if postgres:
        row = "(%s::bigint, %s::bigint, %s::timestamptz, %s::text, %s::text)"
        values = f"(VALUES {', '.join([row] * len(assignments))}) AS v({names})"
    else:  # SQLite names VALUES columns column1..column5
        rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(assignments))
        aliases = ", ".join(f"column{n + 1} AS {a}" for n, a in enumerate(names.split(", ")))
        values = f"(SELECT {aliases} FROM (VALUES {rows})) AS v"  # noqa: S608
    # Identifiers come from the model's metadata; every value is a bound parameter.
    sql = (
        f"UPDATE {quote(Task._meta.db_table)} AS t SET "  # noqa: S608
        f"{column['dispatcher']} = v.dispatcher_id, {column['deadline_at']} = v.deadline_at, "
        f"{column['callback_token_hash']} = v.token_hash, {column['status_reason']} = v.reason "
        f"FROM {values} "
        f"WHERE t.{column['id']} = v.id AND t.{column['claimed_by']} = %s "
        f"AND t.{column['dispatched_at']} = %s"
    )
    claimed_at_param = claimed_at if postgres else adapt(claimed_at)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, claimed_by, claimed_at_param])


_BODY_READ_LIMIT = 65536
#: A push is not started with less than this left of its claim's lease (see ``_push``), nor
#: with less than a tenth of the lease.
_LEASE_MARGIN_SECONDS = 1.0
#: The shortest a dispatcher that refused a push is left alone, whatever it or the settings
#: say: a pass per refusal would otherwise spin.
_MIN_BUSY_SECONDS = 1.0
#: How many reads of queued tasks one claim may make (see ``claim_and_assign``).
_MAX_CLAIM_READS = 4
#: Dispatcher columns a claim does not read (the JSON a heartbeat or check-in sends).
_NOT_NEEDED_TO_MATCH = ("reported_task_guids", "metadata")
#: The only columns a claim reads of every candidate dispatcher: what choosing one takes. The
#: chosen few are read whole, locked, before they are given tasks.
_MATCHING_FIELDS = ("pk", "backends", "labels", "capacity", "busy_until")


def _as_they_are_now(claims: list[Claim]) -> dict[int, Dispatcher]:
    """The claims' dispatchers read again just before the pushes: a check-in that committed
    since the claim (a new ``endpoint_url``, a rotated secret, other backends) applies to
    them."""
    pks = sorted({claim.dispatcher.pk for claim in claims})
    return {d.pk: d for d in Dispatcher.objects.defer(*_NOT_NEEDED_TO_MATCH).filter(pk__in=pks)}


def _unfit_to_push(claim: Claim, dispatcher: Dispatcher | None) -> str | None:
    """Why the claim's push must not be sent now (it goes back to the queue, its attempt
    given back), or ``None``."""
    if dispatcher is None:
        return "its dispatcher was deleted before the push"
    if not _can_take(dispatcher, claim.task):
        return f"a check-in changed the backends or labels of {dispatcher.name} before the push"
    return None


def _read_head(response: httpx.Response) -> bytes:
    """The start of a dispatcher's answer: the status decides, the body is only for logs.

    A short body is read whole, so its connection is reused; one longer than 64 KiB, still
    coming at the call's deadline, or broken off is cut short (its connection is closed).
    A huge or never-ending body thus neither stalls the pass nor turns a 2xx into a failure.
    """
    head = b""
    try:
        for chunk in response.iter_raw():
            head += chunk
            if len(head) >= _BODY_READ_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the status line and headers arrived; that is the answer
    return head


@dataclass(frozen=True)
class CallOutcome:
    """How a dispatcher answered a signed call."""

    #: Empty when the call was accepted (2xx); otherwise why it was not, for logs and events.
    error: str = ""
    #: Seconds to leave the dispatcher alone: what it asked for (429, or 503 with
    #: ``Retry-After``), bounded by the push backoff settings, or the floor of those when
    #: it could not be connected to; ``None`` otherwise.
    busy_seconds: float | None = None
    #: False when the call never reached the dispatcher: a push whose claim's lease ran
    #: out first, or a dispatcher that could not be connected to (``unreachable``).
    sent: bool = True
    #: True when no connection could be made: refused, no route, an unknown host, or
    #: connecting timed out. No byte of the request left, so the task cannot have started.
    unreachable: bool = False


def _busy_seconds(response: httpx.Response) -> float | None:
    """How long a dispatcher that answered it is out of room wants no pushes, or ``None``.

    A 429 always means "at capacity"; a 503 only with ``Retry-After`` (without it, it may
    as well be a proxy in front of a dead dispatcher). The wait is the ``Retry-After``
    delay (seconds or an HTTP date), at least ``PUSH_BACKOFF_BASE_SECONDS`` (and 1 s) and
    at most ``PUSH_BACKOFF_MAX_SECONDS``; the floor when the header is missing or unreadable.
    """
    header = response.headers.get("Retry-After", "").strip()
    if response.status_code != 429 and not (response.status_code == 503 and header):
        return None
    asked = _retry_after_seconds(header)
    floor = _busy_floor_seconds()
    ceiling = max(kohakku_settings.PUSH_BACKOFF_MAX_SECONDS, floor)
    return min(max(asked if asked is not None else floor, floor), ceiling)


def _busy_floor_seconds() -> float:
    return max(kohakku_settings.PUSH_BACKOFF_BASE_SECONDS, _MIN_BUSY_SECONDS)


class _ConnectionTrace:
    """Told by the HTTP client what a call did on the network; it knows whether a TCP
    connection to the dispatcher was ever made (``httpcore``'s ``trace`` extension)."""

    def __init__(self) -> None:
        self.connected = False

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            self.connected = True


def _retry_after_seconds(value: str) -> float | None:
    """A ``Retry-After`` value (RFC 9110 section 10.2.3) in seconds from now, or ``None``."""
    if value.isascii() and value.isdigit():
        return float(value)  # a huge one is inf, which the ceiling bounds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None  # an HTTP date is always GMT; one without a zone is not an HTTP date
    return (moment - datetime.now(UTC)).total_seconds()  # aware, whatever USE_TZ says


class Scheduler:
    """One scheduler replica. Not thread-safe: run one pass at a time per instance."""

    def __init__(
        self,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        push_concurrency: int | None = None,
    ) -> None:
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.batch_size = batch_size or kohakku_settings.SCHEDULER_BATCH_SIZE
        concurrency = push_concurrency or kohakku_settings.SCHEDULER_PUSH_CONCURRENCY
        timeout = httpx.Timeout(
            connect=kohakku_settings.PUSH_CONNECT_TIMEOUT,
            read=kohakku_settings.PUSH_READ_TIMEOUT,
            write=kohakku_settings.PUSH_READ_TIMEOUT,
            pool=kohakku_settings.PUSH_CONNECT_TIMEOUT,
        )
        # Straight to each dispatcher's endpoint_url (no HTTP(S)_PROXY from the environment:
        # a push carries a callback token), each call bounded as a whole (see _post_signed).
        self.http = httpx.Client(
            transport=DeadlineTransport(limits=httpx.Limits(max_connections=concurrency * 2)),
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kohakku-push")
        # Dispatchers whose last cancel request failed: id -> (failures in a row, next try).
        self._cancel_backoff: dict[int, tuple[int, datetime]] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.http.close()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one pass --------------------------------------------------------------------

    def run_pass(self, now: datetime | None = None) -> PassReport:
        """Do every step once; see the module docstring."""
        report = PassReport()
        now = now or timezone.now()
        report.lost_dispatchers = len(mark_lost_dispatchers(now=now))
        report.released += self.release_tasks_of_lost_dispatchers(now)
        report.released += self.release_expired_leases(now)
        report.released += self.release_tasks_not_reported(now)
        timed_out = self.time_out_overdue_tasks(now)
        report.timed_out = len(timed_out)
        self.finish_unconfirmed_cancellations(now)
        claims, report.unmatched = self.claim_and_assign(now)
        report.claimed = len(claims)
        pushed, failed = self.push_claims(claims)
        report.pushed, report.push_failed = pushed, failed
        report.push_deferred = len(claims) - pushed - failed
        report.cancels_sent = self.send_cancel_requests(now)
        return report

    def reconcile_on_startup(self) -> int:
        """Take back what a crashed scheduler left behind (expired claims not pushed).

        A claim's lease tells a live scheduler's claim from a dead one's, so this is the
        same rule every pass applies; running it at start-up just clears a backlog first.
        """
        return self.release_expired_leases(timezone.now())

    # --- reconciliation --------------------------------------------------------------

    def release_tasks_of_lost_dispatchers(self, now: datetime) -> int:
        grace = timedelta(seconds=kohakku_settings.LOST_DISPATCHER_GRACE_SECONDS)
        holders = (
            Task.objects.filter(status__in=list(ACTIVE_STATUSES))
            .order_by()
            .values_list("dispatcher_id", flat=True)
            .distinct()
        )
        holder_ids = set(holders)
        gone = {
            dispatcher.pk
            for dispatcher in Dispatcher.objects.filter(pk__in=[i for i in holder_ids if i])
            if _lost_for(dispatcher, now, grace)
        }
        condition = Q(dispatcher_id__in=sorted(gone))
        if None in holder_ids:
            condition |= Q(dispatcher__isnull=True)
        if not gone and None not in holder_ids:
            return 0
        # A claim still being pushed is left to its scheduler: requeued now, it could go to
        # another dispatcher while the push to this one is sent. It is taken back once its
        # push is recorded (the next pass), or by the lease sweep if it never is.
        tasks = (
            Task.objects.select_related("dispatcher")
            .filter(condition, status__in=list(ACTIVE_STATUSES))
            .without_pushes_in_flight(now)
        )
        released = 0
        for dispatcher_id, group in _by_dispatcher(tasks[: self.batch_size * 10]).items():
            with transaction.atomic():
                reason = "its dispatcher was deleted"
                if dispatcher_id is not None:
                    # Decided again with the dispatcher locked: a heartbeat that came in
                    # since the read above keeps its tasks (the heartbeat waits for this).
                    locked = Dispatcher.objects.select_for_update().filter(pk=dispatcher_id)
                    reason = _lost_for(locked.first(), now, grace)
                    if reason is None:
                        continue
                for task in group:
                    if release_task(task, kind="requeued", reason=reason, now=now):
                        released += 1
        return released

    def release_expired_leases(self, now: datetime) -> int:
        released = 0
        tasks = Task.objects.expired_leases(now).select_related("dispatcher")
        for task in tasks[: self.batch_size * 10]:
            reason = (
                f"the push by scheduler {task.claimed_by or 'unknown'} was never confirmed "
                "(its lease expired)"
            )
            if release_task(task, kind="lease_expired", reason=reason, now=now):
                released += 1
        return released

    def release_tasks_not_reported(self, now: datetime) -> int:
        """Requeue held tasks that heartbeats stopped listing for the reported-tasks grace.

        A dispatcher holds a task from the moment it accepts the push (``dispatched`` with
        ``pushed_at``) until it ends it; a dispatcher that restarted in between has lost it
        and would never report on it. A heartbeat keeps only the latest list
        (``reported_task_guids``) and its time (``tasks_reported_at``: the last heartbeat,
        which restates the list when it leaves it out; a check-in carries no list and does
        not count), so each pass compares it with the tasks the
        dispatcher holds: a task missing from a heartbeat that came after the dispatcher
        accepted it (after it started, for a ``running`` task) is stamped
        ``unreported_since`` (that heartbeat's time), a task listed again loses the stamp,
        and a task still missing ``REPORTED_TASKS_GRACE_SECONDS`` after the stamp goes back
        to the queue. The grace is counted from the first heartbeat seen without the task,
        never from the task's start. The stamp is written only when a task drops out of, or
        returns to, the list.
        """
        if not kohakku_settings.RECONCILE_REPORTED_TASKS:
            return 0
        grace = timedelta(seconds=kohakku_settings.REPORTED_TASKS_GRACE_SECONDS)
        held_statuses = (TaskStatus.RUNNING, TaskStatus.DISPATCHED)
        running = Task.objects.filter(status__in=held_statuses)
        # One read for every held task of an online dispatcher, with what its latest
        # heartbeat said; writes only for tasks that drop out, return or run out of grace.
        rows = running.filter(
            dispatcher__in=Dispatcher.objects.online(now),
            dispatcher__tasks_reported_at__isnull=False,
        ).values_list(
            "pk",
            "guid",
            "status",
            # Held since: started (running), or accepted (dispatched; None until pushed).
            Coalesce("started_at", "pushed_at"),
            "unreported_since",
            "dispatcher_id",
            # The time of the list, not of the last check-in, which carries none.
            "dispatcher__tasks_reported_at",
            "dispatcher__reported_task_guids",
        )
        listed_again: list[int] = []
        # Keyed by the heartbeat that left them out.
        dropped: dict[datetime, list[int]] = defaultdict(list)
        missing_long: list[int] = []
        reported_by: dict[int, set[str]] = {}
        for pk, guid, status, held_since, since, dispatcher_id, beat, reported in rows:
            if dispatcher_id not in reported_by:
                reported_by[dispatcher_id] = {str(g) for g in reported or []}
            if str(guid) in reported_by[dispatcher_id]:
                if since is not None:
                    listed_again.append(pk)
            elif since is None:
                # A claim whose push is not confirmed yet is the lease's to take back.
                unconfirmed = status == TaskStatus.DISPATCHED and held_since is None
                if not unconfirmed and (held_since is None or held_since < beat):
                    dropped[beat].append(pk)
            elif since <= beat - grace:
                missing_long.append(pk)
        if listed_again:
            running.filter(pk__in=listed_again, unreported_since__isnull=False).update(
                unreported_since=None
            )
        for beat, pks in dropped.items():
            # Only while that heartbeat is the latest: a newer one may list the task again.
            running.filter(
                pk__in=pks, unreported_since__isnull=True, dispatcher__tasks_reported_at=beat
            ).update(unreported_since=beat)
        released = 0
        tasks = running.filter(pk__in=missing_long)
        for dispatcher_id, group in _by_dispatcher(tasks).items():
            with transaction.atomic():
                # Decided again with the dispatcher locked: a heartbeat that came in since
                # the read above, listing the task again, keeps it (the heartbeat waits).
                dispatcher = Dispatcher.objects.select_for_update().filter(pk=dispatcher_id).first()
                if dispatcher is None or dispatcher.tasks_reported_at is None:
                    continue
                beat = dispatcher.tasks_reported_at
                reported = {str(g) for g in dispatcher.reported_task_guids or []}
                reason = (
                    f"dispatcher {dispatcher.name} no longer reports this task "
                    f"(missing from its heartbeats for {grace.total_seconds():g} s)"
                )
                for task in group:
                    since = task.unreported_since
                    if since is None or since > beat - grace or str(task.guid) in reported:
                        continue  # listed again meanwhile
                    task.dispatcher = dispatcher
                    if release_task(
                        task,
                        kind="requeued",
                        reason=reason,
                        now=now,
                        from_statuses=held_statuses,
                        # Not if another pass cleared or moved the stamp meanwhile.
                        unchanged={"unreported_since": since},
                    ):
                        released += 1
        return released

    def time_out_overdue_tasks(self, now: datetime) -> list[tuple[Task, Dispatcher | None]]:
        """Mark overdue tasks ``timed_out`` (their dispatchers then get a cancel); return them."""
        done: list[tuple[Task, Dispatcher | None]] = []
        overdue = Task.objects.overdue(now).select_related("dispatcher")
        for task in overdue[: self.batch_size * 10]:
            if time_out_task(task, now):
                done.append((task, task.dispatcher))
        return done

    def finish_unconfirmed_cancellations(self, now: datetime) -> int:
        cutoff = now - timedelta(seconds=kohakku_settings.CANCEL_GRACE_SECONDS)
        finished = 0
        tasks = (
            Task.objects.cancel_requested()
            .filter(cancel_requested_at__lt=cutoff)
            .select_related("dispatcher")
        )
        reason = (
            f"cancelled: the dispatcher did not confirm within "
            f"{kohakku_settings.CANCEL_GRACE_SECONDS} s"
        )
        for task in tasks[: self.batch_size * 10]:
            if end_task(
                task, TaskStatus.CANCELLED, reason=reason, now=now, from_statuses=[task.status]
            ):
                finished += 1
        return finished

    # --- claim -------------------------------------------------------------------------

    def claim_and_assign(self, now: datetime) -> tuple[list[Claim], int]:
        """Claim up to ``batch_size`` queued tasks and assign each a dispatcher, or a reason.

        Returns the claims to push and how many tasks found no dispatcher.
        """
        claimable = Task.objects.claimable(now)
        # Most passes of a quiet controller have nothing to claim: they read no dispatcher,
        # which in a large fleet is most of what a pass costs.
        if not claimable.exists():
            return [], 0
        # Candidates are read without locks, and only what choosing takes; the dispatchers
        # chosen are locked and read again before they get anything (_confirm_under_lock).
        candidates = list(
            Dispatcher.objects.accepting_work(now).only(*_MATCHING_FIELDS).order_by("pk")
        )
        active = _active_counts()
        lease = timedelta(seconds=kohakku_settings.SCHEDULER_LEASE_SECONDS)
        full = _full_backends(candidates, active, now)
        if full:
            # Tasks that only full dispatchers could take are left unread: a batch of them
            # would otherwise hide, pass after pass, the tasks behind them that could run.
            claimable = claimable.exclude(backend__in=sorted(full))
        claimable = claimable.select_related("skill_version__skill").select_for_update(
            skip_locked=True, of=("self",)
        )
        with transaction.atomic():
            tasks = list(claimable[: self.batch_size])
            if not tasks:
                return [], 0
            matcher = _Matcher(candidates, active, now)
            assignments: list[tuple[Task, Dispatcher, str]] = []
            unmatched = 0
            read: list[int] = []
            waiting_for_room: list[tuple[str, dict[str, Any]]] = []
            for reads in range(1, _MAX_CLAIM_READS + 1):
                limit = self.batch_size - len(assignments)
                if reads > 1:
                    skipped = Q(pk__in=read)
                    for backend, labels in waiting_for_room:
                        skipped |= Q(backend=backend, labels=labels)
                    tasks = list(claimable.exclude(skipped)[:limit])
                assigned, unassigned, at_capacity = self._assign(tasks, matcher, now)
                assignments += assigned
                unmatched += unassigned
                if len(tasks) < limit or not unassigned or len(assignments) == self.batch_size:
                    break
                # A full read with tasks no dispatcher can take now (for example, all the
                # dispatchers with the labels they need are full, while others of their
                # backend have room): read on past them, so that they cannot hide, pass
                # after pass, the tasks behind them that could run. They stay locked and
                # queued; the next read skips every task read so far, and the rest of those
                # waiting for room by their (backend, labels).
                read += [task.pk for task in tasks]
                waiting_for_room += [g for g in at_capacity if g not in waiting_for_room]
            assignments = self._confirm_under_lock(assignments, now)
            assignments = self._mark_dispatched(assignments, now, now + lease)
            events = [
                record_event(
                    task,
                    "dispatched",
                    from_status="queued",
                    to_status="dispatched",
                    reason=f"assigned to {chosen.name}",
                    now=now,
                    dispatcher_guid=chosen.guid,
                    save=False,
                    data={"scheduler": self.name},
                )
                for task, chosen, _ in assignments
            ]
            if events:
                TaskEvent.objects.bulk_create(events)
        return [Claim(task, chosen, token, now) for task, chosen, token in assignments], unmatched

    def _assign(
        self, tasks: list[Task], matcher: _Matcher, now: datetime
    ) -> tuple[list[tuple[Task, Dispatcher, str]], int, list[tuple[str, dict[str, Any]]]]:
        """Choose a dispatcher for each of ``tasks`` (see :class:`_Matcher`).

        Returns the choices, how many tasks found none (each gets its reason and its next
        look), and the ``(backend, labels)`` of those left waiting for room.
        """
        recheck = timedelta(seconds=kohakku_settings.UNMATCHED_RECHECK_SECONDS)
        assignments: list[tuple[Task, Dispatcher, str]] = []
        unmatched = 0
        at_capacity: list[tuple[str, dict[str, Any]]] = []
        for task in tasks:
            chosen = matcher.choose(task)
            if chosen is not None:
                assignments.append((task, chosen, secrets.token_urlsafe(32)))
                continue
            unmatched += 1
            waiting = matcher.explain(task)
            reason = waiting.reason[:500]
            if waiting.busy_until is not None:
                # Only busy dispatchers could take it: none before the first is free.
                not_before = waiting.busy_until
            elif waiting.at_capacity:
                if (task.backend, task.labels) not in at_capacity:
                    at_capacity.append((task.backend, task.labels))
                if reason == task.status_reason:
                    continue  # it keeps its place; capacity frees up as tasks end
                not_before = now
            else:
                # No dispatcher could ever take it: look again later instead of re-reading
                # it on every pass.
                not_before = now + recheck
            if reason != task.status_reason or not_before != task.not_before:
                Task.objects.filter(pk=task.pk, status=TaskStatus.QUEUED).update(
                    status_reason=reason, not_before=not_before
                )
        return assignments, unmatched, at_capacity

    def _mark_dispatched(
        self, assignments: list[tuple[Task, Dispatcher, str]], now: datetime, lease_until: datetime
    ) -> list[tuple[Task, Dispatcher, str]]:
        """Move the chosen tasks queued -> dispatched in two statements; return the winners.

        The conditional UPDATE does the transition (and bumps ``attempt``) for every row
        still queued; the per-row values (dispatcher, token hash, deadline) follow in one
        bulk statement on rows this transaction now owns.
        """
        if not assignments:
            return []
        name = self.name[:200]
        ids = [task.pk for task, _, _ in assignments]
        updated = Task.objects.filter(pk__in=ids, status=TaskStatus.QUEUED).update(
            status=TaskStatus.DISPATCHED,
            attempt=F("attempt") + 1,
            claims=F("claims") + 1,
            dispatched_at=now,
            lease_expires_at=lease_until,
            claimed_by=name,
            pushed_at=None,
            unreported_since=None,
            updated_at=now,
        )
        if updated != len(ids):
            # A row changed between the read and the update (possible only where rows are
            # not locked, i.e. SQLite): keep the ones this update moved.
            won = set(
                Task.objects.filter(
                    pk__in=ids, status=TaskStatus.DISPATCHED, claimed_by=name, dispatched_at=now
                ).values_list("pk", flat=True)
            )
            assignments = [a for a in assignments if a[0].pk in won]
        for task, chosen, token in assignments:
            task.status = TaskStatus.DISPATCHED
            task.attempt += 1
            task.claims += 1
            task.dispatcher = chosen
            task.dispatched_at = now
            task.claimed_by = name
            task.deadline_at = now + timedelta(seconds=task.timeout_seconds)
            task.callback_token_hash = hash_callback_token(token)
            task.status_reason = f"dispatched to {chosen.name}"
        _set_assignment_columns(assignments, name, now)
        return assignments

    @staticmethod
    def _confirm_under_lock(
        assignments: list[tuple[Task, Dispatcher, str]], now: datetime
    ) -> list[tuple[Task, Dispatcher, str]]:
        """Lock the chosen dispatchers, read them again, and keep the choices that still hold.

        Choices are made on rows read without locks. Only the dispatchers chosen are locked
        (in pk order, after the tasks were skip-locked, so concurrent schedulers cannot
        deadlock), so a claim holds up no heartbeat of the rest of the fleet. Under the lock
        the claim sees every change committed since its read: an operator's (disabled,
        draining, capacity, deletion), a check-in's (backends, labels), and another
        scheduler's claims, counted again. A task whose choice no longer holds stays queued;
        the schedulers are woken to claim it again at once.
        """
        if not assignments:
            return []
        chosen = sorted({dispatcher.pk for _, dispatcher, _ in assignments})
        locked = {
            dispatcher.pk: dispatcher
            for dispatcher in Dispatcher.objects.defer(*_NOT_NEEDED_TO_MATCH)
            .select_for_update()
            .filter(pk__in=chosen)
            .order_by("pk")
            if dispatcher.status(now) == DispatcherStatus.ONLINE and not dispatcher.is_busy(now)
        }
        active = _active_counts(sorted(locked))
        kept = []
        for task, choice, token in assignments:
            dispatcher = locked.get(choice.pk)
            if dispatcher is None or not _can_take(dispatcher, task):
                continue
            if active.get(dispatcher.pk, 0) >= dispatcher.capacity:
                continue
            active[dispatcher.pk] = active.get(dispatcher.pk, 0) + 1
            kept.append((task, dispatcher, token))
        if len(kept) < len(assignments):
            notify_scheduler()
        return kept

    # --- push --------------------------------------------------------------------------

    def _push(
        self, dispatcher: Dispatcher, body: bytes, headers: dict, lease_ends: float
    ) -> CallOutcome:
        """POST one task while its claim's lease (ending at ``lease_ends`` on the monotonic
        clock) holds. A claim whose lease ran out may be taken back and pushed again by
        another scheduler, so the push must end, and the pass record it, before then: it is
        cut short a margin (a second, or a tenth of the lease) before the lease ends, and not
        started with less than another margin left."""
        margin = min(_LEASE_MARGIN_SECONDS, kohakku_settings.SCHEDULER_LEASE_SECONDS / 10)
        left = lease_ends - margin - time.monotonic()
        if left < margin:
            return CallOutcome("its claim's lease ran out before the push could start", sent=False)
        return self._post_signed(dispatcher, "/tasks/", body, headers, within=left)

    def _post_signed(
        self,
        dispatcher: Dispatcher,
        path: str,
        body: bytes,
        headers: dict,
        *,
        within: float | None = None,
    ) -> CallOutcome:
        """POST a signed body, taking at most ``push_deadline_seconds()`` (or ``within``, if
        shorter); the outcome says whether it was accepted (2xx), and if not why."""
        url = dispatcher.endpoint_url.rstrip("/") + path
        try:
            secret = current_signing_secret(dispatcher)
        except ValueError as exc:
            return CallOutcome(str(exc))
        signed = {
            "Content-Type": "application/json",
            **headers,
            **sign_request(secret, body),
        }
        trace = _ConnectionTrace()
        try:
            deadline = (
                push_deadline_seconds() if within is None else min(within, push_deadline_seconds())
            )
            with (
                call_deadline(deadline),
                self.http.stream(
                    "POST", url, content=body, headers=signed, extensions={"trace": trace}
                ) as response,
            ):
                head = _read_head(response)
                busy = _busy_seconds(response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not trace.connected:
                # No TCP connection was made, so no byte of the call left: unreachable.
                error = f"could not connect to {url}: {type(exc).__name__}: {exc}"[:400]
                return CallOutcome(error, _busy_floor_seconds(), sent=False, unreachable=True)
            # Connected, then the TLS handshake failed, stalled or was reset: a dispatcher
            # that is there but misconfigured until someone fixes it.
            return CallOutcome(
                f"TLS handshake with {url} failed: {type(exc).__name__}: {exc}"[:400]
            )
        except httpx.TimeoutException as exc:
            return CallOutcome(f"timed out ({type(exc).__name__}) calling {url}")
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            # InvalidURL, UnicodeError: a host no client can call ("[v1.x]", "a..b").
            return CallOutcome(f"could not reach {url}: {type(exc).__name__}: {exc}"[:400])
        except Exception as exc:
            # One dispatcher must not stop the pass for the others: a failed call, logged.
            logger.exception("calling %s failed", url)
            return CallOutcome(f"could not call {url}: {type(exc).__name__}"[:400])
        if 200 <= response.status_code < 300:
            return CallOutcome()
        excerpt = head[:200].decode(errors="replace")
        return CallOutcome(f"{url} answered HTTP {response.status_code}: {excerpt!r}", busy)

    def push_claims(self, claims: list[Claim]) -> tuple[int, int]:
        """Push every claim concurrently, then record the outcomes.

        Returns (accepted, failed); pushes a busy dispatcher refused (see
        :meth:`record_push_deferred`) count as neither.
        """
        if not claims:
            return 0, 0
        # A claim's lease ends SCHEDULER_LEASE_SECONDS after its claim time, as stored (the
        # pass's clock); here on the monotonic clock, as seen now.
        lease = timedelta(seconds=kohakku_settings.SCHEDULER_LEASE_SECONDS)
        wall, monotonic = timezone.now(), time.monotonic()
        dispatchers = _as_they_are_now(claims)
        jobs: list[tuple[Claim, Any]] = []
        for claim in claims:
            dispatcher = dispatchers.get(claim.dispatcher.pk)
            unfit = _unfit_to_push(claim, dispatcher)
            if unfit is not None:
                jobs.append((claim, CallOutcome(unfit, sent=False)))
                continue
            try:
                body = json.dumps(build_push_body(claim.task, claim.callback_token)).encode()
            except Exception as exc:  # e.g. storage cannot presign: counts as a failed push
                logger.exception("could not build the push for task %s", claim.task.guid)
                jobs.append((claim, CallOutcome(f"could not build the push: {exc}"[:400])))
                continue
            headers = {"Idempotency-Key": f"{claim.task.guid}:{claim.task.attempt}"}
            lease_ends = monotonic + (claim.claimed_at + lease - wall).total_seconds()
            future = self.pool.submit(self._push, dispatcher, body, headers, lease_ends)
            jobs.append((claim, future))
        outcomes = [
            (claim, pending if isinstance(pending, CallOutcome) else pending.result())
            for claim, pending in jobs
        ]
        # Accepted pushes first: a task a dispatcher took must never be pushed again because
        # recording another claim's outcome failed.
        ok = [claim for claim, outcome in outcomes if not outcome.error]
        self.record_pushed(ok)
        failed = 0
        for claim, outcome in outcomes:
            if not outcome.error:
                continue
            deferred = outcome.busy_seconds is not None or not outcome.sent
            failed += not deferred
            try:
                if deferred:
                    self.record_push_deferred(claim, outcome)
                else:
                    self.record_push_failure(claim, outcome.error)
            except Exception:
                # The claim stays dispatched; its lease expiring sends it back to the queue.
                logger.exception("could not record the push of task %s", claim.task.guid)
        return len(ok), failed

    def record_pushed(self, claims: list[Claim]) -> int:
        """Record accepted pushes; a claim is identified by (task, scheduler, claim time)."""
        if not claims:
            return 0
        now = timezone.now()
        recorded = 0
        by_claim_time: dict[datetime, list[int]] = {}
        for claim in claims:
            by_claim_time.setdefault(claim.claimed_at, []).append(claim.task.pk)
        for claimed_at, ids in by_claim_time.items():
            recorded += Task.objects.filter(
                pk__in=ids,
                claimed_by=self.name[:200],
                dispatched_at=claimed_at,
                status__in=list(ACTIVE_STATUSES),
                pushed_at__isnull=True,
            ).update(pushed_at=now, lease_expires_at=None)
        return recorded

    def record_push_failure(self, claim: Claim, error: str) -> str | None:
        task = claim.task
        backoff = push_backoff_seconds(task.attempt)
        logger.warning("push of task %s attempt %s failed: %s", task.guid, task.attempt, error)
        return release_task(
            task,
            kind="push_failed",
            reason=f"push to {claim.dispatcher.name} failed: {error}",
            from_statuses=(TaskStatus.DISPATCHED,),
            backoff_seconds=backoff,
        )

    def record_push_deferred(self, claim: Claim, outcome: CallOutcome) -> str | None:
        """A push refused for lack of room, or never sent: keep the attempt.

        A dispatcher that refused it gets no task before ``busy_until`` (now plus the wait it
        asked for; a later time already set stays), and so does one that could not be
        connected to (for the floor of that wait: a stopped or crashed dispatcher stays
        online until its heartbeats are missed). The task goes back to ``queued`` at once,
        for any dispatcher, with its attempt given back: being turned away by a full
        dispatcher, a dispatcher that is down, or a scheduler too far behind to push in
        time, is not a failure of the task, so it cannot use up its attempts.
        """
        task, dispatcher = claim.task, claim.dispatcher
        if outcome.busy_seconds is None:
            reason = f"not pushed to {dispatcher.name}: {outcome.error}"
        else:
            until = timezone.now() + timedelta(seconds=outcome.busy_seconds)
            Dispatcher.objects.filter(pk=dispatcher.pk).filter(
                Q(busy_until__isnull=True) | Q(busy_until__lt=until)
            ).update(busy_until=until)
            state = "could not be reached; no push to it" if outcome.unreachable else "is busy"
            reason = (
                f"{dispatcher.name} {state} until {with_offset(until).isoformat()}: {outcome.error}"
            )
        logger.info("task %s goes back to the queue: %s", task.guid, reason)
        return release_task(
            task,
            kind="push_deferred",
            reason=reason,
            from_statuses=(TaskStatus.DISPATCHED,),
            count_attempt=False,
        )

    # --- cancel --------------------------------------------------------------------------

    def send_cancel_requests(self, now: datetime | None = None) -> int:
        """Ask dispatchers to stop tasks with a pending cancellation and timed-out tasks.

        A timed-out task gets the reason ``timed out`` however its timeout was noticed (by a
        pass, or by a callback that came after the deadline). An accepted request is
        recorded (``cancel_sent_at`` and a ``cancel_sent`` event), so it is sent once; a
        failed one is tried again on later passes, for a timed-out task during
        ``CANCEL_GRACE_SECONDS`` after it ended. A dispatcher whose cancel request failed is
        sent none, and its tasks are not read, until a backoff has passed
        (``PUSH_BACKOFF_BASE_SECONDS`` doubling, at most a quarter of the cancel grace so it
        is tried a few times within it): one that does not answer holds up a pass, and the
        other dispatchers, once per backoff rather than on every pass.
        """
        now = now or timezone.now()
        requested = Task.objects.cancel_requested().filter(cancel_sent_at__isnull=True)
        timed_out = Task.objects.timed_out_cancel_unsent(
            now - timedelta(seconds=kohakku_settings.CANCEL_GRACE_SECONDS)
        )
        longest = timedelta(seconds=max(1.0, kohakku_settings.CANCEL_GRACE_SECONDS / 4))
        # A backoff long over is forgotten: a failure after a quiet spell counts from one.
        self._cancel_backoff = {
            pk: entry for pk, entry in self._cancel_backoff.items() if now - entry[1] <= longest
        }
        # Not read at all for a dispatcher in backoff: its tasks would fill the batch and
        # hold back every other dispatcher's.
        paused = [pk for pk, (_, next_try) in self._cancel_backoff.items() if next_try > now]
        requested = requested.exclude(dispatcher_id__in=paused)
        timed_out = timed_out.exclude(dispatcher_id__in=paused)
        requested = requested.select_related("dispatcher")[: self.batch_size]
        timed_out = timed_out.select_related("dispatcher")[: self.batch_size]
        jobs = []
        for task, reason in [
            *[(t, "timed out") for t in timed_out],
            *[(t, "cancellation requested") for t in requested],
        ]:
            if task.dispatcher is None:
                continue
            body = json.dumps(
                {"task_guid": str(task.guid), "attempt": task.attempt, "reason": reason}
            ).encode()
            path = f"/tasks/{task.guid}/cancel/"
            future = self.pool.submit(self._post_signed, task.dispatcher, path, body, {})
            jobs.append((task, reason, future))
        sent = 0
        failed: set[int] = set()
        for task, reason, future in jobs:
            error = future.result().error
            if error:
                logger.warning("cancel request for task %s failed: %s", task.guid, error)
                failed.add(task.dispatcher_id)
                continue
            self._cancel_backoff.pop(task.dispatcher_id, None)
            sent += 1
            with transaction.atomic():
                sent_at = timezone.now()
                # Not for a task that ended otherwise meanwhile (taken back as cancelled); a
                # task that started meanwhile had its cancel sent all the same.
                ended_by_timeout = task.status == TaskStatus.TIMED_OUT
                statuses = [TaskStatus.TIMED_OUT] if ended_by_timeout else list(ACTIVE_STATUSES)
                if Task.objects.filter(
                    pk=task.pk,
                    attempt=task.attempt,
                    status__in=statuses,
                    cancel_sent_at__isnull=True,
                ).update(cancel_sent_at=sent_at):
                    record_event(
                        task,
                        "cancel_sent",
                        reason=f"cancel request accepted ({reason})",
                        now=sent_at,
                    )
        for dispatcher_id in failed:
            failures = self._cancel_backoff.get(dispatcher_id, (0, now))[0] + 1
            wait = min(timedelta(seconds=push_backoff_seconds(failures)), longest)
            self._cancel_backoff[dispatcher_id] = (failures, now + wait)
        return sent

    # --- loop --------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, *, poll_seconds: float | None = None) -> None:
        """Run passes until ``stop`` is set, waking early on new work."""
        poll = poll_seconds if poll_seconds is not None else kohakku_settings.SCHEDULER_POLL_SECONDS
        waiter = make_wakeup_waiter()
        try:
            self._reconcile_with_retry(stop)
            failures = 0
            while not stop.is_set():
                try:
                    close_old_connections()
                    report = self.run_pass()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    self._after_failure(exc, "scheduler pass")
                    stop.wait(min(30.0, 0.5 * 2**failures))
                    continue
                if report.claimed and report.claimed + report.unmatched >= self.batch_size:
                    continue  # more work is waiting (a batch of waiting tasks alone is not)
                waiter.wait(poll, stop)
        finally:
            waiter.close()

    def _reconcile_with_retry(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                released = self.reconcile_on_startup()
                if released:
                    logger.info("start-up: took back %s unconfirmed claims", released)
                return
            except Exception as exc:
                self._after_failure(exc, "start-up reconciliation")
                stop.wait(2.0)

    @staticmethod
    def _after_failure(exc: Exception, what: str) -> None:
        """Log a failed step; after a database error (the server restarted or is unreachable,
        or the connection was closed under us) drop the connection so the retry opens one.
        Any other error (a bug) is logged and retried too rather than stop scheduling.
        """
        logger.exception("%s failed; retrying", what)
        if isinstance(exc, DatabaseError | InterfaceError):
            connection.close()


# --- wake-ups ---------------------------------------------------------------------------


class PollWaiter:
    """Waits for the poll interval (or until stopped)."""

    def wait(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(timeout)

    def close(self) -> None:
        pass


class PostgresWaiter(PollWaiter):
    """LISTENs on a dedicated connection; a NOTIFY from ``create_task`` ends the wait."""

    def __init__(self) -> None:
        self.conn: Any = None

    def _connect(self) -> Any:
        params = connection.get_connection_params()
        conn = connection.get_new_connection(params)
        conn.autocommit = True
        conn.execute(f"LISTEN {WAKEUP_CHANNEL}")
        return conn

    def wait(self, timeout: float, stop: threading.Event) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self._connect()
            deadline = time.monotonic() + timeout
            # Short slices so that a stop request is noticed quickly.
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                for _ in self.conn.notifies(timeout=min(remaining, 1.0), stop_after=1):
                    return
        except Exception:
            logger.warning("LISTEN connection failed; polling instead", exc_info=True)
            self.close()
            stop.wait(min(timeout, 1.0))

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class RedisWaiter(PollWaiter):
    """Subscribes to the wake-up channel of the controller's django-redis cache."""

    def __init__(self, channel: str) -> None:
        from django_redis import get_redis_connection

        self.channel = channel
        self.pubsub = get_redis_connection(kohakku_settings.CACHE_ALIAS).pubsub(
            ignore_subscribe_messages=True
        )
        self.pubsub.subscribe(channel)

    def wait(self, timeout: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + timeout
        try:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if self.pubsub.get_message(timeout=min(remaining, 1.0)):
                    return
        except Exception:
            logger.warning("Redis wake-up channel failed; polling", exc_info=True)
            stop.wait(min(timeout, 1.0))

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # closing a broken connection
            logger.debug("closing pubsub failed", exc_info=True)


def make_wakeup_waiter() -> PollWaiter:
    """The wake-up channel matching ``SCHEDULER_WAKEUP`` and the configured services."""
    mode = kohakku_settings.SCHEDULER_WAKEUP
    if mode in ("auto", "postgres") and connection.vendor == "postgresql":
        return PostgresWaiter()
    if mode in ("auto", "redis"):
        channel = redis_wakeup_channel()
        if channel is not None:
            try:
                return RedisWaiter(channel)
            except Exception:
                logger.warning("Redis unavailable for wake-ups; polling", exc_info=True)
    return PollWaiter()
