"""Delivery log representations and the ingest answer."""

from __future__ import annotations

from rest_framework import serializers

from ..fields import ControllerModelSerializer
from .models import Delivery


class DeliveryListSerializer(ControllerModelSerializer):
    """A delivery without its body (the detail view has it)."""

    # A plain string in the schema: a "status" enum here would collide with other components.
    status = serializers.CharField(
        help_text="routed, unrouted, failed, duplicate, handshake or rejected."
    )
    workflow = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    duplicate_of = serializers.UUIDField(
        source="duplicate_of_guid", read_only=True, allow_null=True
    )
    replay_of = serializers.UUIDField(source="replay_of_guid", read_only=True, allow_null=True)

    class Meta:
        model = Delivery
        fields = [
            "guid",
            "received_at",
            "source",
            "event",
            "external_id",
            "content_type",
            "headers",
            "body_size",
            "body_truncated",
            "verification",
            "verification_detail",
            "status",
            "detail",
            "workflow",
            "routed_to",
            "task_guid",
            "status_code",
            "latency_ms",
            "retry_num",
            "retry_reason",
            "remote_addr",
            "duplicate_of",
            "replay_of",
        ]
        read_only_fields = fields


class DeliverySerializer(DeliveryListSerializer):
    """A delivery with its raw body."""

    body = serializers.SerializerMethodField(
        help_text="The raw body as text (UTF-8, undecodable bytes replaced), up to the log cap."
    )

    class Meta(DeliveryListSerializer.Meta):
        fields = [*DeliveryListSerializer.Meta.fields, "body"]
        read_only_fields = fields

    def get_body(self, delivery: Delivery) -> str:
        return bytes(delivery.body).decode("utf-8", "replace")


class IngestAnswerSerializer(serializers.Serializer):
    """The answer to an accepted delivery."""

    status = serializers.CharField(
        help_text="'ok', or 'failed' when the matching workflow could not queue a task "
        "(see detail)."
    )
    routed_to = serializers.CharField(allow_null=True, help_text="Slug of the workflow, or null.")
    delivery_id = serializers.UUIDField(help_text="This delivery in the delivery log.")
    task_guid = serializers.UUIDField(allow_null=True)
    duplicate = serializers.BooleanField(required=False)
    duplicate_of = serializers.UUIDField(required=False)
    detail = serializers.CharField(required=False)


class SlackChallengeSerializer(serializers.Serializer):
    """The answer to Slack's ``url_verification`` handshake (not routed)."""

    challenge = serializers.CharField(help_text="The challenge Slack sent, echoed back.")


class IngestRejectionSerializer(serializers.Serializer):
    detail = serializers.CharField()
    reason = serializers.CharField(
        help_text="unknown_source, source_not_configured, signature_missing, "
        "signature_malformed, signature_expired, signature_mismatch, malformed_body, "
        "malformed_event, too_large, length_required"
    )
    delivery_id = serializers.UUIDField()
