from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import ControllerAPIView
from ..conf import kohakku_settings
from .probes import LIVENESS_PROBES, READINESS_PROBES, run_probes

_CHECK = inline_serializer(
    "HealthCheck",
    {
        "status": serializers.ChoiceField(["ok", "error"]),
        "latency_ms": serializers.FloatField(),
        "error": serializers.CharField(required=False),
    },
)
_REPORT = inline_serializer(
    "HealthReport",
    {
        "status": serializers.ChoiceField(["ok", "error"]),
        "checks": serializers.DictField(child=_CHECK),
    },
)


class ProbeView(ControllerAPIView):
    """Runs a set of dependency probes; 200 when all pass, 503 otherwise."""

    authentication_classes: list[Any] = []
    permission_classes = [permissions.AllowAny]
    probes: dict[str, Any] = {}

    def get(self, request: Request) -> Response:
        results = run_probes(self.probes, kohakku_settings.HEALTH_CHECK_TIMEOUT)
        healthy = all(result.ok for result in results)
        body = {
            "status": "ok" if healthy else "error",
            "checks": {result.name: result.as_dict() for result in results},
        }
        code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(body, status=code, headers={"Cache-Control": "no-store"})


_RESPONSES = {200: _REPORT, 503: OpenApiResponse(_REPORT, description="A check failed.")}


class HealthView(ProbeView):
    """Liveness: the database answers."""

    probes = LIVENESS_PROBES

    @extend_schema(operation_id="health", tags=["health"], responses=_RESPONSES)
    def get(self, request: Request) -> Response:
        return super().get(request)


class ReadyView(ProbeView):
    """Readiness: the database, the cache and object storage answer."""

    probes = READINESS_PROBES

    @extend_schema(operation_id="ready", tags=["health"], responses=_RESPONSES)
    def get(self, request: Request) -> Response:
        return super().get(request)
