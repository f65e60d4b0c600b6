"""Filters for the skills list: ``?category=``, ``?search=``, ``?archived=``."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q, QuerySet

from ..filters import StrictBooleanFilter
from .models import Skill


class SkillFilter(django_filters.FilterSet):
    """Archived skills are left out unless ``?archived=`` says which (``true`` or ``false``).

    An empty ``?archived=`` is the same as none.
    """

    category = django_filters.CharFilter(field_name="category")
    search = django_filters.CharFilter(method="filter_search", max_length=200)
    archived = StrictBooleanFilter()

    class Meta:
        model = Skill
        fields = ["category", "search", "archived"]

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(
            Q(name__icontains=value) | Q(slug__icontains=value) | Q(description__icontains=value)
        )

    def filter_queryset(self, queryset: QuerySet) -> Any:
        if not self.data.get("archived"):
            queryset = queryset.filter(archived=False)
        return super().filter_queryset(queryset)
