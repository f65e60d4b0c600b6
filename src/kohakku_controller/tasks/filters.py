"""Filters of the task list: ``?status=…&skill=…&dispatcher=…&origin=…&created_after=…``."""

from __future__ import annotations

import django_filters

from ..filters import ChoicesFilter, IsoDateTimeFilter, WholeNumberFilter
from .models import Task, TaskOrigin, TaskStatus

#: The names this filter and its field had here before they moved to
#: ``kohakku_controller.filters``.
PositiveIntegerFilter = WholeNumberFilter
PositiveIntegerField = WholeNumberFilter.field_class


class TaskFilter(django_filters.FilterSet):
    status = ChoicesFilter(choices=TaskStatus.choices)
    skill = django_filters.CharFilter(field_name="skill_version__skill__slug")
    version = WholeNumberFilter(field_name="skill_version__version_number")
    dispatcher = django_filters.UUIDFilter(field_name="dispatcher__guid")
    origin = django_filters.ChoiceFilter(choices=TaskOrigin.choices)
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Task
        fields = ["status", "skill", "version", "dispatcher", "origin"]
