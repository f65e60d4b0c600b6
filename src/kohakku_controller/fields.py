"""Strictly typed serializer fields, shared by every endpoint of the API.

A string where a number is expected (or the reverse) is a 400 naming the field, never a
silent conversion; unknown fields are refused too, so a typo in a client's configuration
shows up at once instead of being ignored.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import ISO_8601, serializers

from .dispatchers.labels import has_control_characters, validate_labels


def reject_control_characters(value: str) -> str:
    if has_control_characters(value):
        raise serializers.ValidationError("Must not contain control characters.")
    return value


class StrictCharField(serializers.CharField):
    """A string, and only a string: numbers and booleans are refused, not converted.

    With ``trim_whitespace`` (the default) only spaces (Unicode ``Zs``: `` ``, no-break and
    ideographic spaces, ...) are trimmed. DRF's ``str.strip()`` also drops line breaks, tabs
    and other control characters at either end, so a name sent as ``"gpu-1\n"`` became
    ``"gpu-1"`` before any validator could refuse it. A value of whitespace alone is blank,
    as with DRF.
    """

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return trim_spaces(data) if self.trim_whitespace else data


def trim_spaces(value: str) -> str:
    """``value`` without the space separators (Unicode category ``Zs``) at either end."""
    start, end = 0, len(value)
    while start < end and unicodedata.category(value[start]) == "Zs":
        start += 1
    while end > start and unicodedata.category(value[end - 1]) == "Zs":
        end -= 1
    return value[start:end]


class BoundedListField(serializers.ListField):
    """A list whose ``max_length`` is checked before its items are, so an oversized list is
    refused at once instead of after every item was validated."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: strings, floats and booleans are refused."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``; ``"true"``, ``1`` and the like are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictUUIDField(serializers.UUIDField):
    """A UUID written as a string; returned in canonical form."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        try:
            return str(uuid.UUID(data))
        except ValueError:
            self.fail("invalid", value=data)


class RejectUnknownFieldsMixin:
    """A body may only hold the serializer's writable fields; anything else is a 400."""

    unknown_field_message = "Unknown field."
    #: Let read-only fields through (ignored), so that a resource read with GET can be sent
    #: back with PUT as it is.
    read_only_fields_accepted = False

    def to_internal_value(self, data: Any) -> Any:
        errors: dict[str, Any] = {}
        if isinstance(data, Mapping):
            known = {
                name
                for name, field in self.fields.items()
                if self.read_only_fields_accepted or not field.read_only
            }
            for name in data:
                if name not in known:
                    errors[str(name)] = [self.unknown_field_message]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, Mapping):
                raise
            errors.update(exc.detail)
            value = None
        if errors:
            raise serializers.ValidationError(errors)
        return value


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
class LabelsField(serializers.Field):
    """A flat map of label keys to string values, with caps on count and lengths."""

    def to_internal_value(self, data: Any) -> dict[str, str]:
        return validate_labels(data)

    def to_representation(self, value: Any) -> dict[str, str]:
        return dict(value)


def with_offset(value: datetime) -> datetime:
    """``value`` as an aware time. Under ``USE_TZ = False`` Django stores and returns wall
    times of ``TIME_ZONE``; written without an offset, no client could place them."""
    return timezone.make_aware(value) if timezone.is_naive(value) else value


class IsoDateTimeField(serializers.DateTimeField):
    """A time, always written in ISO 8601 with its offset (the API's contract), whatever a
    host's global ``REST_FRAMEWORK["DATETIME_FORMAT"]`` or ``USE_TZ`` say."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("format", ISO_8601)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        if isinstance(value, datetime) and not settings.USE_TZ and self.format == ISO_8601:
            # DRF writes a USE_TZ = False time as it is stored, without an offset.
            text = with_offset(value).isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        return super().to_representation(value)


# The two base serializers below have comments, not docstrings: drf-spectacular describes a
# serializer without a docstring of its own with its bases' docstring.


# A ModelSerializer whose times are ISO 8601 whatever the host's DRF settings say. The
# controller's response serializers build on it; so can an extension's.
class ControllerModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.DateTimeField: IsoDateTimeField,
    }


# A ModelSerializer whose generated fields are the strict ones above.
class StrictModelSerializer(ControllerModelSerializer):
    serializer_field_mapping = {
        **ControllerModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.IntegerField: StrictIntegerField,
        models.SmallIntegerField: StrictIntegerField,
        models.BigIntegerField: StrictIntegerField,
        models.PositiveIntegerField: StrictIntegerField,
        models.PositiveSmallIntegerField: StrictIntegerField,
        models.PositiveBigIntegerField: StrictIntegerField,
        models.BooleanField: StrictBooleanField,
    }
