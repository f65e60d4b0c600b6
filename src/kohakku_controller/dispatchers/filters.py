"""Filters of the operator's dispatcher list: ``?status=``, ``?backend=``, ``?cloud=``,
``?label=key=value`` (repeatable, all must match) and ``?search=`` (name)."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from .labels import BACKEND_NAME_RE, BACKEND_NAME_RULE, LABEL_KEY_RE, has_control_characters
from .models import Dispatcher, DispatcherStatus


def _backend_name(value: str) -> None:
    # A name no check-in accepts matches nothing: say so instead of answering [].
    if not BACKEND_NAME_RE.fullmatch(value):
        raise forms.ValidationError(f"Not a backend name ({BACKEND_NAME_RULE}).")


class LabelSelectorField(forms.Field):
    """Repeated ``key=value`` query parameters, parsed into a dict."""

    widget = forms.SelectMultiple

    def to_python(self, value: Any) -> dict[str, str]:
        if not value:
            return {}
        selector: dict[str, str] = {}
        for item in value:
            key, sep, label_value = item.partition("=")
            if not sep or not LABEL_KEY_RE.fullmatch(key):
                raise forms.ValidationError(
                    f"{item!r} is not a label selector; use key=value, e.g. label=gpu=a100."
                )
            if has_control_characters(label_value):
                raise forms.ValidationError(
                    f"The value of label {key!r} has control characters; no label holds them."
                )
            if key in selector and selector[key] != label_value:
                raise forms.ValidationError(f"Label {key!r} is given twice with other values.")
            selector[key] = label_value
        return selector

    def validate(self, value: Any) -> None:
        # Empty is allowed; to_python did the checking.
        return None


@extend_schema_field({"type": "array", "items": {"type": "string", "example": "gpu=a100"}})
class LabelSelectorFilter(django_filters.Filter):
    field_class = LabelSelectorField

    def filter(self, qs: QuerySet, value: dict[str, str]) -> QuerySet:
        return qs.with_labels(value) if value else qs


class DispatcherFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=DispatcherStatus.choices,
        method="filter_status",
        help_text="Derived status: online, offline, draining or disabled.",
    )
    backend = django_filters.CharFilter(
        method="filter_backend",
        help_text="Dispatchers that support this backend.",
        strip=False,
        validators=[_backend_name],
    )
    cloud = django_filters.CharFilter(field_name="cloud", help_text="Exact cloud name.")
    label = LabelSelectorFilter(
        help_text="key=value; repeat the parameter to require several labels."
    )
    search = django_filters.CharFilter(
        field_name="name", lookup_expr="icontains", help_text="Part of the name."
    )

    class Meta:
        model = Dispatcher
        fields: list[str] = []

    def filter_status(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.with_status(value, timezone.now()) if value else queryset

    @extend_schema_field(OpenApiTypes.STR)
    def filter_backend(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.with_backend(value) if value else queryset
