"""Filters shared by the list endpoints."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet

BOOLEAN_CHOICES = [("true", "true"), ("false", "false")]
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
