"""Filters shared by the list endpoints."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import django_filters
from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField, MultipleChoiceField

from .parsers import ASCII_DIGITS, MAX_QUERY_INT

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
            if not settings.USE_TZ:
                # Stored times are then TIME_ZONE's wall times (and SQLite refuses aware ones).
                try:
                    return timezone.make_naive(parsed)
                except OverflowError:
                    raise ValidationError(self.error_messages["invalid"], code="invalid") from None
        return parsed


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """django-filter's ``IsoDateTimeFilter``, with times past the ends of the calendar in UTC
    refused as invalid (400 naming the parameter)."""

    field_class = _StorableIsoDateTimeField


class _WholeNumberField(forms.IntegerField):
    """Digits only, from ``min_value`` (1) to ``max_value``: ``1.9``, ``1.0``, ``+2`` and
    ``-1`` are refused, never rounded or read as something else."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_QUERY_INT)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> int | None:
        if value not in self.empty_values and not ASCII_DIGITS.fullmatch(str(value)):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


class WholeNumberFilter(django_filters.NumberFilter):
    """``?name=N`` for a whole number in ``min_value``..``max_value`` (default 1 up to what a
    database column holds); anything else is a 400 that names the parameter."""

    field_class = _WholeNumberField


class _ChoicesField(MultipleChoiceField):
    def clean(self, value: Any) -> Any:
        # ``?status=`` is ignored, as an empty value is by every other filter.
        return super().clean([item for item in value or [] if item != ""])


class ChoicesFilter(django_filters.MultipleChoiceFilter):
    """``?name=a&name=b``: the rows with any of the values. A value outside the choices is a
    400 naming the parameter; an empty one is ignored.

    Unlike django-filter's ``MultipleChoiceFilter`` it adds no ``DISTINCT``: on a column of
    the listed rows' own table no row can match twice, and ``DISTINCT`` over every selected
    column made PostgreSQL sort the whole filtered table on disk for each page.
    """

    field_class = _ChoicesField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("distinct", False)
        super().__init__(*args, **kwargs)
