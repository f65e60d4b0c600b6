"""Dispatcher registry services: check-in, heartbeat, liveness, secrets, operator controls.

Views, management commands and the scheduler call these functions; they own the
transactions and the state changes, and send the signals in ``kohakku_controller.signals``.
Client faults are raised as DRF exceptions (``ValidationError`` 400, ``PermissionDenied``
403, ``NotFound`` 404, ``Conflict`` 409), so an HTTP view can let them through as they are.
Signing secrets are never logged.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify
from rest_framework.exceptions import NotFound, PermissionDenied

from .. import signals
from ..conf import kohakku_settings
from ..db import update_rows
from ..exceptions import Conflict
from .models import Dispatcher
from .secrets import encrypt_secret, generate_signing_secret, is_readable
from .serializers import CheckinSerializer

logger = logging.getLogger("kohakku_controller.dispatchers")

# How often a creation may lose a race for its slug to a different name before giving up;
# after the first few attempts the suffix is random, so racers stop colliding.
_SLUG_ATTEMPTS = 8
_SEQUENTIAL_SLUG_ATTEMPTS = 3
_SLUG_BASE_MAX_LENGTH = 100


@dataclass(frozen=True)
class CheckinResult:
    """The outcome of :func:`checkin`.

    ``signing_secret`` is set only when a secret was issued (on creation, or when the
    check-in asked to rotate); it is the only time the clear secret is available.
    """

    dispatcher: Dispatcher
    action: Literal["created", "updated"]
    signing_secret: str | None = None

    @property
    def created(self) -> bool:
        return self.action == "created"


def _application_pk(application: Any) -> Any:
    return getattr(application, "pk", None)


def _send_after_commit(signal: Any, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction commits (at once outside one).

    Robust: a failing receiver is logged and neither stops the other receivers nor breaks
    the caller, whose transaction has already committed.
    """

    def send() -> None:
        for receiver, result in signal.send_robust(sender=Dispatcher, **kwargs):
            if isinstance(result, Exception):
                logger.error(
                    "receiver %r of a dispatcher signal failed",
                    receiver,
                    exc_info=(type(result), result, result.__traceback__),
                )

    transaction.on_commit(send)


def _rotation_changes(
    current_encrypted: str, new_secret: str, grace_seconds: int, now: datetime
) -> dict[str, Any]:
    """Column values that make ``new_secret`` current and keep the old one for the grace.

    An old secret the current key cannot decrypt (the key changed, which is why the
    dispatcher rotates) is not kept: nothing could verify a signature with it.
    """
    if grace_seconds > 0 and is_readable(current_encrypted):
        previous, valid_until = current_encrypted, now + timedelta(seconds=grace_seconds)
    else:
        previous, valid_until = "", None
    return {
        "signing_secret_encrypted": encrypt_secret(new_secret),
        "previous_signing_secret_encrypted": previous,
        "previous_secret_valid_until": valid_until,
    }


def _grace(grace_seconds: int | None) -> int:
    grace = (
        kohakku_settings.SECRET_ROTATION_GRACE_SECONDS if grace_seconds is None else grace_seconds
    )
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise ValueError(f"grace_seconds must be a non-negative integer, not {grace!r}")
    return grace


def _free_slug(name: str, attempt: int = 0) -> str:
    """A slug for ``name`` that no dispatcher uses yet (a suffix is added on collision)."""
    base = slugify(name)[:_SLUG_BASE_MAX_LENGTH].strip("-_") or "dispatcher"
    if attempt >= _SEQUENTIAL_SLUG_ATTEMPTS:
        return f"{base}-{secrets.token_hex(3)}"
    taken = set(Dispatcher.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    if base not in taken:
        return base
    number = 2
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


def _create(
    name: str, application: Any, values: dict[str, Any], now: datetime, attempt: int
) -> Any:
    """Insert a new dispatcher in a savepoint; ``None`` if a concurrent insert won the race."""
    secret = generate_signing_secret()
    dispatcher = Dispatcher(
        name=name,
        slug=_free_slug(name, attempt),
        application=application,
        signing_secret_encrypted=encrypt_secret(secret),
        first_checkin_at=now,
        last_checkin_at=now,
        last_heartbeat_at=now,
        capacity=kohakku_settings.DEFAULT_DISPATCHER_CAPACITY,
    )
    for field, value in values.items():
        setattr(dispatcher, field, value)
    try:
        with transaction.atomic():
            dispatcher.save(force_insert=True)
    except IntegrityError:
        return None
    return dispatcher, secret


def checkin(*, application: Any, data: dict[str, Any]) -> CheckinResult:
    """Register a dispatcher, or update the one with the same name; idempotent by name.

    ``data`` is the check-in body; it is validated here (``ValidationError`` names each
    faulty field). Runs in one transaction: a new name creates the dispatcher
    (``"created"``, with a fresh ``signing_secret``); a known name owned by the same
    ``application`` updates the fields sent, stamps the check-in and a heartbeat
    (``"updated"``). A name owned by another application raises ``PermissionDenied``.
    ``"rotate_secret": true`` issues a new secret on an update.

    Concurrent check-ins of one name are safe: the row is locked while it is updated, and
    of racing creations exactly one inserts; the others update the row it inserted.
    ``signals.dispatcher_registered`` is sent after the creating transaction commits.
    """
    serializer = CheckinSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    values = dict(serializer.validated_data)
    rotate = values.pop("rotate_secret", False)
    name = values.pop("name")
    with transaction.atomic():
        for attempt in range(_SLUG_ATTEMPTS):
            existing = Dispatcher.objects.select_for_update().filter(name=name).first()
            if existing is not None:
                # The clock is read once the row is locked, so check-in times never go back.
                return _update_on_checkin(existing, application, values, rotate, timezone.now())
            created = _create(name, application, values, timezone.now(), attempt)
            if created is not None:
                dispatcher, secret = created
                _send_after_commit(signals.dispatcher_registered, dispatcher=dispatcher)
                logger.info("dispatcher %s (%s) registered", dispatcher.name, dispatcher.guid)
                return CheckinResult(dispatcher, "created", secret)
            # Lost a race: to the same name (the next lookup finds it) or, rarely, to a
            # different name with the same slug (the next attempt picks another slug).
    raise Conflict("Could not register the dispatcher because of concurrent check-ins; retry.")


def _update_on_checkin(
    dispatcher: Dispatcher, application: Any, values: dict[str, Any], rotate: bool, now: datetime
) -> CheckinResult:
    owner = _application_pk(application)
    if dispatcher.application_id is None:
        # Its client was deleted. Taking the name over would hand the newcomer its guid and
        # tasks, so that stays an operator's decision: deleting it frees the name.
        raise PermissionDenied(
            f"The dispatcher name {dispatcher.name!r} is registered by a client that no longer "
            "exists; an operator can delete the dispatcher to free the name."
        )
    if dispatcher.application_id != owner:
        raise PermissionDenied(
            f"The dispatcher name {dispatcher.name!r} is registered by another client."
        )
    changes: dict[str, Any] = {
        **values,
        "last_checkin_at": now,
        "last_heartbeat_at": now,
        "lost_at": None,
    }
    secret = None
    if rotate:
        secret = generate_signing_secret()
        changes.update(
            _rotation_changes(dispatcher.signing_secret_encrypted, secret, _grace(None), now)
        )
    updated = Dispatcher.objects.filter(pk=dispatcher.pk, application_id=owner).update(**changes)
    if updated != 1:  # pragma: no cover - the row is locked by this transaction
        raise Conflict("The dispatcher changed during the check-in; retry.")
    for field, value in changes.items():
        setattr(dispatcher, field, value)
    if rotate:
        logger.info(
            "dispatcher %s (%s) rotated its signing secret", dispatcher.name, dispatcher.guid
        )
    return CheckinResult(dispatcher, "updated", secret)


def record_heartbeat(
    *,
    guid: Any,
    application: Any,
    running_task_guids: list[Any] | None = None,
    free_capacity: int | None = None,
) -> None:
    """Stamp a heartbeat (server clock) for the dispatcher ``guid`` owned by ``application``.

    Clears ``lost_at``. Stores ``free_capacity`` (``None`` when not reported) and, when
    given, the guids of the tasks the dispatcher runs. The controller's most frequent write
    is one conditional ``UPDATE`` that reads nothing back; load the dispatcher yourself if
    you need it. Raises ``NotFound`` for an unknown guid and ``PermissionDenied`` when
    another application owns the dispatcher.
    """
    try:
        guid = uuid.UUID(str(guid))
    except ValueError:
        raise NotFound("No such dispatcher.") from None
    now = timezone.now()
    changes: dict[str, Any] = {
        "last_heartbeat_at": now,
        "tasks_reported_at": now,
        "lost_at": None,
        "reported_free_capacity": free_capacity,
    }
    if running_task_guids is not None:
        # Once each, in the order sent.
        changes["reported_task_guids"] = list(dict.fromkeys(map(str, running_task_guids)))
    owned = {"guid": guid, "application": _application_pk(application)}
    # Heartbeats are rewritten every interval: losing the last second of them in a database
    # crash only makes dispatchers look a second older, so they need not wait for the disk.
    if update_rows(Dispatcher, owned, changes, asynchronous_commit=True):
        return
    if Dispatcher.objects.filter(guid=guid).exists():
        raise PermissionDenied("This dispatcher is registered by another client.")
    raise NotFound("No such dispatcher.")


def rotate_signing_secret(dispatcher: Dispatcher, *, grace_seconds: int | None = None) -> str:
    """Issue a new signing secret for ``dispatcher`` and return it (the only time it is shown).

    The previous secret stays valid for ``grace_seconds`` (default: the
    ``SECRET_ROTATION_GRACE_SECONDS`` setting; 0 ends it at once). A secret that was
    already in its grace period is dropped. The controller signs with the new secret from
    now on. ``dispatcher`` is updated in place.
    """
    grace = _grace(grace_seconds)
    secret = generate_signing_secret()
    now = timezone.now()
    with transaction.atomic():
        current = (
            Dispatcher.objects.select_for_update()
            .filter(pk=dispatcher.pk)
            .values_list("signing_secret_encrypted", flat=True)
            .first()
        )
        if current is None:
            raise NotFound("No such dispatcher.")
        changes = _rotation_changes(current, secret, grace, now)
        updated = Dispatcher.objects.filter(
            pk=dispatcher.pk, signing_secret_encrypted=current
        ).update(**changes)
        if updated != 1:  # pragma: no cover - the row is locked by this transaction
            raise Conflict("The signing secret was rotated concurrently; retry.")
    for field, value in changes.items():
        setattr(dispatcher, field, value)
    logger.info("signing secret of dispatcher %s (%s) rotated", dispatcher.name, dispatcher.guid)
    return secret


def mark_lost_dispatchers(now: datetime | None = None) -> list[Dispatcher]:
    """Record ``lost_at`` on dispatchers that went offline since their last heartbeat.

    A dispatcher is lost once its last heartbeat is interval x ``MISSED_HEARTBEATS`` old.
    The transition is recorded once per outage: a conditional update on ``lost_at IS
    NULL`` (so concurrent callers never both record it), and the next heartbeat or
    check-in clears it. Returns the dispatchers marked by this call and sends
    ``signals.dispatcher_lost`` for each after the transaction commits.
    """
    now = now or timezone.now()
    candidates = list(
        Dispatcher.objects.not_online(now)
        .filter(lost_at__isnull=True, last_heartbeat_at__isnull=False)
        .order_by("pk")
    )
    lost = []
    with transaction.atomic():
        # One conditional update per row, in primary-key order (no deadlock between
        # concurrent callers); outages are rare, so this stays a handful of statements.
        for dispatcher in candidates:
            marked = Dispatcher.objects.filter(
                pk=dispatcher.pk,
                lost_at__isnull=True,
                last_heartbeat_at__lte=now - dispatcher.offline_after,
            ).update(lost_at=now)
            if marked:
                dispatcher.lost_at = now
                lost.append(dispatcher)
                _send_after_commit(signals.dispatcher_lost, dispatcher=dispatcher)
    for dispatcher in lost:
        logger.warning(
            "dispatcher %s (%s) lost: last heartbeat at %s",
            dispatcher.name,
            dispatcher.guid,
            dispatcher.last_heartbeat_at.isoformat(),
        )
    return lost


def set_dispatcher_controls(
    dispatcher: Dispatcher,
    *,
    enabled: bool | None = None,
    draining: bool | None = None,
    capacity: int | None = None,
    if_unchanged: Mapping[str, Any] | None = None,
) -> Dispatcher:
    """Apply an operator's switches (``None`` leaves one as it is); returns the dispatcher
    as read after the change.

    The answer is read again right after the update, so it shows this change with whatever
    another request changed at about the same time (its other switches, a check-in's
    fields), not the row as the caller first read it. The argument is not changed.

    With ``if_unchanged`` (field values as the caller read them), only while the dispatcher
    still has those values: ``Conflict`` otherwise. ``NotFound`` when it was deleted.
    """
    changes = {
        field: value
        for field, value in (("enabled", enabled), ("draining", draining), ("capacity", capacity))
        if value is not None
    }
    if changes:
        rows = Dispatcher.objects.filter(pk=dispatcher.pk, **(if_unchanged or {}))
        if not rows.update(**changes):
            if if_unchanged and Dispatcher.objects.filter(pk=dispatcher.pk).exists():
                raise Conflict("The dispatcher's controls were changed since they were read.")
            raise NotFound("No such dispatcher.")
        dispatcher = (
            Dispatcher.objects.select_related("application").filter(pk=dispatcher.pk).first()
        )
        if dispatcher is None:  # deleted right after the change
            raise NotFound("No such dispatcher.")
        logger.info(
            "dispatcher %s (%s) controls changed: %s",
            dispatcher.name,
            dispatcher.guid,
            ", ".join(f"{field}={value}" for field, value in sorted(changes.items())),
        )
    return dispatcher


def delete_dispatcher(dispatcher: Dispatcher, *, force: bool = False) -> None:
    """Delete ``dispatcher``, refusing while it has unfinished tasks unless ``force``.

    Sends ``signals.dispatcher_deleting`` inside the transaction, with the row locked;
    receivers return their count of unfinished tasks on it (and requeue them when
    ``force`` is true). A positive total without ``force`` raises ``Conflict`` and
    nothing is deleted.
    """
    with transaction.atomic():
        locked = Dispatcher.objects.select_for_update().filter(pk=dispatcher.pk).first()
        if locked is None:
            raise NotFound("No such dispatcher.")
        responses = signals.dispatcher_deleting.send(
            sender=Dispatcher, dispatcher=locked, force=force
        )
        unfinished = sum(
            response
            for _receiver, response in responses
            if isinstance(response, int) and not isinstance(response, bool)
        )
        if unfinished > 0 and not force:
            raise Conflict(
                f"Dispatcher {locked.name!r} has {unfinished} unfinished "
                f"task{'s' if unfinished != 1 else ''}. Drain it and wait for them to finish, "
                "or delete with force=true to requeue them."
            )
        Dispatcher.objects.filter(pk=locked.pk).delete()
    logger.info(
        "dispatcher %s (%s) deleted%s",
        locked.name,
        locked.guid,
        f" with {unfinished} unfinished tasks requeued" if unfinished else "",
    )
