"""Workflow representations and the dry-run request and answer."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..fields import (
    BoundedListField,
    LabelsField,
    RejectUnknownFieldsMixin,
    StrictCharField,
    StrictIntegerField,
    StrictModelSerializer,
    reject_control_characters,
)
from ..parsers import MAX_QUERY_INT
from ..skills.models import Skill, SkillVersion
from ..tasks.services import placement_errors
from . import services
from .expressions import MAX_CONDITIONS, MAX_EXPRESSION_LENGTH, json_writable
from .models import ANY_EVENT, WebhookSource, Workflow


class WorkflowSerializer(RejectUnknownFieldsMixin, StrictModelSerializer):
    read_only_fields_accepted = True

    slug = serializers.SlugField(
        max_length=64,
        required=False,
        validators=[],  # uniqueness is checked in validate() and on save
        help_text="Derived from the name if absent; cannot change afterwards.",
    )
    event = StrictCharField(
        max_length=100, default=ANY_EVENT, validators=[reject_control_characters]
    )
    conditions = BoundedListField(
        child=StrictCharField(max_length=MAX_EXPRESSION_LENGTH, trim_whitespace=False),
        max_length=MAX_CONDITIONS,
        default=list,
        help_text="JMESPath expressions over {source, event, headers, payload}; all must be "
        "truthy.",
    )
    skill = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Skill.objects.active(),
        error_messages={
            "does_not_exist": "No skill with the slug {value!r}, or it is archived.",
            "invalid": "Must be a skill's slug.",
        },
    )
    skill_version = StrictIntegerField(min_value=1, allow_null=True, default=None)
    input_template = StrictCharField(
        max_length=MAX_EXPRESSION_LENGTH,
        default="payload",
        trim_whitespace=False,
        help_text="JMESPath expression that must yield a JSON object: the task input.",
    )
    labels = LabelsField(default=dict)
    # The upper bound is TASK_MAX_TIMEOUT_SECONDS, checked with the other task settings.
    timeout_seconds = StrictIntegerField(
        min_value=1, max_value=MAX_QUERY_INT, allow_null=True, default=None
    )

    class Meta:
        model = Workflow
        fields = [
            "guid",
            "name",
            "slug",
            "enabled",
            "priority",
            "source",
            "event",
            "conditions",
            "skill",
            "skill_version",
            "input_template",
            "backend",
            "labels",
            "task_priority",
            "timeout_seconds",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["guid", "created_at", "updated_at"]

    def validate_name(self, value: str) -> str:
        return reject_control_characters(value)

    def validate_conditions(self, value: list[str]) -> list[str]:
        errors = services.condition_errors(value)
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_input_template(self, value: str) -> str:
        error = services.template_error(value)
        if error:
            raise serializers.ValidationError(error)
        return value

    def validate_slug(self, value: str) -> str:
        if self.instance is not None and value != self.instance.slug:
            raise serializers.ValidationError("The slug cannot change once set.")
        if value in services.RESERVED_SLUGS:
            raise serializers.ValidationError(f"{value!r} is reserved.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is None:
            slug = attrs.get("slug") or services.derive_slug(attrs.get("name", ""))
            if not slug:
                raise serializers.ValidationError(
                    {"slug": ["Cannot derive a slug from the name; give one."]}
                )
            if slug in services.RESERVED_SLUGS:
                raise serializers.ValidationError({"slug": [f"{slug!r} is reserved."]})
            if Workflow.objects.filter(slug=slug).exists():
                raise serializers.ValidationError(
                    {"slug": [f"A workflow with slug {slug!r} already exists."]}
                )
            attrs["slug"] = slug
        self._check_task_settings(attrs)
        skill = attrs.get("skill", getattr(self.instance, "skill", None))
        version = attrs.get("skill_version", getattr(self.instance, "skill_version", None))
        if (
            skill is not None
            and version is not None
            and not SkillVersion.objects.filter(skill=skill, version_number=version).exists()
        ):
            raise serializers.ValidationError(
                {"skill_version": [f"Skill {skill.slug!r} has no version {version}."]}
            )
        return attrs

    def _check_task_settings(self, attrs: dict[str, Any]) -> None:
        """Refuse settings every task of this workflow would be refused for, field by field."""

        def current(field: str, default: Any) -> Any:
            return attrs.get(field, getattr(self.instance, field, default))

        timeout = current("timeout_seconds", None)
        errors = placement_errors(
            backend=current("backend", "local"),
            labels=current("labels", {}),
            priority=current("task_priority", 0),
            timeout_seconds=1 if timeout is None else timeout,
        )
        renamed = {"priority": "task_priority"}
        if errors:
            raise serializers.ValidationError(
                {renamed.get(field, field): reasons for field, reasons in errors.items()}
            )

    def create(self, validated_data: dict[str, Any]) -> Workflow:
        return services.save_workflow(Workflow(), **validated_data)

    def update(self, instance: Workflow, validated_data: dict[str, Any]) -> Workflow:
        return services.save_workflow(instance, **validated_data)


class DryRunRequestSerializer(serializers.Serializer):
    """A sample event, shaped as the ingest endpoint would see it."""

    source = serializers.ChoiceField(
        choices=WebhookSource.choices,
        required=False,
        help_text="Defaults to the workflow's source (required on the collection dry-run).",
    )
    event = StrictCharField(
        max_length=100,
        required=False,
        help_text="Defaults to the workflow's event unless that is '*'.",
    )
    headers = serializers.DictField(
        child=StrictCharField(max_length=8192, allow_blank=True), default=dict
    )
    payload = serializers.JSONField(help_text="The event body, as the sender would send it.")


class ConditionResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    expression = serializers.CharField()
    truthy = serializers.BooleanField()
    value = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    reason = serializers.CharField()


class EvaluationSerializer(serializers.Serializer):
    workflow = serializers.CharField(help_text="Workflow slug.")
    matched = serializers.BooleanField()
    reason = serializers.CharField()
    source_matched = serializers.BooleanField()
    event_matched = serializers.BooleanField()
    conditions = ConditionResultSerializer(many=True)
    failed_condition = ConditionResultSerializer(allow_null=True)
    input = serializers.JSONField(allow_null=True, help_text="The task input it would queue.")
    input_error = serializers.CharField(allow_null=True)


class CollectionDryRunSerializer(serializers.Serializer):
    matched = serializers.BooleanField()
    routed_to = serializers.CharField(allow_null=True, help_text="Slug of the winning workflow.")
    input = serializers.JSONField(allow_null=True)
    input_error = serializers.CharField(allow_null=True)
    evaluated = EvaluationSerializer(many=True, help_text="Each workflow tried, in order.")


def evaluation_data(workflow: Workflow, evaluation: Any) -> dict[str, Any]:
    def condition(result: Any) -> dict[str, Any] | None:
        if result is None:
            return None
        return {
            "index": result.index,
            "expression": result.expression,
            "truthy": result.truthy,
            # NaN, infinity or a huge integer (say from to_number()): the reason says so.
            "value": result.value if json_writable(result.value) else None,
            "error": result.error,
            "reason": result.reason,
        }

    return {
        "workflow": workflow.slug,
        "matched": evaluation.matched,
        "reason": evaluation.reason,
        "source_matched": evaluation.source_matched,
        "event_matched": evaluation.event_matched,
        "conditions": [condition(result) for result in evaluation.conditions],
        "failed_condition": condition(evaluation.failed_condition),
        "input": evaluation.input,
        "input_error": evaluation.input_error,
    }
