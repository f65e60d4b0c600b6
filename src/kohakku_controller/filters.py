"""Filters shared by the list endpoints."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField

#: What django-filter's ``BooleanFilter`` reads as true and false, accepted alike.
_TRUE, _FALSE = ("true", "True", "1"), ("false", "False", "0")


class StrictBooleanFilter(django_filters.ChoiceFilter):
    """``?name=true`` or ``?name=false`` (or ``True``/``1``, ``False``/``0``); any other value
    is a 400 that names the parameter.

    django-filter's ``BooleanFilter`` ignores a value it cannot read, so a typo such as
    ``?enabled=flase`` returned the whole list, unfiltered, as if it had been obeyed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("choices", [(value, value) for value in (*_TRUE, *_FALSE)])
        super().__init__(*args, **kwargs)

    def filter(self, qs: QuerySet, value: Any) -> QuerySet:
        if value in ("", None):
            return qs
        return super().filter(qs, value in _TRUE)


class _StorableIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time that a database can compare with: one whose UTC value is a real date
    (``9999-12-31T23:59:59-01:00`` is in the year 10000 in UTC, and failed as a 500)."""

    def to_python(self, value: Any) -> Any:
        parsed = super().to_python(value)
        if parsed is not None and timezone.is_aware(parsed):
            try:
                parsed.astimezone(UTC)
            except OverflowError:
                raise ValidationError(self.error_messages["invalid"], code="invalid") from None
        return parsed


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """django-filter's ``IsoDateTimeFilter``, with times past the ends of the calendar in UTC
    refused as invalid (400 naming the parameter)."""

    field_class = _StorableIsoDateTimeField
