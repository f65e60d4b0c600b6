"""The dispatcher registry: execution agents that check in, heartbeat and take tasks."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import models
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
    def online(self, now=None):
        """Dispatchers whose last heartbeat is younger than interval x MISSED_HEARTBEATS.

        Each row has its own interval, and integer x duration arithmetic is not portable
        across databases, so the cut-off is spelled out per distinct interval (a handful of
        values in practice: one extra, cheap query).
        """
        now = now or timezone.now()
        missed = kohakku_settings.MISSED_HEARTBEATS
        intervals = (
            self.model.objects.order_by()
            .values_list("heartbeat_interval_seconds", flat=True)
            .distinct()
        )
        condition = models.Q(pk__in=[])
        for interval in intervals:
            condition |= models.Q(
                heartbeat_interval_seconds=interval,
                last_heartbeat_at__gt=now - timedelta(seconds=interval * missed),
            )
        return self.filter(condition)

    def accepting_work(self, now=None):
        """Online, enabled and not draining."""
        return self.online(now).filter(enabled=True, draining=False)


class Dispatcher(models.Model):
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
    # What the last heartbeat reported (None when it did not say).
    reported_free_capacity = models.IntegerField(null=True, blank=True, editable=False)
    reported_task_guids = models.JSONField(default=list, blank=True, editable=False)

    objects = DispatcherQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["last_heartbeat_at"], name="kohakku_disp_heartbeat_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def offline_after(self) -> timedelta:
        return timedelta(
            seconds=self.heartbeat_interval_seconds * kohakku_settings.MISSED_HEARTBEATS
        )

    def is_online(self, now=None) -> bool:
        now = now or timezone.now()
        return self.last_heartbeat_at is not None and (
            now - self.last_heartbeat_at < self.offline_after
        )

    def status(self, now=None) -> str:
        """Derived on every read: disabled and draining show through, then liveness."""
        if not self.enabled:
            return DispatcherStatus.DISABLED
        if not self.is_online(now):
            return DispatcherStatus.OFFLINE
        if self.draining:
            return DispatcherStatus.DRAINING
        return DispatcherStatus.ONLINE
