"""The dispatcher registry: execution agents that check in, heartbeat and take tasks."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

from django.db import connections, models
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from oauth2_provider.settings import oauth2_settings

from ..conf import kohakku_settings


class DispatcherStatus(models.TextChoices):
    ONLINE = "online", _("online")
    OFFLINE = "offline", _("offline")
    DRAINING = "draining", _("draining")
    DISABLED = "disabled", _("disabled")


class DispatcherQuerySet(models.QuerySet):
    """Liveness and matching filters. ``status`` is derived, so it is a query, not a column."""

    def _with_liveness(self, now: datetime | None, *, alive: bool) -> DispatcherQuerySet:
        """Rows whose last heartbeat is (``alive``) or is not younger than their cut-off.

        Each row has its own interval, so the cut-off is computed per row in the database:
        ``last_heartbeat_at + heartbeat_interval_seconds x MISSED_HEARTBEATS`` against
        ``now``, one term whatever the number of distinct intervals (an ``OR`` per interval
        grew past SQLite's expression-depth limit at 1,000 of them).
        """
        now = now or timezone.now()
        missed = kohakku_settings.MISSED_HEARTBEATS
        # integer x duration, spelled as a function: Django's own expression for it is not
        # supported on SQLite, where a duration is an integer of microseconds anyway.
        offline_after = models.Func(
            models.F("heartbeat_interval_seconds"),
            models.Value(timedelta(seconds=missed)),
            template="(%(expressions)s)",
            arg_joiner=" * ",
            output_field=models.DurationField(),
        )
        offline_at = models.ExpressionWrapper(
            models.F("last_heartbeat_at") + offline_after, output_field=models.DateTimeField()
        )
        queryset = self.alias(_offline_at=offline_at)
        if alive:
            return queryset.filter(_offline_at__gt=now)
        return queryset.filter(
            models.Q(last_heartbeat_at__isnull=True) | models.Q(_offline_at__lte=now)
        )

    def online(self, now: datetime | None = None) -> DispatcherQuerySet:
        """Dispatchers whose last heartbeat is younger than interval x MISSED_HEARTBEATS.

        Liveness only: disabled and draining dispatchers are included if they beat.
        """
        return self._with_liveness(now, alive=True)

    def not_online(self, now: datetime | None = None) -> DispatcherQuerySet:
        """The complement of :meth:`online`: no heartbeat yet, or too long ago."""
        return self._with_liveness(now, alive=False)

    def accepting_work(self, now: datetime | None = None) -> DispatcherQuerySet:
        """Online, enabled and not draining."""
        return self.online(now).filter(enabled=True, draining=False)

    def with_status(self, status: str, now: datetime | None = None) -> DispatcherQuerySet:
        """Dispatchers whose derived :meth:`Dispatcher.status` is ``status`` at ``now``."""
        if status == DispatcherStatus.DISABLED:
            return self.filter(enabled=False)
        if status == DispatcherStatus.OFFLINE:
            return self.not_online(now).filter(enabled=True)
        if status == DispatcherStatus.DRAINING:
            return self.online(now).filter(enabled=True, draining=True)
        if status == DispatcherStatus.ONLINE:
            return self.accepting_work(now)
        raise ValueError(f"unknown dispatcher status {status!r}")

    def with_backend(self, backend: str) -> DispatcherQuerySet:
        """Dispatchers that list ``backend`` among their backends."""
        if connections[self.db].features.supports_json_field_contains:
            return self.filter(backends__contains=[backend])
        # Backend names are validated short names (no quotes), so the quoted name occurs in
        # the stored JSON text exactly when it is an element of the list.
        return self.alias(_backends_text=Cast("backends", models.TextField())).filter(
            _backends_text__contains=json.dumps(backend)
        )

    def with_labels(self, labels: dict[str, str]) -> DispatcherQuerySet:
        """Dispatchers that carry every ``key=value`` pair of ``labels``."""
        if not labels:
            return self
        if connections[self.db].features.supports_json_field_contains:
            return self.filter(labels__contains=dict(labels))
        queryset = self
        for index, (key, value) in enumerate(sorted(labels.items())):
            alias = f"_label_{index}"
            queryset = queryset.alias(**{alias: KeyTransform(key, "labels")}).filter(
                **{alias: value}
            )
        return queryset


class Dispatcher(models.Model):
    """An execution agent that checked in. Its ``status()`` is derived from heartbeats."""

    guid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=120, unique=True, editable=False)
    endpoint_url = models.URLField(max_length=500)
    cloud = models.CharField(max_length=64, blank=True, default="")
    backends = models.JSONField(default=list, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    heartbeat_interval_seconds = models.PositiveIntegerField(default=60)
    capacity = models.PositiveIntegerField(default=4, help_text=_("Maximum concurrent tasks."))
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False)
    application = models.ForeignKey(
        oauth2_settings.APPLICATION_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="kohakku_dispatchers",
        help_text=_("The OAuth2 client that checked this dispatcher in; only it may act for it."),
    )
    # Signing secrets are stored encrypted (see dispatchers.secrets), never in clear.
    signing_secret_encrypted = models.TextField(editable=False)
    previous_signing_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    previous_secret_valid_until = models.DateTimeField(null=True, blank=True, editable=False)
    version = models.CharField(max_length=64, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    first_checkin_at = models.DateTimeField(default=timezone.now, editable=False)
    last_checkin_at = models.DateTimeField(default=timezone.now, editable=False)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set once by mark_lost_dispatchers() when heartbeats stop; cleared by the next heartbeat.
    lost_at = models.DateTimeField(null=True, blank=True, editable=False)
    # What heartbeats reported: the free capacity of the last heartbeat (None when it did not
    # say), and the task guids of the last heartbeat that listed them (a heartbeat that omits
    # the list leaves it as it was).
    reported_free_capacity = models.IntegerField(null=True, blank=True, editable=False)
    reported_task_guids = models.JSONField(default=list, blank=True, editable=False)
    # When a heartbeat last reported those tasks, or (leaving the list out) said they had not
    # changed: the time the list is as of. A check-in carries no list and leaves it as it is.
    tasks_reported_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when the dispatcher refused a push for lack of room (429, or 503 with Retry-After):
    # the scheduler sends it no task before this time.
    busy_until = models.DateTimeField(null=True, blank=True, editable=False)

    objects = DispatcherQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        # Deliberately no index on last_heartbeat_at: every heartbeat rewrites it, and an
        # index on it would turn each heartbeat into a non-HOT update touching every index
        # of the table (PostgreSQL). Liveness queries scan the registry, which stays small
        # (10,000 rows scan in about a millisecond).

    def __str__(self) -> str:
        return self.name

    def is_busy(self, now: datetime | None = None) -> bool:
        """True while the wait after its last refused or unreachable push (``busy_until``)
        holds."""
        return self.busy_until is not None and self.busy_until > (now or timezone.now())

    @property
    def offline_after(self) -> timedelta:
        return timedelta(
            seconds=self.heartbeat_interval_seconds * kohakku_settings.MISSED_HEARTBEATS
        )

    def is_online(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.last_heartbeat_at is not None and (
            now - self.last_heartbeat_at < self.offline_after
        )

    def status(self, now: datetime | None = None) -> str:
        """Derived on every read: disabled and draining show through, then liveness."""
        if not self.enabled:
            return DispatcherStatus.DISABLED
        if not self.is_online(now):
            return DispatcherStatus.OFFLINE
        if self.draining:
            return DispatcherStatus.DRAINING
        return DispatcherStatus.ONLINE
