"""Shapes of tasks, task events and callback bodies in the API."""

from __future__ import annotations

from rest_framework import serializers

from ..fields import (
    ControllerModelSerializer,
    RejectUnknownFieldsMixin,
    StrictCharField,
    StrictIntegerField,
    reject_control_characters,
)
from .models import Task, TaskEvent


class TaskSerializer(ControllerModelSerializer):
    """A task as the API shows it."""

    skill = serializers.CharField(source="skill_version.skill.slug", read_only=True)
    version = serializers.IntegerField(source="skill_version.version_number", read_only=True)
    dispatcher = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = [
            "guid",
            "skill",
            "version",
            "status",
            "status_reason",
            "input",
            "backend",
            "labels",
            "priority",
            "timeout_seconds",
            "max_attempts",
            "attempt",
            "dispatcher",
            "origin",
            "origin_ref",
            "idempotency_key",
            "exit_code",
            "result_key",
            "result_metadata",
            "error_message",
            "created_at",
            "queued_at",
            "dispatched_at",
            "started_at",
            "finished_at",
            "deadline_at",
            "not_before",
            "cancel_requested_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_dispatcher(self, task: Task) -> dict | None:
        if task.dispatcher_id is None or task.dispatcher is None:
            return None
        return {"guid": str(task.dispatcher.guid), "name": task.dispatcher.name}


class TaskCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The body of ``POST /tasks/`` (DESIGN.md, "Pinned request shapes").

    Only the types are checked here, strictly (``"5"`` or ``5.0`` is not an integer, ``5``
    not a string, and an unknown field is refused by name); ``services.create_task`` applies
    the rules, so callers outside HTTP get the same answers.
    """

    skill = StrictCharField(max_length=64)
    version = StrictIntegerField(required=False, allow_null=True, min_value=1)
    input = serializers.DictField(required=False, allow_empty=True)
    backend = StrictCharField(
        required=False,
        default="local",
        max_length=64,
        trim_whitespace=False,
        validators=[reject_control_characters],
    )
    labels = serializers.DictField(required=False, help_text="Label name -> string value.")
    priority = StrictIntegerField(required=False, default=0)
    timeout_seconds = StrictIntegerField(required=False, allow_null=True)
    max_attempts = StrictIntegerField(required=False, allow_null=True)


class TaskEventSerializer(ControllerModelSerializer):
    """One entry of a task's history."""

    class Meta:
        model = TaskEvent
        fields = [
            "id",
            "created_at",
            "kind",
            "from_status",
            "to_status",
            "attempt",
            "dispatcher_guid",
            "reason",
            "data",
        ]
        read_only_fields = fields


class CallbackSerializer(serializers.Serializer):
    """The callback body (for the schema; the service validates the raw body)."""

    status = serializers.ChoiceField(choices=["running", "completed", "failed", "cancelled"])
    exit_code = serializers.IntegerField(required=False, allow_null=True)
    result_key = serializers.CharField(required=False, allow_blank=True)
    result_metadata = serializers.DictField(required=False)
    error_message = serializers.CharField(required=False, allow_blank=True)


class CallbackResponseSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "ok".')
    task_guid = serializers.UUIDField()
    task_status = serializers.CharField()
    changed = serializers.BooleanField(help_text="False when the callback repeated a state.")


class ResultUploadResponseSerializer(serializers.Serializer):
    result_key = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
