"""Task services: creation, callbacks, cancellation and every other state change.

Each state change is a conditional ``UPDATE … WHERE status IN (…) AND attempt = …`` whose
row count is checked; an event row is written in the same transaction, and signals go out
after commit. Views, the scheduler, management commands and host projects all call these.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed, NotFound, ValidationError

from .. import signals
from ..conf import kohakku_settings
from ..db import JoinedLookup, insert_row, update_and_log, update_rows
from ..dispatchers.labels import BACKEND_NAME_RE, BACKEND_NAME_RULE, validate_labels
from ..dispatchers.secrets import valid_signing_secrets
from ..exceptions import NON_FIELD_ERRORS, Conflict
from ..fields import with_offset
from ..parsers import (
    as_sentence,
    find_unstorable_text,
    json_error,
    load_json,
    nested_deeper_than,
)
from ..signing import SignatureError, verify_signature
from ..skills.services import resolve_version
from ..storage import get_cache, get_storage
from .deadlines import push_deadline_seconds
from .models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Task,
    TaskEvent,
    TaskOrigin,
    TaskStatus,
)

logger = logging.getLogger(__name__)

#: PostgreSQL NOTIFY channel and Redis pub/sub channel suffix that wake schedulers.
WAKEUP_CHANNEL = "kohakku_tasks"

#: Lowest and highest task priority.
PRIORITY_RANGE = (-1000, 1000)
CALLBACK_STATUSES = (
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)


def json_document_problem(value: Any, field: str, max_bytes: int) -> str | None:
    """Why the JSON document ``value`` of ``field`` cannot be stored, or ``None``.

    Too large (over ``max_bytes`` as compact UTF-8 JSON), nested deeper than
    ``MAX_JSON_DEPTH`` (as documents from the network may be),
    holding a number JSON cannot write (NaN, infinity, an integer of more digits than
    Python converts: possible from host code or a workflow's template), or holding a string
    no text column can hold (a NUL character, half of a surrogate pair), named by its path.
    """
    depth = kohakku_settings.MAX_JSON_DEPTH
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        return f"Nested more than {depth} levels deep."
    except ValueError:
        return (
            "Holds a number JSON cannot hold: NaN, an infinite number, or an integer with "
            "too many digits."
        )
    # Only a document with more brackets than the limit can be nested past it.
    if text.count("[") + text.count("{") > depth and nested_deeper_than(value, depth):
        return f"Nested more than {depth} levels deep."
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # half of a surrogate pair
        size = len(text.encode("utf-8", "surrogatepass"))
        suspect = True
    else:
        suspect = "\\u0000" in text  # how JSON writes a NUL character
    problem = find_unstorable_text(value, field) if suspect else None
    if problem:
        return as_sentence(problem)
    if size > max_bytes:
        return f"Larger than {max_bytes} bytes of JSON."
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record_event(
    task: Task,
    kind: str,
    *,
    from_status: str = "",
    to_status: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
    attempt: int | None = None,
    dispatcher_guid: Any = None,
    save: bool = True,
) -> TaskEvent:
    """Append one entry to a task's history (``save=False`` builds it for bulk_create)."""
    event = TaskEvent(
        task=task,
        created_at=now or timezone.now(),
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        attempt=task.attempt if attempt is None else attempt,
        dispatcher_guid=dispatcher_guid,
        reason=reason[:2000],
        data=data or {},
    )
    if save:
        insert_row(event)  # the hot paths' one statement (TaskEvent has no save logic to skip)
    return event


# --- wake-ups -------------------------------------------------------------------------


def notify_scheduler() -> None:
    """Wake waiting schedulers once the current transaction commits.

    On PostgreSQL this is a ``NOTIFY`` issued inside the transaction (delivered at commit
    by the database itself). With a django-redis cache it is a pub/sub message published
    after commit. Otherwise schedulers find the work on their next poll.
    """
    channel = _postgres_wakeup_channel()
    if channel is not None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [channel])
        return
    if kohakku_settings.SCHEDULER_WAKEUP in ("auto", "redis"):
        channel = redis_wakeup_channel()
        if channel is not None:
            transaction.on_commit(lambda: _publish_redis_wakeup(channel))


def _postgres_wakeup_channel() -> str | None:
    """The ``LISTEN`` channel when schedulers are woken by PostgreSQL ``NOTIFY``, else None."""
    mode = kohakku_settings.SCHEDULER_WAKEUP
    if connection.vendor == "postgresql" and mode in ("auto", "postgres"):
        return WAKEUP_CHANNEL
    return None


def redis_wakeup_channel() -> str | None:
    """The pub/sub channel name when the controller's cache is django-redis, else None."""
    cache = get_cache()
    if not type(cache).__module__.startswith("django_redis"):
        return None
    return cache.make_key(WAKEUP_CHANNEL)


def _publish_redis_wakeup(channel: str) -> None:
    try:
        from django_redis import get_redis_connection

        get_redis_connection(kohakku_settings.CACHE_ALIAS).publish(channel, b"1")
    except Exception:  # a lost wake-up only delays work until the next poll
        logger.warning("could not publish the scheduler wake-up", exc_info=True)


# --- creation -------------------------------------------------------------------------


def _validate_creation(
    *,
    skill: Any,
    version: Any,
    input: Any,
    backend: Any,
    labels: Any,
    priority: Any,
    timeout_seconds: Any,
    max_attempts: Any,
    origin: Any,
    origin_ref: Any,
    idempotency_key: Any,
) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    settings = kohakku_settings
    if not isinstance(skill, str) or not skill.strip():
        errors["skill"] = ["A skill slug is required."]
    if version is not None and (not _is_int(version) or version < 1):
        errors["version"] = ["Must be a positive integer or null."]
    if input is None:
        input = {}
    if not isinstance(input, dict):
        errors["input"] = ["Must be a JSON object."]
    elif problem := json_document_problem(input, "input", settings.TASK_INPUT_MAX_BYTES):
        errors["input"] = [problem]
    if timeout_seconds is None:
        timeout_seconds = settings.TASK_DEFAULT_TIMEOUT_SECONDS
    errors.update(
        placement_errors(
            backend=backend, labels=labels, priority=priority, timeout_seconds=timeout_seconds
        )
    )
    if labels is None:
        labels = {}
    if max_attempts is None:
        max_attempts = settings.TASK_DEFAULT_MAX_ATTEMPTS
    if not _is_int(max_attempts) or not 1 <= max_attempts <= settings.TASK_MAX_ATTEMPTS_LIMIT:
        errors["max_attempts"] = [
            f"Must be an integer from 1 to {settings.TASK_MAX_ATTEMPTS_LIMIT}."
        ]
    if origin not in TaskOrigin.values:
        errors["origin"] = [f"Must be one of {', '.join(TaskOrigin.values)}."]
    if not isinstance(origin_ref, str) or len(origin_ref) > 255:
        errors["origin_ref"] = ["Must be a string of at most 255 characters."]
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255
    ):
        errors["idempotency_key"] = ["Must be 1 to 255 characters."]
    if errors:
        raise ValidationError(errors)
    return {
        "skill": skill.strip(),
        "version": version,
        "input": input,
        "backend": backend,
        "labels": labels,
        "priority": priority,
        "timeout_seconds": timeout_seconds,
        "max_attempts": max_attempts,
    }


def placement_errors(
    *, backend: Any, labels: Any, priority: Any, timeout_seconds: Any
) -> dict[str, list[str]]:
    """What :func:`create_task` would refuse in these options, by field; empty if nothing.

    Workflows check their task settings with it when they are saved, so a saved workflow
    never queues a task that is bound to be refused. ``labels`` may be ``None`` (none).
    """
    errors: dict[str, list[str]] = {}
    settings = kohakku_settings
    if not isinstance(backend, str) or not BACKEND_NAME_RE.fullmatch(backend):
        # The dispatchers' rule: a backend no dispatcher can list would wait forever.
        errors["backend"] = [f"Must be a backend name: {BACKEND_NAME_RULE}."]
    try:
        validate_labels({} if labels is None else labels, max_labels=settings.TASK_MAX_LABELS)
    except ValidationError as exc:
        errors["labels"] = exc.detail
    if not _is_int(priority) or not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        lowest, highest = PRIORITY_RANGE
        errors["priority"] = [f"Must be an integer from {lowest} to {highest}."]
    if (
        not _is_int(timeout_seconds)
        or not 1 <= timeout_seconds <= settings.TASK_MAX_TIMEOUT_SECONDS
    ):
        errors["timeout_seconds"] = [
            f"Must be an integer from 1 to {settings.TASK_MAX_TIMEOUT_SECONDS}."
        ]
    return errors


def _fingerprint(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _replay(existing: Task, fingerprint: str) -> Task:
    if existing.request_fingerprint != fingerprint:
        raise Conflict({"idempotency_key": ["This key was already used for a different request."]})
    existing.idempotent_replay = True
    return existing


def create_task(
    *,
    skill: str,
    version: int | None = None,
    input: dict | None = None,
    backend: str = "local",
    labels: dict | None = None,
    priority: int = 0,
    timeout_seconds: int | None = None,
    max_attempts: int | None = None,
    origin: str = "api",
    origin_ref: str = "",
    idempotency_key: str | None = None,
    idempotency_scope: str = "",
    created_by=None,
) -> Task:
    """Queue a task for ``skill`` (its ``version``, or the latest non-yanked one).

    Raises DRF ``ValidationError`` naming the field at fault. With an ``idempotency_key``
    (unique per ``origin`` and ``idempotency_scope``, the caller: two callers never see
    each other's keys) a repeated identical request returns the first task (with
    ``task.idempotent_replay`` set) and a different request under the same key raises
    ``Conflict``. Schedulers are woken after commit.
    """
    request = _validate_creation(
        skill=skill,
        version=version,
        input=input,
        backend=backend,
        labels=labels,
        priority=priority,
        timeout_seconds=timeout_seconds,
        max_attempts=max_attempts,
        origin=origin,
        origin_ref=origin_ref,
        idempotency_key=idempotency_key,
    )
    fingerprint = _fingerprint(request)
    existing_qs = Task.objects.select_related("skill_version__skill", "dispatcher")
    if idempotency_key is not None:
        existing = existing_qs.filter(
            origin=origin, idempotency_scope=idempotency_scope, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            return _replay(existing, fingerprint)
    skill_version = resolve_version(request["skill"], request["version"])
    now = timezone.now()
    try:
        # A savepoint only where a lost idempotency race must be recovered from; without a
        # key an error ends the caller's transaction anyway (two round trips saved).
        with transaction.atomic(savepoint=idempotency_key is not None):
            task = Task.objects.create(
                skill_version=skill_version,
                input=request["input"],
                backend=request["backend"],
                labels=request["labels"],
                priority=request["priority"],
                timeout_seconds=request["timeout_seconds"],
                max_attempts=request["max_attempts"],
                origin=origin,
                origin_ref=origin_ref,
                idempotency_key=idempotency_key,
                idempotency_scope=idempotency_scope if idempotency_key is not None else "",
                request_fingerprint=fingerprint,
                created_by=created_by
                if created_by is not None and created_by.is_authenticated
                else None,
                created_at=now,
                queued_at=now,
                not_before=now,
                updated_at=now,
                status_reason="waiting for a dispatcher",
            )
            record_event(
                task,
                "created",
                to_status=TaskStatus.QUEUED,
                reason=f"created from {origin}" + (f" ({origin_ref})" if origin_ref else ""),
                data={"skill": skill_version.skill.slug, "version": skill_version.version_number},
                now=now,
            )
            notify_scheduler()
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = existing_qs.filter(
            origin=origin, idempotency_scope=idempotency_scope, idempotency_key=idempotency_key
        ).first()
        if existing is None:
            raise
        return _replay(existing, fingerprint)
    task.idempotent_replay = False
    return task


# --- releasing a task back to the queue --------------------------------------------


def push_backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter for the retry after failed attempt ``attempt``."""
    base = kohakku_settings.PUSH_BACKOFF_BASE_SECONDS
    ceiling = min(kohakku_settings.PUSH_BACKOFF_MAX_SECONDS, base * 2 ** max(attempt - 1, 0))
    # "Equal jitter": at least half the delay, so retries never bunch up at zero.
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def release_task(
    task: Task,
    *,
    kind: str,
    reason: str,
    from_statuses: frozenset[str] | tuple[str, ...] = ACTIVE_STATUSES,
    backoff_seconds: float = 0.0,
    now: datetime | None = None,
    count_attempt: bool = True,
    unchanged: Mapping[str, Any] | None = None,
) -> str | None:
    """Take a task away from its dispatcher (or from a scheduler that claimed it).

    It goes back to ``queued`` (after ``backoff_seconds``), or ends ``failed`` once its
    attempts are used up, or ``cancelled`` if a cancellation was pending. With
    ``count_attempt=False`` (the dispatcher never took the task) the attempt is given back:
    the task is queued again with its previous attempt number and cannot fail for it. The
    update only applies if the task is still in ``from_statuses`` under the same claim (the
    same attempt and dispatch time: an attempt number given back is used again by the next
    claim); returns the new status, or ``None`` when something else changed the task first.
    A cancellation requested after ``task`` was read still wins: the update also matches
    the cancellation the decision was made on, and is decided again if that changed.
    ``unchanged`` names more columns that must still hold the values the caller decided on.
    """
    now = now or timezone.now()
    dispatcher_guid = task.dispatcher.guid if task.dispatcher_id and task.dispatcher else None
    for _ in range(2):
        to_status, updates, data = _release_changes(
            task, reason, backoff_seconds, count_attempt, now
        )
        with transaction.atomic():
            still_there = {
                "pk": task.pk,
                "status": tuple(from_statuses),
                "attempt": task.attempt,
                "dispatched_at": task.dispatched_at,
                "cancel_requested_at": task.cancel_requested_at,
                **(unchanged or {}),
            }
            if update_rows(Task, still_there, {"status": to_status, **updates}):
                record_event(
                    task,
                    kind,
                    from_status=task.status,
                    to_status=to_status,
                    reason=reason,
                    data=data,
                    now=now,
                    dispatcher_guid=dispatcher_guid,
                )
                if to_status == TaskStatus.QUEUED:
                    notify_scheduler()
                else:
                    _send_after_commit(signals.task_finished, task.pk)
                return to_status
        cancel_requested_at = (
            Task.objects.filter(
                pk=task.pk,
                status__in=list(from_statuses),
                attempt=task.attempt,
                dispatched_at=task.dispatched_at,
            )
            .exclude(cancel_requested_at=task.cancel_requested_at)
            .values_list("cancel_requested_at", flat=True)
            .first()
        )
        if cancel_requested_at is None:
            return None  # the claim itself changed (or ended): nothing to release
        task.cancel_requested_at = cancel_requested_at  # cancelled meanwhile: decide again
    return None


def _release_changes(
    task: Task, reason: str, backoff_seconds: float, count_attempt: bool, now: datetime
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """What :func:`release_task` does to ``task``: its new status, the columns, event data."""
    updates: dict[str, Any] = {
        "updated_at": now,
        "dispatcher": None,
        "callback_token_hash": "",
        "lease_expires_at": None,
        "deadline_at": None,
        "claimed_by": "",
    }
    if task.cancel_requested_at is not None:
        updates.update(finished_at=now, status_reason=f"cancelled: {reason}")
        return TaskStatus.CANCELLED, updates, {}
    if count_attempt and task.attempt >= task.max_attempts:
        message = f"{reason}; gave up after {task.attempt} of {task.max_attempts} attempts"
        updates.update(finished_at=now, status_reason=message[:500], error_message=message)
        return TaskStatus.FAILED, updates, {}
    not_before = now + timedelta(seconds=backoff_seconds)
    updates.update(
        not_before=not_before,
        queued_at=now,
        pushed_at=None,
        dispatched_at=None,
        started_at=None,
        cancel_sent_at=None,
        status_reason=(
            f"{reason}; retrying" + (f" after {backoff_seconds:.1f} s" if backoff_seconds else "")
        )[:500],
    )
    if not count_attempt:
        updates["attempt"] = task.attempt - 1
    data = {
        "backoff_seconds": round(backoff_seconds, 3),
        "not_before": with_offset(not_before).isoformat(),
    }
    return TaskStatus.QUEUED, updates, data


def _send_after_commit(signal: Any, task_pk: int) -> None:
    """Send ``signal`` (``task_started`` or ``task_finished``) once the transaction commits."""
    if not signal.has_listeners(Task):
        return  # nobody listens: spare the hot path the query

    def send() -> None:
        task = Task.objects.select_related("skill_version__skill", "dispatcher").get(pk=task_pk)
        signal.send(sender=Task, task=task)

    transaction.on_commit(send)


# --- cancellation -----------------------------------------------------------------------


def cancel_task(task: Task, *, reason: str = "cancelled on request", now=None) -> Task:
    """Cancel a task: at once while queued; otherwise ask its dispatcher, via the scheduler.

    A dispatched or running task keeps its status until the dispatcher confirms with a
    ``cancelled`` callback, or ``CANCEL_GRACE_SECONDS`` pass. Raises ``Conflict`` when the
    task has already ended. Asking twice is harmless.
    """
    for _ in range(3):
        now = now or timezone.now()
        if task.status in FINAL_STATUSES:
            raise Conflict(f"The task has already ended as {task.status}.")
        with transaction.atomic():
            if task.status == TaskStatus.QUEUED:
                updated = end_task(
                    task,
                    TaskStatus.CANCELLED,
                    reason=reason,
                    now=now,
                    from_statuses=[TaskStatus.QUEUED],
                    cancel_requested_at=now,
                )
            else:
                if task.cancel_requested_at is not None:
                    return task
                updated = Task.objects.filter(
                    pk=task.pk,
                    status=task.status,
                    attempt=task.attempt,
                    cancel_requested_at__isnull=True,
                ).update(
                    cancel_requested_at=now,
                    updated_at=now,
                    status_reason="cancellation requested; waiting for the dispatcher",
                )
                if updated:
                    record_event(task, "cancel_requested", reason=reason, now=now)
                    notify_scheduler()
        task = Task.objects.select_related("skill_version__skill", "dispatcher").get(pk=task.pk)
        if updated:
            return task
    raise Conflict("The task changed while it was being cancelled; try again.")


# --- callbacks ---------------------------------------------------------------------------


@dataclass
class CallbackOutcome:
    task: Task
    changed: bool


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed("Authorization: Bearer <callback token> is required.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Authorization must be 'Bearer <callback token>'.")
    return token.strip()


def authenticate_task_token(guid: Any, authorization: str | None) -> Task:
    """The task whose current callback token is presented, or 401 (404 for an unknown task)."""
    token = _bearer_token(authorization)
    try:
        task = _task_with_dispatcher().get(guid)
    except (ValueError, DjangoValidationError):
        task = None
    if task is None:
        raise NotFound("No such task.")
    if not task.callback_token_matches(token):
        raise AuthenticationFailed("The callback token is not valid for this task.")
    return task


@functools.cache
def _task_with_dispatcher() -> JoinedLookup:
    # Every callback reads its task and dispatcher in one prepared statement, leaving out the
    # JSON documents it never uses (decoding them was a tenth of a callback's CPU).
    return JoinedLookup(
        Task,
        "guid",
        related=["dispatcher"],
        defer=[
            "input",
            "labels",
            "result_metadata",
            "dispatcher__backends",
            "dispatcher__labels",
            "dispatcher__metadata",
            "dispatcher__reported_task_guids",
        ],
    )


def _validate_callback_payload(task: Task, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ValidationError({NON_FIELD_ERRORS: ["The body must be a JSON object."]})
    allowed = {"status", "exit_code", "result_key", "result_metadata", "error_message"}
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(payload) - allowed)
    status = payload.get("status")
    if status not in CALLBACK_STATUSES:
        errors["status"] = [f"Must be one of {', '.join(CALLBACK_STATUSES)}."]
    exit_code = payload.get("exit_code")
    if exit_code is not None and (not _is_int(exit_code) or not -(2**31) <= exit_code < 2**31):
        errors["exit_code"] = ["Must be a 32-bit integer or null."]
    result_key = payload.get("result_key")
    if result_key is None:
        result_key = ""
    if not isinstance(result_key, str):
        errors["result_key"] = ["Must be a string."]
    elif result_key and not result_key_is_valid(task, result_key):
        errors["result_key"] = [f"Must be a key under {task.result_prefix!r}."]
    metadata = payload.get("result_metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        errors["result_metadata"] = ["Must be a JSON object."]
    elif problem := json_document_problem(
        metadata, "result_metadata", kohakku_settings.RESULT_METADATA_MAX_BYTES
    ):
        errors["result_metadata"] = [problem]
    error_message = payload.get("error_message")
    if error_message is None:
        error_message = ""
    if not isinstance(error_message, str):
        errors["error_message"] = ["Must be a string."]
    elif len(error_message) > kohakku_settings.ERROR_MESSAGE_MAX_CHARS:
        errors["error_message"] = [
            f"Longer than {kohakku_settings.ERROR_MESSAGE_MAX_CHARS} characters."
        ]
    for name in unknown[:20]:  # named one by one, as every other body of the API does
        errors[str(name)[:100]] = ["Unknown field."]
    if errors:
        raise ValidationError(errors)
    return {
        "status": status,
        "exit_code": exit_code,
        "result_key": result_key,
        "result_metadata": metadata,
        "error_message": error_message,
    }


#: Limits of a result key: the bytes of one part (a file name) and of the whole key.
_MAX_NAME_BYTES, _MAX_KEY_BYTES = 255, 1024
#: What a filesystem storage raises when a result's name and a folder of results collide.
_NAME_CLASHES = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY}


def store_result(task: Task, key: str, content: Any) -> str:
    """Store ``content`` (a ``File``) at ``key`` for ``task``; return the stored name.

    Only while the attempt that was authenticated is still active: the task row is locked
    around the write, so a final callback waits for it or has already ended the task (then
    409, nothing written), and two uploads of one name take turns, the later replacing the
    earlier instead of being stored under another name.
    """
    storage = get_storage()
    with transaction.atomic():
        active = (
            Task.objects.select_for_update()
            .filter(pk=task.pk, attempt=task.attempt, status__in=list(ACTIVE_STATUSES))
            .order_by()
            .values_list("pk", flat=True)
            .first()
        )
        if active is None:
            current = Task.objects.filter(pk=task.pk).values_list("status", flat=True).first()
            raise Conflict(
                f"The task is {current or 'gone'}; results are taken while its attempt runs."
            )
        try:
            if storage.exists(key):
                storage.delete(key)  # a retried upload replaces the earlier one
            return storage.save(key, content)
        except OSError as exc:
            clash = isinstance(exc, FileExistsError | NotADirectoryError | IsADirectoryError)
            if not clash and exc.errno not in _NAME_CLASHES:
                raise
            # On a filesystem, a name and a folder of other results cannot share a path.
            name = key[len(task.result_prefix) :]
            raise Conflict(
                {
                    "name": [
                        f"{name!r} clashes with another result: a file and a folder of "
                        "results cannot share a name."
                    ]
                }
            ) from None


def result_key_is_valid(task: Task, key: str) -> bool:
    """Whether ``key`` names a file under the task's result prefix that any storage can hold:
    relative parts, none empty, ``.``, ``..`` or over 255 bytes (a file name's limit on
    common filesystems), no backslash or control character, at most 512 characters and 1024
    bytes (an S3 key's limit) in all."""
    prefix = task.result_prefix
    if not key.startswith(prefix) or len(key) > 512 or len(key) == len(prefix):
        return False
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        return False
    rest = key[len(prefix) :]
    parts = rest.split("/")
    return (
        "\\" not in rest
        and all(part not in ("", ".", "..") for part in parts)
        and all(len(part.encode("utf-8", "surrogatepass")) <= _MAX_NAME_BYTES for part in parts)
        and not any(ord(ch) < 32 for ch in rest)
    )


def apply_callback(
    guid: Any,
    *,
    body: bytes,
    authorization: str | None,
    timestamp: str | None,
    signature: str | None,
    now: datetime | None = None,
) -> CallbackOutcome:
    """Authenticate and apply a dispatcher callback (see docs/dispatcher-contract.md).

    Order of checks: callback token (401), signature and timestamp window (401), body
    (400), transition (200 changed / 200 unchanged for a repeat / 409 for a conflict).
    """
    now = now or timezone.now()
    task = authenticate_task_token(guid, authorization)
    if task.dispatcher is None:
        raise AuthenticationFailed("The task is not assigned to a dispatcher.")
    secrets = valid_signing_secrets(task.dispatcher, now)
    if not secrets:
        raise AuthenticationFailed(
            "Bad signature (unreadable_secret): the controller cannot read this dispatcher's "
            "signing secret (its encryption key changed); the dispatcher must check in with "
            '"rotate_secret": true.'
        )
    try:
        verify_signature(
            secrets,
            body,
            timestamp,
            signature,
            tolerance=kohakku_settings.SIGNATURE_TOLERANCE_SECONDS,
            now=now.timestamp(),
        )
    except SignatureError as exc:
        raise AuthenticationFailed(f"Bad signature ({exc.reason}): {exc}") from None
    try:
        payload = load_json(body) if body else None
    except ValueError as exc:
        raise json_error(exc) from None
    data = _validate_callback_payload(task, payload)
    overdue = task.deadline_at is not None and now > task.deadline_at
    if overdue and task.status not in FINAL_STATUSES and time_out_task(task, now):
        # The deadline passed before the scheduler's next pass noticed: the task ends
        # timed_out here, as it would there (the scheduler then asks the dispatcher to stop
        # it), and the late callback is refused. A task that had already ended (or that
        # something ended meanwhile) is answered below like any repeat or conflict.
        raise Conflict("The task already ended as timed_out.")
    if data["status"] == TaskStatus.RUNNING:
        return _apply_running(task, now)
    return _apply_final(task, data, now)


def end_task(
    task: Task,
    status: str,
    *,
    reason: str,
    now: datetime,
    from_statuses: Any = ACTIVE_STATUSES,
    match: dict[str, Any] | None = None,
    event_data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move ``task`` to the final ``status`` if it is still in ``from_statuses`` at its attempt.

    One conditional update (``match`` adds conditions, ``fields`` more columns to set), then,
    only if it changed the row: an event, a scheduler wake-up (capacity may be free) and the
    ``task_finished`` signal after commit. Returns whether this call ended the task.
    """
    where = {
        "pk": task.pk,
        "status": tuple(from_statuses),
        "attempt": task.attempt,
        **(match or {}),
    }
    changes = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "status_reason": reason[:500],
        **fields,
    }
    event = record_event(
        task,
        status,
        from_status=task.status,
        to_status=status,
        reason=reason,
        data=event_data,
        now=now,
        dispatcher_guid=task.dispatcher.guid if task.dispatcher_id else None,
        save=False,
    )
    if connection.vendor == "postgresql":
        # The hottest transition (every final callback): update, event and NOTIFY in one
        # statement, atomic by itself; one round trip instead of five.
        channel = _postgres_wakeup_channel()
        updated = update_and_log(Task, where, changes, event, link="task", notify=channel)
        if updated and channel is None:
            notify_scheduler()
    else:
        with transaction.atomic():
            updated = update_rows(Task, where, changes)
            if updated:
                insert_row(event)
                notify_scheduler()
    if updated:
        _send_after_commit(signals.task_finished, task.pk)
    return bool(updated)


def time_out_task(task: Task, now: datetime) -> bool:
    """End an active task ``timed_out``; used for overdue tasks and late callbacks.

    Either way the scheduler's next pass asks the dispatcher to stop it (``timed out``).
    """
    reason = f"ran longer than its timeout of {task.timeout_seconds} s"
    return end_task(task, TaskStatus.TIMED_OUT, reason=reason, now=now, error_message=reason)


def _refetch(task: Task) -> Task:
    """The task as it is now; ``NotFound`` if it was deleted (pruned) since it was read."""
    current = (
        Task.objects.select_related("dispatcher", "skill_version__skill").filter(pk=task.pk).first()
    )
    if current is None:
        raise NotFound("No such task.")
    return current


def _apply_running(task: Task, now: datetime) -> CallbackOutcome:
    with transaction.atomic():
        updated = update_rows(
            Task,
            {
                "pk": task.pk,
                "status": TaskStatus.DISPATCHED,
                "attempt": task.attempt,
                "callback_token_hash": task.callback_token_hash,
            },
            {
                "status": TaskStatus.RUNNING,
                "started_at": now,
                "updated_at": now,
                "status_reason": f"running on {task.dispatcher.name}",
            },
        )
        if updated:
            record_event(
                task,
                "started",
                from_status=TaskStatus.DISPATCHED,
                to_status="running",
                now=now,
                dispatcher_guid=task.dispatcher.guid,
            )
            _send_after_commit(signals.task_started, task.pk)
    if updated:
        task.status, task.started_at, task.updated_at = TaskStatus.RUNNING, now, now
        return CallbackOutcome(task, True)
    current = _refetch(task)
    if current.status == TaskStatus.RUNNING and current.attempt == task.attempt:
        return CallbackOutcome(current, False)
    raise Conflict(f"The task is {current.status}; it cannot become running.")


def _apply_final(task: Task, data: dict[str, Any], now: datetime) -> CallbackOutcome:
    status = data["status"]
    if status == TaskStatus.COMPLETED:
        reason = "completed" + (
            f" with exit code {data['exit_code']}" if data["exit_code"] is not None else ""
        )
    elif status == TaskStatus.FAILED:
        reason = "failed: " + (data["error_message"] or "the dispatcher reported a failure")
    else:
        reason = "cancelled by the dispatcher"
    updated = end_task(
        task,
        status,
        reason=reason,
        now=now,
        match={"callback_token_hash": task.callback_token_hash},
        event_data={"exit_code": data["exit_code"], "result_key": data["result_key"]},
        exit_code=data["exit_code"],
        result_key=data["result_key"],
        result_metadata=data["result_metadata"],
        error_message=data["error_message"],
    )
    if updated:
        task.status, task.finished_at, task.updated_at = status, now, now
        return CallbackOutcome(task, True)
    current = _refetch(task)
    if current.status == status and current.attempt == task.attempt:
        return CallbackOutcome(current, False)
    if current.status in FINAL_STATUSES:
        raise Conflict(f"The task already ended as {current.status}.")
    raise Conflict(f"The task is {current.status}; this callback does not apply.")


# --- dispatcher deletion ----------------------------------------------------------------


def unfinished_tasks_of_deleted_dispatcher(sender, dispatcher, force: bool = False, **kwargs):
    """Receiver of ``dispatcher_deleting``: count (and with ``force``, requeue) its tasks.

    A forced deletion is refused (``Conflict`` with ``Retry-After``) while a scheduler is
    pushing a task to the dispatcher: a claim under its lease whose push is not recorded.
    Requeued then, the task would go to another dispatcher while the push to this one may
    still be sent, and run twice. The dispatcher's row is locked here and a claim locks it
    too, so no claim can start meanwhile; a push ends before its lease does.
    """
    tasks = list(
        Task.objects.select_related("dispatcher").filter(
            dispatcher=dispatcher, status__in=list(ACTIVE_STATUSES)
        )
    )
    if force:
        now = timezone.now()
        leases = [task.lease_expires_at for task in tasks if task.push_in_flight(now)]
        if leases:
            refusal = Conflict(
                f"A scheduler is pushing {len(leases)} task{'s' if len(leases) != 1 else ''} "
                f"to dispatcher {dispatcher.name!r}; retry once the push is recorded. Set "
                "draining first so that it gets no more."
            )
            # A push ends within its deadline (milliseconds, usually), well before the lease.
            left = min((max(leases) - now).total_seconds(), push_deadline_seconds())
            refusal.wait = max(1, math.ceil(left))
            raise refusal
        for task in tasks:
            release_task(task, kind="requeued", reason=f"dispatcher {dispatcher.name} was deleted")
    return len(tasks)
