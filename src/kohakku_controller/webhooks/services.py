"""Webhook ingest: verify, record, dedupe and route a delivery; replay and prune the log.

The flow of :func:`receive_webhook`:

1. detect the source (400 if unknown or missing);
2. verify the signature over the raw body (401; 403 if the source has no secret and unsigned
   deliveries are not allowed);
3. parse the body (400 if malformed, 415 for other content types);
4. answer handshakes (Slack ``url_verification``, GitHub ``ping``) without routing;
5. dedupe on (source, sender's delivery id): a duplicate gets the original's answer;
6. route: the first matching workflow's task is created in the same transaction as the
   delivery row that claims the sender's id, so a race of duplicates yields one task.

Every outcome, rejections included, is recorded as a :class:`Delivery`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.datastructures import CaseInsensitiveMapping
from rest_framework.exceptions import ValidationError

from ..conf import kohakku_settings
from ..exceptions import Conflict
from ..workflows.events import build_event_document, redact_headers
from ..workflows.models import Workflow
from ..workflows.services import MatchResult, match_workflow, queue_task_for_workflow
from . import verifiers
from .ingest import (
    MAX_EVENT_LENGTH,
    SOURCES,
    BodyError,
    dedupe_key,
    detect_source,
    event_name,
    parse_payload,
    sender_delivery_id,
)
from .models import Delivery, DeliveryStatus, Verification


@dataclass
class IngestResult:
    """What to answer the sender, and the delivery row that records it."""

    status_code: int
    data: dict[str, Any]
    delivery: Delivery


@dataclass
class _Incoming:
    headers: Mapping[str, str]
    body: bytes
    body_size: int
    content_type: str
    remote_addr: str | None
    started: float


@dataclass
class _Context:
    source: str = ""
    event: str = ""
    external_id: str = ""
    verification: str = Verification.NOT_CHECKED
    verification_detail: str = ""
    replay_of: Delivery | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Rejected(Exception):
    def __init__(self, status_code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason


def secrets_for(source: str) -> list[str]:
    """The configured secrets of a source (``WEBHOOK_SECRETS[source]``), newest first."""
    return configured_secrets((kohakku_settings.WEBHOOK_SECRETS or {}).get(source))


def configured_secrets(configured: Any) -> Any:
    """The secrets in one source's ``WEBHOOK_SECRETS`` entry: one secret or a list of them,
    empty ones (an unset environment variable) left out. Check E012 refuses the rest."""
    if isinstance(configured, (str, bytes)):
        configured = [configured]
    if not isinstance(configured, list | tuple):
        return configured or []
    return [secret for secret in configured if secret]


def receive_webhook(
    *,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str = "",
    remote_addr: str | None = None,
    started: float | None = None,
) -> IngestResult:
    """Handle one webhook request whose raw body has been read in full."""
    incoming = _incoming(headers, body, len(body), content_type, remote_addr, started)
    context = _Context()
    try:
        return _receive(incoming, context)
    except _Rejected as rejection:
        return _reject(incoming, context, rejection)


def _incoming(
    headers: Mapping[str, str],
    body: bytes,
    body_size: int,
    content_type: str,
    remote_addr: str | None,
    started: float | None,
) -> _Incoming:
    return _Incoming(
        headers=_case_insensitive(headers),
        body=body,
        body_size=body_size,
        content_type=content_type,
        remote_addr=remote_addr,
        started=time.monotonic() if started is None else started,
    )


def reject_oversize(
    *,
    headers: Mapping[str, str],
    body_size: int,
    content_type: str = "",
    remote_addr: str | None = None,
    started: float | None = None,
) -> IngestResult:
    """Record and answer a body over ``WEBHOOK_MAX_BODY_BYTES`` (413); the body is not kept."""
    limit = kohakku_settings.WEBHOOK_MAX_BODY_BYTES
    return reject_unread(
        status_code=413,
        reason="too_large",
        detail=f"Request body is larger than {limit} bytes.",
        headers=headers,
        body_size=body_size,
        content_type=content_type,
        remote_addr=remote_addr,
        started=started,
    )


def reject_unread(
    *,
    status_code: int,
    reason: str,
    detail: str,
    headers: Mapping[str, str],
    body_size: int = 0,
    content_type: str = "",
    remote_addr: str | None = None,
    started: float | None = None,
) -> IngestResult:
    """Record and answer a delivery refused before its body was read whole (sent without
    ``Content-Length``, in a content coding, cut short); what arrived of it is not kept."""
    incoming = _incoming(headers, b"", body_size, content_type, remote_addr, started)
    return _reject_unread(incoming, _Rejected(status_code, reason, detail))


def _reject_unread(incoming: _Incoming, rejection: _Rejected) -> IngestResult:
    """Record a delivery refused before its body was read, with what its headers say."""
    source = detect_source(incoming.headers) or ""
    context = _Context(
        source=source if source in SOURCES else "",
        event=event_name(source, incoming.headers, None)[:MAX_EVENT_LENGTH],
    )
    return _reject(incoming, context, rejection, body_truncated=True)


def _receive(incoming: _Incoming, context: _Context) -> IngestResult:
    headers = incoming.headers
    source = detect_source(headers)
    if source is None:
        raise _Rejected(
            400,
            "unknown_source",
            "X-Webhook-Source header is missing and the sender could not be detected "
            "(send X-Webhook-Source: github, slack or custom).",
        )
    if source not in SOURCES:
        raise _Rejected(
            400,
            "unknown_source",
            f"X-Webhook-Source {source[:40]!r} is not one of: {', '.join(SOURCES)}.",
        )
    context.source = source
    context.event = event_name(source, headers, None)[:MAX_EVENT_LENGTH]
    context.verification, context.verification_detail = Verification.FAILED, ""
    _verify(source, headers, incoming.body, context)

    try:
        payload = parse_payload(incoming.body, incoming.content_type)
    except BodyError as exc:
        raise _Rejected(exc.status_code, "malformed_body", str(exc)) from None
    event = event_name(source, headers, payload)
    if len(event) > MAX_EVENT_LENGTH:
        raise _Rejected(
            400, "malformed_event", f"The event name is over {MAX_EVENT_LENGTH} characters."
        )
    context.event = event
    external_id = sender_delivery_id(source, headers, payload)
    context.external_id = external_id[:255]  # as much as the log keeps

    handshake = _handshake(incoming, context, payload)
    if handshake is not None:
        return handshake

    # From the whole id: two ids that differ only past the kept part are two deliveries.
    claim = dedupe_key(source, headers, external_id)
    if claim is not None:
        original = _claimant(source, claim)
        if original is not None:
            return _duplicate(incoming, context, original)
    return _route(incoming, context, payload, claim)


def _verify(source: str, headers: Mapping[str, str], body: bytes, context: _Context) -> None:
    secrets = secrets_for(source)
    if not secrets:
        if kohakku_settings.ALLOW_UNSIGNED_WEBHOOKS:
            context.verification = Verification.UNSIGNED
            context.verification_detail = "No secret configured; accepted unsigned."
            return
        context.verification_detail = "No secret is configured for this source."
        raise _Rejected(
            403,
            "source_not_configured",
            f"Deliveries from {source!r} are refused: no secret is configured for it.",
        )
    tolerance = kohakku_settings.WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS
    try:
        if source == "github":
            verifiers.verify_github_signature(secrets, body, headers.get("X-Hub-Signature-256"))
        elif source == "slack":
            verifiers.verify_slack_signature(
                secrets,
                body,
                headers.get("X-Slack-Request-Timestamp"),
                headers.get("X-Slack-Signature"),
                tolerance=tolerance,
            )
        else:
            verifiers.verify_standard_webhooks_signature(
                secrets,
                body,
                headers.get("webhook-id"),
                headers.get("webhook-timestamp"),
                headers.get("webhook-signature"),
                tolerance=tolerance,
            )
    except verifiers.VerificationError as exc:
        context.verification_detail = f"{exc.reason}: {exc}"
        raise _Rejected(401, f"signature_{exc.reason}", str(exc)) from None
    context.verification = Verification.VERIFIED
    context.verification_detail = "Signature verified."


def _handshake(incoming: _Incoming, context: _Context, payload: Any) -> IngestResult | None:
    if (
        context.source == "slack"
        and isinstance(payload, dict)
        and payload.get("type") == "url_verification"
    ):
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            raise _Rejected(400, "malformed_body", "url_verification without a string 'challenge'.")
        delivery = _record(
            incoming,
            context,
            status=DeliveryStatus.HANDSHAKE,
            detail="Slack url_verification answered with its challenge; not routed.",
            status_code=200,
        )
        return IngestResult(200, {"challenge": challenge}, delivery)
    if context.source == "github" and context.event == "ping":
        delivery = _record(
            incoming,
            context,
            status=DeliveryStatus.HANDSHAKE,
            detail="GitHub ping acknowledged; not routed.",
            status_code=200,
        )
        return IngestResult(200, _answer(delivery), delivery)
    return None


def _route(
    incoming: _Incoming, context: _Context, payload: Any, claim: str | None, *, again: bool = False
) -> IngestResult:
    document = build_event_document(context.source, context.event, incoming.headers, payload)
    match = match_workflow(context.source, context.event, document)
    try:
        delivery = _record_match(incoming, context, match, claim)
    except IntegrityError:
        original = _claimant(context.source, claim) if claim is not None else None
        if original is not None:
            return _duplicate(incoming, context, original)
        if not again and match.workflow is not None and not _workflow_exists(match.workflow):
            # The workflow was deleted while this delivery was being routed: route it again.
            return _route(incoming, context, payload, claim, again=True)
        raise
    return IngestResult(200, _answer(delivery), delivery)


def _workflow_exists(workflow: Workflow) -> bool:
    return Workflow.objects.filter(pk=workflow.pk).exists()


def _record_match(
    incoming: _Incoming, context: _Context, match: MatchResult, claim: str | None
) -> Delivery:
    """Record the delivery as ``match`` routes it (and queue its task, if any)."""
    workflow = match.workflow
    if workflow is None:
        with transaction.atomic():
            return _record(
                incoming,
                context,
                status=DeliveryStatus.UNROUTED,
                detail=_unrouted_reason(match),
                status_code=200,
                dedupe_key=claim,
            )
    if match.input_error:
        return _record_failed(
            incoming, context, match, claim, f"its input template failed: {match.input_error}"
        )
    return _create_task_and_record(incoming, context, match, claim)


def _record_failed(
    incoming: _Incoming, context: _Context, match: MatchResult, claim: str | None, why: str
) -> Delivery:
    """Record a delivery that matched a workflow which could not queue its task."""
    assert match.workflow is not None
    with transaction.atomic():
        return _record(
            incoming,
            context,
            status=DeliveryStatus.FAILED,
            detail=f"Workflow {match.workflow.slug!r} matched but {why}",
            status_code=200,
            dedupe_key=claim,
            workflow=match.workflow,
        )


def _create_task_and_record(
    incoming: _Incoming, context: _Context, match: MatchResult, claim: str | None
) -> Delivery:
    workflow = match.workflow
    assert workflow is not None
    try:
        # One transaction: if another request claimed this delivery id meanwhile, the
        # insert below fails and the task goes with it.
        with transaction.atomic():
            task = queue_task_for_workflow(workflow, match.input or {})
            return _record(
                incoming,
                context,
                status=DeliveryStatus.ROUTED,
                detail=f"Matched workflow {workflow.slug!r}; queued task {task.guid}.",
                status_code=200,
                dedupe_key=claim,
                workflow=workflow,
                task_guid=task.guid,
            )
    except ValidationError as exc:
        return _record_failed(
            incoming,
            context,
            match,
            claim,
            f"the task could not be created: {_flatten(exc.detail)}",
        )


def _duplicate(incoming: _Incoming, context: _Context, original: Delivery) -> IngestResult:
    recorded = {
        "status": DeliveryStatus.DUPLICATE,
        "detail": f"Duplicate of delivery {original.guid}; nothing done.",
        "status_code": 200,
        "routed_to": original.routed_to,
        "task_guid": original.task_guid,
    }
    try:
        with transaction.atomic():
            delivery = _record(
                incoming,
                context,
                **recorded,
                workflow_id=original.workflow_id,
                duplicate_of=original,
            )
    except IntegrityError:
        # The original (or its workflow) was deleted since it was read, by a prune: record
        # the duplicate without the references; the answer is still the original's.
        delivery = _record(incoming, context, **recorded)
    data = _answer(original)
    data.update(delivery_id=str(delivery.guid), duplicate=True, duplicate_of=str(original.guid))
    return IngestResult(200, data, delivery)


def _reject(
    incoming: _Incoming, context: _Context, rejection: _Rejected, *, body_truncated: bool = False
) -> IngestResult:
    delivery = _record(
        incoming,
        context,
        status=DeliveryStatus.REJECTED,
        detail=f"{rejection.reason}: {rejection}",
        status_code=rejection.status_code,
        body_truncated=body_truncated,
    )
    data = {"detail": str(rejection), "reason": rejection.reason, "delivery_id": str(delivery.guid)}
    return IngestResult(rejection.status_code, data, delivery)


def _answer(delivery: Delivery) -> dict[str, Any]:
    """The pinned answer, plus ``delivery_id`` and ``task_guid``."""
    data: dict[str, Any] = {
        "status": "failed" if delivery.status == DeliveryStatus.FAILED else "ok",
        "routed_to": delivery.routed_to or None,
        "delivery_id": str(delivery.guid),
        "task_guid": str(delivery.task_guid) if delivery.task_guid else None,
    }
    if delivery.status == DeliveryStatus.FAILED:
        data["detail"] = delivery.detail
    return data


def _record(
    incoming: _Incoming,
    context: _Context,
    *,
    status: str,
    detail: str,
    status_code: int,
    dedupe_key: str | None = None,
    workflow: Any = None,
    workflow_id: int | None = None,
    routed_to: str | None = None,
    task_guid: Any = None,
    duplicate_of: Delivery | None = None,
    body_truncated: bool = False,
) -> Delivery:
    cap = kohakku_settings.WEBHOOK_LOG_BODY_BYTES
    headers = incoming.headers
    retry_num = headers.get("X-Slack-Retry-Num", "")
    if workflow is not None:
        workflow_id = workflow.pk
        routed_to = workflow.slug
    return Delivery.objects.create(
        source=context.source,
        event=context.event,
        external_id=context.external_id,
        dedupe_key=dedupe_key,
        content_type=incoming.content_type[:255],
        headers=redact_headers(headers.items()),
        body=incoming.body[:cap],
        body_size=incoming.body_size,
        body_truncated=body_truncated or incoming.body_size > cap,
        verification=context.verification,
        verification_detail=context.verification_detail[:500],
        status=status,
        detail=detail,
        workflow_id=workflow_id,
        routed_to=routed_to or "",
        task_guid=task_guid,
        status_code=status_code,
        latency_ms=round((time.monotonic() - incoming.started) * 1000, 3),
        retry_num=int(retry_num) if _is_small_count(retry_num) else None,
        retry_reason=headers.get("X-Slack-Retry-Reason", "")[:100],
        remote_addr=incoming.remote_addr,
        duplicate_of=duplicate_of,
        replay_of=context.replay_of,
    )


def replay_delivery(original: Delivery) -> Delivery:
    """Route a stored delivery's body again, as a new delivery marked as its replay.

    Skips signature checks and dedupe (the original passed them) but nothing else: the
    current workflows decide, and a match queues a new task. Raises ``Conflict`` (409) for
    deliveries that were never verified or were rejected, handshakes, bodies stored
    truncated, and a delivery deleted (pruned) while it is replayed.
    """
    if original.verification not in (Verification.VERIFIED, Verification.UNSIGNED):
        raise Conflict("Only deliveries that passed signature verification can be replayed.")
    if original.status == DeliveryStatus.REJECTED:
        raise Conflict(
            "Rejected deliveries (a malformed body or event name, say) were never routed; "
            "they cannot be replayed."
        )
    if original.status == DeliveryStatus.HANDSHAKE:
        raise Conflict("Handshakes are not routed, so they cannot be replayed.")
    if original.body_truncated:
        raise Conflict("The stored body is truncated (WEBHOOK_LOG_BODY_BYTES); cannot replay.")
    body = bytes(original.body)
    try:
        payload = parse_payload(body, original.content_type)
    except BodyError as exc:
        raise Conflict(f"The stored body cannot be parsed: {exc}") from None
    incoming = _Incoming(
        headers=CaseInsensitiveMapping(original.headers),
        body=body,
        body_size=len(body),
        content_type=original.content_type,
        remote_addr=None,
        started=time.monotonic(),
    )
    context = _Context(
        source=original.source,
        event=original.event,
        external_id=original.external_id,
        verification=original.verification,
        verification_detail=f"Replay of delivery {original.guid}; not re-verified.",
        replay_of=original,
    )
    try:
        return _route(incoming, context, payload, claim=None).delivery
    except IntegrityError:
        # The new delivery refers to the original: it fails if a prune deleted it meanwhile.
        if Delivery.objects.filter(pk=original.pk).exists():
            raise
        raise Conflict("The delivery was deleted while it was being replayed.") from None


def prune_deliveries(
    *, older_than: timedelta | None = None, dry_run: bool = False, batch_size: int = 1000
) -> int:
    """Delete deliveries received before now - ``older_than`` (default: the retention
    setting); return how many were (or, with ``dry_run``, would be) deleted."""
    if older_than is None:
        older_than = timedelta(days=kohakku_settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    expired = Delivery.objects.filter(received_at__lt=timezone.now() - older_than)
    if dry_run:
        return expired.count()
    total = 0
    while True:
        ids = list(expired.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return total
        total += _delete_deliveries(ids)


def _delete_deliveries(ids: list[int], *, tries: int = 3) -> int:
    """Delete the deliveries ``ids``; how many went.

    Replays and duplicates that refer to them lose the reference (``SET_NULL``). One
    recorded while the batch is being deleted refers to a row the batch removes, and fails
    the batch at commit: the batch is then deleted again, which finds that reference too.
    """
    for _ in range(tries - 1):
        try:
            return _delete_batch(ids)
        except IntegrityError:
            continue  # a reference recorded meanwhile: deleting again unlinks it
    return _delete_batch(ids)


def _delete_batch(ids: list[int]) -> int:
    with transaction.atomic():
        _, per_model = Delivery.objects.filter(pk__in=ids).delete()
    return per_model.get(Delivery._meta.label, 0)


def _claimant(source: str, claim: str) -> Delivery | None:
    """The delivery that claimed (source, sender id), with just what an answer needs."""
    return (
        Delivery.objects.filter(source=source, dedupe_key=claim)
        .only("guid", "status", "detail", "routed_to", "workflow_id", "task_guid")
        .first()
    )


def _unrouted_reason(match: MatchResult) -> str:
    if not match.evaluated:
        return "No enabled workflow for this source and event."
    reasons = "; ".join(f"{wf.slug}: {ev.reason}" for wf, ev in match.evaluated[:10])
    return f"No workflow matched ({reasons})."[:2000]


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def _is_small_count(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) < 9


def _case_insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(headers, CaseInsensitiveMapping):
        return headers
    return CaseInsensitiveMapping(dict(headers))
