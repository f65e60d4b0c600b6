"""Workflow API: CRUD by slug, and dry-runs of sample events."""

from __future__ import annotations

from typing import Any

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers as drf_serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import ControllerModelViewSet
from ..schema import ErrorSerializer
from . import services
from .events import build_event_document
from .filters import WorkflowFilter
from .models import ANY_EVENT, Workflow
from .serializers import (
    CollectionDryRunSerializer,
    DryRunRequestSerializer,
    EvaluationSerializer,
    WorkflowSerializer,
    evaluation_data,
)

_EDITED_CONCURRENTLY = OpenApiResponse(
    ErrorSerializer,
    description="Another request changed the workflow since this one read it; read it again "
    "and retry. Nothing was written.",
)


@extend_schema_view(
    update=extend_schema(responses={200: WorkflowSerializer, 409: _EDITED_CONCURRENTLY}),
    partial_update=extend_schema(responses={200: WorkflowSerializer, 409: _EDITED_CONCURRENTLY}),
)
class WorkflowViewSet(ControllerModelViewSet):
    """Workflows turn webhook events into tasks. Looked up by slug."""

    queryset = Workflow.objects.select_related("skill").order_by("priority", "name", "id")
    serializer_class = WorkflowSerializer
    lookup_field = "slug"
    filter_backends = [DjangoFilterBackend]
    filterset_class = WorkflowFilter
    read_scope = "workflows:read"
    write_scope = "workflows:write"
    action_scopes = {"dry_run": "workflows:write", "dry_run_match": "workflows:write"}
    # A dry-run changes nothing: operators need only the view permission.
    action_model_permissions = {"dry_run": "view", "dry_run_match": "view"}

    @extend_schema(request=DryRunRequestSerializer, responses={200: EvaluationSerializer})
    @action(detail=True, methods=["post"], url_path="dry-run")
    def dry_run(self, request: Request, slug: str | None = None) -> Response:
        """Evaluate this workflow (even if disabled) against a sample event."""
        workflow = self.get_object()
        data = self._sample(request)
        source = data.get("source") or workflow.source
        event = data.get("event") or (workflow.event if workflow.event != ANY_EVENT else "")
        if not event:
            raise drf_serializers.ValidationError({"event": ["This field is required."]})
        document = build_event_document(source, event, data["headers"], data["payload"])
        evaluation = services.evaluate_workflow(workflow, source, event, document)
        return Response(evaluation_data(workflow, evaluation))

    @extend_schema(
        operation_id="workflows_match_dry_run",
        request=DryRunRequestSerializer,
        responses={200: CollectionDryRunSerializer},
    )
    @action(detail=False, methods=["post"], url_path="dry-run")
    def dry_run_match(self, request: Request) -> Response:
        """Find the workflow a sample event would be routed to, exactly as ingest would."""
        data = self._sample(request)
        missing = {
            name: ["This field is required."] for name in ("source", "event") if not data.get(name)
        }
        if missing:
            raise drf_serializers.ValidationError(missing)
        source, event = data["source"], data["event"]
        document = build_event_document(source, event, data["headers"], data["payload"])
        result = services.match_workflow(source, event, document)
        return Response(
            {
                "matched": result.workflow is not None,
                "routed_to": result.workflow.slug if result.workflow else None,
                "input": result.input,
                "input_error": result.input_error,
                "evaluated": [evaluation_data(wf, ev) for wf, ev in result.evaluated],
            }
        )

    @staticmethod
    def _sample(request: Request) -> dict[str, Any]:
        serializer = DryRunRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data
