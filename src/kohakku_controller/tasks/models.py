"""Tasks: one run of one skill version with an input, and the append-only history of each.

The task row is the queue. Every state change is a conditional update made by
``tasks.services`` or ``tasks.scheduler``; nothing here writes a status blindly.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..dispatchers.models import Dispatcher
from ..skills.models import SkillVersion


class TaskStatus(models.TextChoices):
    QUEUED = "queued", _("queued")
    DISPATCHED = "dispatched", _("dispatched")
    RUNNING = "running", _("running")
    COMPLETED = "completed", _("completed")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")
    TIMED_OUT = "timed_out", _("timed out")


#: States a task never leaves.
FINAL_STATUSES: frozenset[str] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)
#: States in which a dispatcher holds the task (they count against its capacity).
ACTIVE_STATUSES: frozenset[str] = frozenset({TaskStatus.DISPATCHED, TaskStatus.RUNNING})
# In one fixed order, as the partial indexes' conditions name them.
_ACTIVE = [TaskStatus.DISPATCHED.value, TaskStatus.RUNNING.value]
_FINAL = sorted(status.value for status in FINAL_STATUSES)


def result_prefix_of(task_guid: Any) -> str:
    """The key prefix under which the results of the task ``task_guid`` are stored."""
    return f"results/{task_guid}/"


def cancel_unsent(since: Any) -> Q:
    """Tasks that timed out since ``since`` and whose dispatcher was not yet asked to stop."""
    return Q(
        status=TaskStatus.TIMED_OUT,
        cancel_sent_at__isnull=True,
        dispatcher__isnull=False,
        finished_at__gte=since,
    )


class TaskOrigin(models.TextChoices):
    API = "api", _("API")
    WORKFLOW = "workflow", _("workflow")
    DELIVERY = "delivery", _("webhook delivery")


def hash_callback_token(token: str) -> str:
    """The stored form of a callback token (sha256 hex; tokens are random, so no salt)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TaskQuerySet(models.QuerySet):
    def unfinished(self):
        return self.exclude(status__in=FINAL_STATUSES)

    def active(self):
        return self.filter(status__in=ACTIVE_STATUSES)

    def claimable(self, now=None):
        """Queued tasks whose backoff has passed, in claim order: priority, then age."""
        now = now or timezone.now()
        return self.filter(status=TaskStatus.QUEUED, not_before__lte=now).order_by(
            "-priority", "created_at", "id"
        )

    # The scheduler's sweeps. Each has a partial index in ``Task.Meta.indexes`` that holds only
    # the rows it looks for, so a pass reads what it acts on, not every task ever run, and
    # takes them oldest first in that index's order, so a backlog drains fairly.

    def overdue(self, now):
        """Active tasks past their deadline."""
        return self.filter(status__in=_ACTIVE, deadline_at__lt=now).order_by("deadline_at")

    def expired_leases(self, now):
        """Claims whose push was never confirmed and whose lease has run out."""
        return self.filter(
            status=TaskStatus.DISPATCHED, pushed_at__isnull=True, lease_expires_at__lt=now
        ).order_by("lease_expires_at")

    def without_pushes_in_flight(self, now):
        """All but the claims a live scheduler may still be pushing (see
        :meth:`Task.push_in_flight`)."""
        return self.exclude(
            status=TaskStatus.DISPATCHED, pushed_at__isnull=True, lease_expires_at__gte=now
        )

    def cancel_requested(self):
        """Active tasks an operator asked to cancel."""
        return self.filter(status__in=_ACTIVE, cancel_requested_at__isnull=False).order_by(
            "cancel_requested_at"
        )

    def timed_out_cancel_unsent(self, since):
        """Tasks timed out since ``since`` whose dispatcher has not yet been sent a cancel."""
        return self.filter(cancel_unsent(since)).order_by("finished_at")

    def finished_before(self, cutoff):
        """Tasks that ended (in any final status) before ``cutoff``, the oldest first."""
        return self.filter(status__in=_FINAL, finished_at__lt=cutoff).order_by("finished_at", "pk")


class Task(models.Model):
    guid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    skill_version = models.ForeignKey(
        SkillVersion, on_delete=models.PROTECT, related_name="tasks", editable=False
    )
    input = models.JSONField(default=dict, blank=True)
    backend = models.CharField(max_length=64, default="local")
    labels = models.JSONField(default=dict, blank=True, help_text=_("Required dispatcher labels."))
    priority = models.IntegerField(default=0, help_text=_("Higher runs first."))
    timeout_seconds = models.PositiveIntegerField()
    max_attempts = models.PositiveSmallIntegerField()
    attempt = models.PositiveSmallIntegerField(default=0, editable=False)
    # How many times a scheduler claimed the task. It runs ahead of ``attempt`` once an
    # attempt number was given back (a push refused for lack of room), and names the result
    # file of a claim that reuses one (see ``scheduler.result_name``).
    # The database's own default too: a process still running the code from before the
    # column, during a rolling deploy, inserts tasks without it.
    claims = models.PositiveIntegerField(default=0, db_default=0, editable=False)
    status = models.CharField(
        max_length=16, choices=TaskStatus.choices, default=TaskStatus.QUEUED, editable=False
    )
    status_reason = models.CharField(max_length=500, blank=True, default="", editable=False)
    dispatcher = models.ForeignKey(
        Dispatcher,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tasks",
        editable=False,
    )
    # Not claimable before this time (creation time, or the end of a push backoff).
    not_before = models.DateTimeField(default=timezone.now, editable=False)
    # Set when a scheduler claims the task; a claim whose push was never recorded is taken
    # back once the lease expires (the scheduler died between claim and push).
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    claimed_by = models.CharField(max_length=200, blank=True, default="", editable=False)
    # The end of the run time granted by timeout_seconds, counted from dispatch.
    deadline_at = models.DateTimeField(null=True, blank=True, editable=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    cancel_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    queued_at = models.DateTimeField(default=timezone.now, editable=False)
    dispatched_at = models.DateTimeField(null=True, blank=True, editable=False)
    pushed_at = models.DateTimeField(null=True, blank=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Running tasks only: the time of the first heartbeat the scheduler saw without this task
    # in the dispatcher's running list; cleared when a heartbeat lists it again, and on claim.
    unreported_since = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)
    exit_code = models.IntegerField(null=True, blank=True, editable=False)
    result_key = models.CharField(max_length=512, blank=True, default="", editable=False)
    result_metadata = models.JSONField(default=dict, blank=True, editable=False)
    error_message = models.TextField(blank=True, default="", editable=False)
    # sha256 of the callback token of the current attempt; empty while nobody holds one.
    callback_token_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    origin = models.CharField(max_length=16, choices=TaskOrigin.choices, default=TaskOrigin.API)
    origin_ref = models.CharField(max_length=255, blank=True, default="")
    # NULL (not "") when absent, so the unique constraint ignores tasks without a key.
    idempotency_key = models.CharField(  # noqa: DJ001
        max_length=255, null=True, blank=True, editable=False
    )
    # Who the key belongs to (an OAuth2 client or a user), so callers' keys never collide.
    idempotency_scope = models.CharField(max_length=100, blank=True, default="", editable=False)
    # sha256 of the normalised creation request, to tell a retry from a different request.
    request_fingerprint = models.CharField(max_length=64, blank=True, default="", editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
    )

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The claim query: queued rows by priority, then age (partial, so it stays small).
            models.Index(
                F("priority").desc(),
                "created_at",
                "id",
                condition=Q(status="queued"),
                name="kohakku_task_claim_idx",
            ),
            # Capacity counts and lost-dispatcher sweeps.
            models.Index(fields=["dispatcher", "status"], name="kohakku_task_disp_status_idx"),
            # The scheduler's sweeps (TaskQuerySet.overdue, expired_leases, cancel_requested,
            # timed_out_cancel_unsent): each holds only the rows its sweep acts on.
            models.Index(
                fields=["deadline_at"],
                condition=Q(status__in=_ACTIVE),
                name="kohakku_task_deadline_idx",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="dispatched", pushed_at__isnull=True),
                name="kohakku_task_lease_idx",
            ),
            models.Index(
                fields=["cancel_requested_at"],
                condition=Q(status__in=_ACTIVE, cancel_requested_at__isnull=False),
                name="kohakku_task_cancel_idx",
            ),
            models.Index(
                fields=["finished_at"],
                condition=Q(status="timed_out", cancel_sent_at__isnull=True),
                name="kohakku_task_unsent_cancel_idx",
            ),
            models.Index(fields=["status", "created_at"], name="kohakku_task_status_idx"),
            # The task list, newest first (its default order), and ?created_after/_before.
            models.Index(fields=["-created_at", "-id"], name="kohakku_task_created_idx"),
            # kohakku_prune_tasks: finished tasks, oldest first, a batch after another.
            models.Index(
                fields=["finished_at", "id"],
                condition=Q(status__in=_FINAL),
                name="kohakku_task_finished_idx",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["origin", "idempotency_scope", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="kohakku_task_unique_idempotency",
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.guid} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def push_in_flight(self, now: datetime) -> bool:
        """A claim whose push is not recorded and whose lease has not run out: its scheduler
        may be sending it right now. Taken back and given to another dispatcher, it could
        run twice; only its scheduler, or the lease's end, decides what becomes of it."""
        return (
            self.status == TaskStatus.DISPATCHED
            and self.pushed_at is None
            and self.lease_expires_at is not None
            and self.lease_expires_at >= now
        )

    @property
    def result_prefix(self) -> str:
        """Every result object of this task lives under this key prefix."""
        return result_prefix_of(self.guid)

    def callback_token_matches(self, token: str) -> bool:
        """Constant-time check of a presented callback token against the stored hash."""
        if not self.callback_token_hash or not token:
            return False
        return hmac.compare_digest(self.callback_token_hash, hash_callback_token(token))


class TaskEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("Task events are append-only.")

    def delete(self):
        raise TypeError("Task events are append-only.")


class TaskEvent(models.Model):
    """One entry of a task's history: a state change or a notable step, with its reason."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=32)
    from_status = models.CharField(max_length=16, blank=True, default="")
    to_status = models.CharField(max_length=16, blank=True, default="")
    attempt = models.PositiveSmallIntegerField(default=0)
    dispatcher_guid = models.UUIDField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)

    objects = TaskEventQuerySet.as_manager()

    class Meta:
        ordering = ["task", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.from_status}->{self.to_status}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Task events are append-only.")
        super().save(*args, **kwargs)
