"""Filters of the task list: ``?status=…&skill=…&dispatcher=…&origin=…&created_after=…``."""

from __future__ import annotations

import re
from typing import Any

import django_filters
from django import forms

from ..filters import IsoDateTimeFilter
from ..parsers import MAX_QUERY_INT
from .models import Task, TaskOrigin, TaskStatus

_DIGITS = re.compile(r"[0-9]+")


class PositiveIntegerField(forms.IntegerField):
    """Digits only, from 1: ``1.9``, ``1.0``, ``0`` and ``-1`` are refused, never rounded."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_QUERY_INT)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> int | None:
        if value not in self.empty_values and not _DIGITS.fullmatch(str(value)):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


class PositiveIntegerFilter(django_filters.NumberFilter):
    field_class = PositiveIntegerField


class TaskFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=TaskStatus.choices)
    skill = django_filters.CharFilter(field_name="skill_version__skill__slug")
    version = PositiveIntegerFilter(field_name="skill_version__version_number")
    dispatcher = django_filters.UUIDFilter(field_name="dispatcher__guid")
    origin = django_filters.ChoiceFilter(choices=TaskOrigin.choices)
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Task
        fields = ["status", "skill", "version", "dispatcher", "origin"]
