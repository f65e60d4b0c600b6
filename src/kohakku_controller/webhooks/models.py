"""The delivery log: every request to the webhook endpoint, accepted or not."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class DeliveryStatus(models.TextChoices):
    ROUTED = "routed", "Routed to a workflow; task queued"
    UNROUTED = "unrouted", "Accepted; no workflow matched"
    FAILED = "failed", "Accepted; the matching workflow could not queue a task"
    DUPLICATE = "duplicate", "Already received; nothing done"
    HANDSHAKE = "handshake", "Handshake (GitHub ping, Slack url_verification)"
    REJECTED = "rejected", "Rejected (signature, source, body or size)"


class Verification(models.TextChoices):
    VERIFIED = "verified", "Signature verified"
    UNSIGNED = "unsigned", "Accepted unsigned (ALLOW_UNSIGNED_WEBHOOKS)"
    FAILED = "failed", "Signature missing, stale or wrong"
    NOT_CHECKED = "not_checked", "Not checked (rejected earlier)"


class Delivery(models.Model):
    """One webhook request: what came in, whether it was trusted, and what it led to."""

    guid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    source = models.CharField(max_length=16, blank=True, default="")
    event = models.CharField(max_length=100, blank=True, default="")
    # The sender's id for the delivery (X-GitHub-Delivery, Slack event_id, webhook-id).
    external_id = models.CharField(max_length=255, blank=True, default="")
    # Set only on the delivery that claimed (source, sender id); unique, so a duplicate
    # cannot claim it again. Null on rejected, duplicate and replayed deliveries.
    dedupe_key = models.CharField(max_length=255, null=True, blank=True, editable=False)  # noqa: DJ001
    content_type = models.CharField(max_length=255, blank=True, default="")
    headers = models.JSONField(default=dict, blank=True, help_text="Credentials redacted.")
    body = models.BinaryField(default=b"", blank=True)
    body_size = models.PositiveBigIntegerField(default=0)
    body_truncated = models.BooleanField(default=False)
    verification = models.CharField(
        max_length=16, choices=Verification.choices, default=Verification.NOT_CHECKED
    )
    verification_detail = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices)
    detail = models.TextField(blank=True, default="", help_text="The routing decision or fault.")
    workflow = models.ForeignKey(
        "kohakku_controller.Workflow",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deliveries",
    )
    # Slug of the workflow at the time (kept if the workflow is deleted).
    routed_to = models.CharField(max_length=64, blank=True, default="")
    task_guid = models.UUIDField(null=True, blank=True, db_index=True)
    status_code = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField(null=True, blank=True)
    retry_num = models.PositiveIntegerField(null=True, blank=True)
    retry_reason = models.CharField(max_length=100, blank=True, default="")
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    duplicate_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="duplicates"
    )
    replay_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="replays"
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["source", "dedupe_key"],
                condition=Q(dedupe_key__isnull=False),
                name="kohakku_delivery_unique_claim",
            )
        ]
        indexes = [
            models.Index(
                fields=["source", "event", "-received_at"], name="kohakku_delivery_src_idx"
            ),
            models.Index(fields=["status", "-received_at"], name="kohakku_delivery_status_idx"),
            # Looking a delivery up by the sender's id: ?external_id=.
            models.Index(fields=["external_id"], name="kohakku_delivery_external_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.source or '?'}:{self.event or '?'} {self.guid}"

    @property
    def is_replayable(self) -> bool:
        return (
            self.verification in (Verification.VERIFIED, Verification.UNSIGNED)
            and not self.body_truncated
            and self.status != DeliveryStatus.HANDSHAKE
        )
