"""Filters for the workflow list."""

from __future__ import annotations

import django_filters

from ..filters import StrictBooleanFilter
from .models import WebhookSource, Workflow


class WorkflowFilter(django_filters.FilterSet):
    source = django_filters.ChoiceFilter(choices=WebhookSource.choices)
    event = django_filters.CharFilter()
    enabled = StrictBooleanFilter()
    skill = django_filters.CharFilter(field_name="skill__slug")

    class Meta:
        model = Workflow
        fields = ["source", "event", "enabled", "skill"]
