"""Validation of what dispatchers and operators send, and the shapes the API returns.

Every field is strictly typed: a string where a number is expected (or the reverse) is a
400 naming the field, never a silent conversion. Unknown fields are refused too, so a typo
in a dispatcher's configuration shows up at once instead of being ignored.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..fields import (
    BoundedListField,
    ControllerModelSerializer,
    IsoDateTimeField,
    LabelsField,
    RejectUnknownFieldsMixin,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictUUIDField,
    reject_control_characters,
)
from .labels import BACKEND_NAME_RE, BACKEND_NAME_RULE, has_control_characters
from .models import Dispatcher, DispatcherStatus

NAME_MAX_LENGTH = 100
ENDPOINT_URL_MAX_LENGTH = 500
MAX_BACKENDS = 32
CLOUD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# An ASCII host name (IDNA-encoded) of labels of 1-63 characters, or an IPv4 address; a
# final "." is a rooted name.
_HOST_NAME_RE = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")
MIN_HEARTBEAT_INTERVAL = 5
MAX_HEARTBEAT_INTERVAL = 3600
MIN_CAPACITY = 1
MAX_CAPACITY = 10_000
VERSION_MAX_LENGTH = 64
METADATA_MAX_BYTES = 16 * 1024
MAX_RUNNING_TASKS = 10_000
MAX_GRACE_SECONDS = 30 * 24 * 3600


@extend_schema_field(OpenApiTypes.URI)
class EndpointURLField(StrictCharField):
    """An absolute http(s) URL with a host, without credentials."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", ENDPOINT_URL_MAX_LENGTH)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if has_control_characters(value) or any(char.isspace() for char in value):
            raise serializers.ValidationError("Must not contain spaces or control characters.")
        try:
            parts = urlsplit(value)
            port = parts.port  # raises ValueError when not a number in range
        except ValueError:
            raise serializers.ValidationError("Enter a valid URL.") from None
        if parts.scheme not in ("http", "https"):
            raise serializers.ValidationError("Must be an http:// or https:// URL.")
        if not parts.hostname:
            raise serializers.ValidationError("Must name a host.")
        if not _is_callable_host(value, parts.hostname, bracketed=parts.netloc.startswith("[")):
            raise serializers.ValidationError(
                "Must name a valid host: a name of dot-separated labels of 1-63 characters, "
                "an IPv4 address or a bracketed IPv6 address."
            )
        if parts.username is not None or parts.password is not None:
            raise serializers.ValidationError("Must not contain credentials.")
        if port == 0:
            raise serializers.ValidationError("Enter a valid URL.")
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise serializers.ValidationError("Must not contain a query or a fragment.")
        # Paths are appended to it ("{endpoint_url}/tasks/"), so it is kept without a final "/".
        return value.rstrip("/")


def _is_callable_host(url: str, hostname: str, *, bracketed: bool) -> bool:
    """True for a host the scheduler's HTTP client can call: an IPv6 literal, an IPv4
    address, or a name of letters, digits, ``-`` and ``_`` once IDNA-encoded.

    ``urlsplit`` leaves ``[v1.x]``, ``a..b``, ``999.1.1.1`` or ``a<b>`` in place; the client
    would refuse them (or percent-encode them into a name no resolver knows) only when it is
    asked to connect. ``bracketed``: the URL wrote the host in ``[...]``.
    """
    if bracketed:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return False
        return True
    try:
        raw_host = httpx.URL(url).raw_host  # refuses bad IPv4 addresses and IDNA 2008 names
    except httpx.InvalidURL:
        return False
    return _HOST_NAME_RE.fullmatch(raw_host) is not None


class BackendsField(BoundedListField):
    """A list of distinct short backend names."""

    def __init__(self, **kwargs: Any) -> None:
        child = StrictCharField(trim_whitespace=False)
        super().__init__(child=child, max_length=MAX_BACKENDS, **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        values = super().to_internal_value(data)
        errors = {}
        seen: set[str] = set()
        for index, value in enumerate(values):
            if not BACKEND_NAME_RE.fullmatch(value):
                errors[index] = [f"{value!r} is not a backend name ({BACKEND_NAME_RULE})."]
            elif value in seen:
                errors[index] = [f"{value!r} is listed twice."]
            seen.add(value)
        if errors:
            raise serializers.ValidationError(errors)
        return values


@extend_schema_field({"type": "object", "additionalProperties": True})
class MetadataField(serializers.Field):
    """A free-form JSON object, at most ``METADATA_MAX_BYTES`` once encoded."""

    default_error_messages = {"not_an_object": "Expected a JSON object."}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_an_object")
        encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if len(encoded.encode("utf-8", "surrogatepass")) > METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"At most {METADATA_MAX_BYTES} bytes once encoded as JSON."
            )
        return data

    def to_representation(self, value: Any) -> dict[str, Any]:
        return value


class CheckinSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The body of ``POST /dispatchers/checkin/``.

    Only ``name`` and ``endpoint_url`` are required. On a repeated check-in, fields that are
    left out keep their stored values.
    """

    name = StrictCharField(
        max_length=NAME_MAX_LENGTH,
        validators=[reject_control_characters],
        help_text="Unique name of the dispatcher; check-ins are idempotent by name.",
    )
    endpoint_url = EndpointURLField(help_text="Where the controller pushes tasks: http(s).")
    cloud = StrictCharField(
        required=False, allow_blank=True, max_length=64, help_text="Where it runs, e.g. aws."
    )
    backends = BackendsField(required=False, help_text="Backends it can run tasks on.")
    labels = LabelsField(required=False, help_text="Flat string map matched by tasks.")
    heartbeat_interval_seconds = StrictIntegerField(
        required=False, min_value=MIN_HEARTBEAT_INTERVAL, max_value=MAX_HEARTBEAT_INTERVAL
    )
    capacity = StrictIntegerField(
        required=False,
        min_value=MIN_CAPACITY,
        max_value=MAX_CAPACITY,
        help_text="Maximum concurrent tasks.",
    )
    version = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=VERSION_MAX_LENGTH,
        validators=[reject_control_characters],
        help_text="The dispatcher's software version.",
    )
    metadata = MetadataField(required=False, help_text="Free-form JSON object.")
    rotate_secret = StrictBooleanField(
        required=False,
        default=False,
        help_text="Issue a new signing secret; the previous one stays valid for a grace period.",
    )

    def validate_cloud(self, value: str) -> str:
        if value and not CLOUD_RE.fullmatch(value):
            raise serializers.ValidationError(
                "1-64 characters: letters, digits, '.', '_' and '-', starting with a letter "
                "or digit."
            )
        return value


class CheckinResponseSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "ok".')
    action = serializers.ChoiceField(choices=["created", "updated"])
    dispatcher_guid = serializers.UUIDField()
    dispatcher_slug = serializers.SlugField()
    signing_secret = serializers.CharField(
        required=False,
        help_text="Present only on creation and on rotation; it is not shown again.",
    )


class HeartbeatSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The optional body of ``POST /dispatchers/{guid}/heartbeat/``."""

    running_tasks = BoundedListField(
        child=StrictUUIDField(),
        required=False,
        max_length=MAX_RUNNING_TASKS,
        help_text="Guids of the tasks the dispatcher holds: accepted, until their final "
        "callback is delivered.",
    )
    free_capacity = StrictIntegerField(
        required=False,
        min_value=0,
        max_value=MAX_CAPACITY,
        help_text="How many more tasks it can take now.",
    )


class HeartbeatResponseSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "ok".')
    dispatcher_guid = serializers.UUIDField()


class DispatcherControlsSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """What an operator may change: ``PATCH /dispatchers/{guid}/``."""

    unknown_field_message = "Unknown or read-only field; writable: enabled, draining, capacity."

    enabled = StrictBooleanField(required=False)
    draining = StrictBooleanField(required=False)
    capacity = StrictIntegerField(required=False, min_value=MIN_CAPACITY, max_value=MAX_CAPACITY)


class RotateSecretSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The optional body of ``POST /dispatchers/{guid}/rotate-secret/``."""

    grace_seconds = StrictIntegerField(
        required=False,
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        help_text="Seconds the previous secret stays valid (default: the setting "
        "SECRET_ROTATION_GRACE_SECONDS).",
    )


class RotateSecretResponseSerializer(serializers.Serializer):
    dispatcher_guid = serializers.UUIDField()
    signing_secret = serializers.CharField(help_text="The new secret; it is not shown again.")
    previous_secret_valid_until = IsoDateTimeField(allow_null=True)


class ApplicationSerializer(serializers.Serializer):
    client_id = serializers.CharField()
    name = serializers.CharField()


class DispatcherSerializer(ControllerModelSerializer):
    """A dispatcher as operators see it. Signing secrets are never part of it."""

    status = serializers.SerializerMethodField()
    labels = LabelsField()
    metadata = MetadataField()
    application = ApplicationSerializer(read_only=True, allow_null=True)
    reported_running_tasks = serializers.ListField(
        source="reported_task_guids", child=serializers.CharField(), read_only=True
    )

    class Meta:
        model = Dispatcher
        fields = [
            "guid",
            "name",
            "slug",
            "status",
            "endpoint_url",
            "cloud",
            "backends",
            "labels",
            "heartbeat_interval_seconds",
            "capacity",
            "enabled",
            "draining",
            "version",
            "metadata",
            "application",
            "first_checkin_at",
            "last_checkin_at",
            "last_heartbeat_at",
            "lost_at",
            "reported_free_capacity",
            "reported_running_tasks",
            "busy_until",
            "previous_secret_valid_until",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=DispatcherStatus.choices))
    def get_status(self, dispatcher: Dispatcher) -> str:
        now = self.context.setdefault("now", timezone.now())
        return str(dispatcher.status(now))
