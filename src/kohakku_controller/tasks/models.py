"""Stand-in for the tasks domain (issue 5), just enough for workflows to create tasks.

The real model replaces this file at merge time; other domains rely only on ``Task.guid``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from ..skills.models import SkillVersion


class Task(models.Model):
    guid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = models.CharField(max_length=16, default="queued")
    skill_version = models.ForeignKey(SkillVersion, on_delete=models.PROTECT, related_name="+")
    input = models.JSONField(default=dict, blank=True)
    backend = models.CharField(max_length=64, default="local")
    labels = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    origin = models.CharField(max_length=16, default="api")
    origin_ref = models.CharField(max_length=255, blank=True, default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return str(self.guid)
