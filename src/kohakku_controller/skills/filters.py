"""Filters for the skills list: ``?category=``, ``?search=``, ``?archived=``."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q, QuerySet

from ..filters import BOOLEAN_CHOICES
from .models import Skill


class SkillFilter(django_filters.FilterSet):
    """Archived skills are left out unless ``?archived=true`` (or ``false``) is given.

    An empty ``?archived=`` is the same as none.
    """

    category = django_filters.CharFilter(field_name="category")
    search = django_filters.CharFilter(method="filter_search", max_length=200)
    archived = django_filters.ChoiceFilter(choices=BOOLEAN_CHOICES, method="filter_archived")

    class Meta:
        model = Skill
        fields = ["category", "search", "archived"]

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(
            Q(name__icontains=value) | Q(slug__icontains=value) | Q(description__icontains=value)
        )

    def filter_archived(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(archived=value == "true")

    def filter_queryset(self, queryset: QuerySet) -> Any:
        if not self.data.get("archived"):
            queryset = queryset.filter(archived=False)
        return super().filter_queryset(queryset)
