"""Workflows: rules that turn a webhook event into a task."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _

from ..skills.models import Skill


class WebhookSource(models.TextChoices):
    GITHUB = "github", "GitHub"
    SLACK = "slack", "Slack"
    CUSTOM = "custom", _("Custom (Standard Webhooks)")


#: ``event`` value that matches every event of the source.
ANY_EVENT = "*"


class WorkflowQuerySet(models.QuerySet):
    def in_match_order(self):
        """The order in which workflows are tried: lower ``priority`` first, then by name."""
        return self.order_by("priority", "name", "id")

    def candidates_for(self, source: str, event: str):
        """Enabled workflows whose source and event fit, in match order, with their skill."""
        return (
            self.filter(enabled=True, source=source, event__in=[event, ANY_EVENT])
            .select_related("skill")
            .in_match_order()
        )


class Workflow(models.Model):
    """Match an event (source, event name, JMESPath conditions) and queue a task for it."""

    guid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=64, unique=True)
    enabled = models.BooleanField(default=True)
    # Lower numbers are tried first; equal priorities are tried by name.
    priority = models.IntegerField(default=100)
    source = models.CharField(max_length=16, choices=WebhookSource.choices)
    event = models.CharField(max_length=100, default=ANY_EVENT)
    # JMESPath expressions over {source, event, headers, payload}; all must be truthy.
    conditions = models.JSONField(default=list, blank=True)
    skill = models.ForeignKey(Skill, on_delete=models.PROTECT, related_name="workflows")
    # Pinned version number; None runs the latest non-yanked version.
    skill_version = models.PositiveIntegerField(null=True, blank=True)
    # JMESPath expression whose result (a JSON object) becomes the task input.
    input_template = models.TextField(default="payload")
    backend = models.CharField(max_length=64, default="local")
    labels = models.JSONField(default=dict, blank=True)
    task_priority = models.IntegerField(default=0)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = WorkflowQuerySet.as_manager()

    class Meta:
        ordering = ["priority", "name", "id"]
        indexes = [
            models.Index(fields=["source", "event", "enabled"], name="kohakku_workflow_match_idx")
        ]

    def __str__(self) -> str:
        return self.slug
