"""The webhook endpoint (no API credentials: senders sign) and the operators' delivery log."""

from __future__ import annotations

import time
from typing import Any

from django.db.models import F, QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import permissions, status
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import ControllerAPIView, ControllerReadOnlyViewSet
from ..conf import kohakku_settings
from ..exceptions import (
    IncompleteBody,
    LengthRequired,
    PayloadTooLarge,
    UnsupportedContentEncoding,
)
from ..parsers import declared_length, read_bounded
from ..schema import ErrorSerializer
from ..tasks.models import Task
from . import services
from .filters import DeliveryFilter
from .models import Delivery
from .serializers import (
    DeliveryListSerializer,
    DeliverySerializer,
    IngestAnswerSerializer,
    IngestRejectionSerializer,
    SlackChallengeSerializer,
)

#: The largest size a delivery's ``body_size`` column holds (a signed 64-bit integer).
_LARGEST_RECORDED_SIZE = 2**63 - 1

#: The request headers ingestion reads, as the schema lists them (all optional: which are
#: needed depends on the sender).
_INGEST_HEADERS = [
    OpenApiParameter(name, str, OpenApiParameter.HEADER, description=description)
    for name, description in [
        ("X-Webhook-Source", "github, slack or custom; detected from the headers below if absent."),
        ("X-Webhook-Event", "The event name; else the sender's own (X-GitHub-Event, body type)."),
        ("X-GitHub-Event", "GitHub's event name; its presence means source github."),
        (
            "X-GitHub-Delivery",
            "GitHub's delivery id, the deduplication key (with X-GitHub-Hook-ID).",
        ),
        ("X-GitHub-Hook-ID", "GitHub's hook id."),
        ("X-Hub-Signature-256", "GitHub: sha256=<HMAC of the body>."),
        ("X-Slack-Signature", "Slack: v0=<HMAC of v0:<timestamp>:<body>>; means source slack."),
        ("X-Slack-Request-Timestamp", "Slack: Unix seconds, within 300 s of the server clock."),
        ("X-Slack-Retry-Num", "Slack: the retry number of a redelivery."),
        ("X-Slack-Retry-Reason", "Slack: why it redelivered."),
        ("webhook-id", "Standard Webhooks: the message id, the deduplication key."),
        ("webhook-timestamp", "Standard Webhooks: Unix seconds."),
        ("webhook-signature", "Standard Webhooks: space-separated v1,<base64 HMAC> values."),
    ]
]


class WebhookIngestView(ControllerAPIView):
    """``POST /webhooks/``: receive a GitHub, Slack or custom (Standard Webhooks) delivery."""

    # Senders authenticate by signature over the raw body, never by API credentials.
    authentication_classes = []
    permission_classes = [permissions.AllowAny]
    # The body is read raw, before (and instead of) any parser.
    parser_classes = []
    # Senders read JSON. The browsable API needs a parser to draw its form, so it would fail
    # after the delivery was processed; an Accept that JSON cannot meet is a 406 up front.
    renderer_classes = [JSONRenderer]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        # A body refused before it was read whole is recorded like every other delivery.
        if isinstance(exc, LengthRequired | UnsupportedContentEncoding | IncompleteBody):
            result = services.reject_unread(
                status_code=exc.status_code,
                reason=exc.default_code,
                detail=str(exc.detail),
                **self.delivery_meta(self.request),
            )
            return Response(result.data, status=result.status_code)
        return super().handle_exception(exc)

    def delivery_meta(self, request: Request) -> dict[str, Any]:
        """What the delivery log records of a request besides its body."""
        django_request = request._request
        return {
            "headers": django_request.headers,
            "content_type": django_request.META.get("CONTENT_TYPE", ""),
            "remote_addr": django_request.META.get("REMOTE_ADDR") or None,
            "started": getattr(self, "started", None),
        }

    @extend_schema(
        operation_id="webhooks_ingest",
        auth=[],
        parameters=_INGEST_HEADERS,
        request={
            "application/json": OpenApiTypes.OBJECT,
            "application/x-www-form-urlencoded": OpenApiTypes.OBJECT,
            # Read as JSON too, like any application/*+json type.
            "text/plain": OpenApiTypes.STR,
        },
        responses={
            200: PolymorphicProxySerializer(
                component_name="IngestResult",
                serializers=[IngestAnswerSerializer, SlackChallengeSerializer],
                resource_type_field_name=None,
            ),
            400: OpenApiResponse(
                IngestRejectionSerializer,
                "Unknown source, or a malformed body or one shorter than its Content-Length.",
            ),
            401: OpenApiResponse(IngestRejectionSerializer, "Bad, missing or stale signature."),
            403: OpenApiResponse(IngestRejectionSerializer, "No secret configured for source."),
            411: OpenApiResponse(IngestRejectionSerializer, "Body sent without Content-Length."),
            413: OpenApiResponse(IngestRejectionSerializer, "Body over WEBHOOK_MAX_BODY_BYTES."),
            415: OpenApiResponse(
                IngestRejectionSerializer, "Unsupported content type, or a Content-Encoding."
            ),
        },
    )
    def post(self, request: Request) -> Response:
        django_request = request._request
        limit = kohakku_settings.WEBHOOK_MAX_BODY_BYTES
        meta = self.delivery_meta(request)
        declared = declared_length(django_request.META) or 0
        try:
            body = read_bounded(django_request, limit, declared=declared)
        except PayloadTooLarge:
            # The log records the declared size, capped at what its column holds.
            body_size = min(max(declared, limit + 1), _LARGEST_RECORDED_SIZE)
            result = services.reject_oversize(body_size=body_size, **meta)
        else:
            result = services.receive_webhook(body=body, **meta)
        return Response(result.data, status=result.status_code)


class DeliveryViewSet(ControllerReadOnlyViewSet):
    """The delivery log: every webhook request, newest first. Operators may replay one."""

    queryset = (
        Delivery.objects.select_related("workflow")
        .annotate(duplicate_of_guid=F("duplicate_of__guid"), replay_of_guid=F("replay_of__guid"))
        .order_by("-received_at", "-id")
    )
    serializer_class = DeliverySerializer
    lookup_field = "guid"
    filter_backends = [DjangoFilterBackend]
    filterset_class = DeliveryFilter
    read_scope = "workflows:read"
    write_scope = "workflows:write"
    # A replay creates tasks now, on demand: it needs what creating a task needs, too.
    action_scopes = {"replay": ("workflows:write", "tasks:write")}
    action_model_permissions = {"replay": "change"}
    action_extra_permissions = {"replay": (f"{Task._meta.app_label}.add_task",)}

    def get_queryset(self) -> QuerySet[Delivery]:
        queryset = super().get_queryset()
        # Bodies can be large: lists leave them out, the detail view has them.
        return queryset.defer("body") if self.action == "list" else queryset

    def get_serializer_class(self) -> type[DeliveryListSerializer]:
        return DeliveryListSerializer if self.action == "list" else DeliverySerializer

    @extend_schema(
        request=None,
        responses={
            201: DeliverySerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="The delivery cannot be replayed (unverified, a handshake, or its "
                "stored body is truncated or unparsable).",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, guid: str | None = None) -> Response:
        """Route the stored body again with today's workflows; answers the new delivery."""
        replayed = services.replay_delivery(self.get_object())
        replayed = self.get_queryset().get(pk=replayed.pk)
        return Response(self.get_response_serializer(replayed).data, status=status.HTTP_201_CREATED)
