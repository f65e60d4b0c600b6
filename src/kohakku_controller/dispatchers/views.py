"""HTTP endpoints of the dispatcher registry.

* ``POST dispatchers/checkin/`` and ``POST dispatchers/{guid}/heartbeat/``: dispatchers
  only (OAuth2 client credentials with the ``dispatchers`` scope).
* Everything else is the operators' API (DRF token, Django model permissions); OAuth2
  clients are refused there.
"""

from __future__ import annotations

import uuid
from typing import Any

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import ControllerGenericViewSet
from ..auth import is_oauth2_token
from ..schema import ErrorSerializer
from . import services
from .filters import DispatcherFilter
from .models import Dispatcher
from .serializers import (
    CheckinResponseSerializer,
    CheckinSerializer,
    DispatcherControlsSerializer,
    DispatcherSerializer,
    HeartbeatResponseSerializer,
    HeartbeatSerializer,
    RotateSecretResponseSerializer,
    RotateSecretSerializer,
)

DISPATCHER_SCOPE = "dispatchers"
_TRUE_VALUES = {"true", "1", "yes"}
_FALSE_VALUES = {"false", "0", "no", ""}
# Responses that carry a signing secret must not be kept by any cache on the way.
_NO_STORE = {"Cache-Control": "no-store"}


class IsDispatcherClient(permissions.BasePermission):
    """An OAuth2 access token with the ``dispatchers`` scope; operators' tokens are refused."""

    message = (
        "Only dispatchers may call this endpoint: an OAuth2 token with the 'dispatchers' "
        "scope is required."
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_oauth2_token(request.auth) and request.auth.is_valid([DISPATCHER_SCOPE])


def _parse_force(request: Request) -> bool:
    raw = request.query_params.get("force", "").strip().lower()
    if raw in _TRUE_VALUES:
        return True
    if raw in _FALSE_VALUES:
        return False
    raise ValidationError({"force": ["Must be true or false."]})


class DispatcherViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ControllerGenericViewSet):
    """The dispatcher registry."""

    queryset = Dispatcher.objects.select_related("application").order_by("name", "pk")
    serializer_class = DispatcherSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = DispatcherFilter
    lookup_field = "guid"
    # OAuth2 clients may only check in and heartbeat (see get_permissions).
    read_scope = None
    write_scope = None
    action_model_permissions = {"partial_update": "change", "rotate_secret": "change"}
    dispatcher_actions = frozenset({"checkin", "heartbeat"})

    def get_permissions(self) -> list[Any]:
        if self.action in self.dispatcher_actions:
            return [IsDispatcherClient()]
        return super().get_permissions()

    @extend_schema(
        summary="Check in (register or update) a dispatcher",
        request=CheckinSerializer,
        responses={
            201: OpenApiResponse(CheckinResponseSerializer, description="Registered."),
            200: OpenApiResponse(CheckinResponseSerializer, description="Updated."),
            409: OpenApiResponse(ErrorSerializer, description="A concurrent check-in; retry."),
        },
        auth=[{"oauth2": [DISPATCHER_SCOPE]}],
    )
    @action(detail=False, methods=["post"], serializer_class=CheckinSerializer)
    def checkin(self, request: Request) -> Response:
        result = services.checkin(application=request.auth.application, data=request.data)
        body = {
            "status": "ok",
            "action": result.action,
            "dispatcher_guid": str(result.dispatcher.guid),
            "dispatcher_slug": result.dispatcher.slug,
        }
        headers = {}
        if result.signing_secret is not None:
            body["signing_secret"] = result.signing_secret
            headers = _NO_STORE
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return Response(body, status=code, headers=headers)

    @extend_schema(
        summary="Heartbeat of a dispatcher",
        request=HeartbeatSerializer,
        responses={200: HeartbeatResponseSerializer},
        auth=[{"oauth2": [DISPATCHER_SCOPE]}],
    )
    @action(detail=True, methods=["post"], serializer_class=HeartbeatSerializer)
    def heartbeat(self, request: Request, guid: str | None = None) -> Response:
        serializer = HeartbeatSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.record_heartbeat(
            guid=guid,
            application=request.auth.application,
            running_task_guids=serializer.validated_data.get("running_tasks"),
            free_capacity=serializer.validated_data.get("free_capacity"),
        )
        # The guid is known good now; answer it in canonical form, as the dispatcher has it.
        return Response({"status": "ok", "dispatcher_guid": str(uuid.UUID(guid))})

    @extend_schema(
        summary="Change an operator switch: enabled, draining or capacity",
        request=DispatcherControlsSerializer,
        responses={200: DispatcherSerializer},
    )
    def partial_update(self, request: Request, guid: str | None = None) -> Response:
        dispatcher = self.get_object()
        serializer = DispatcherControlsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dispatcher = services.set_dispatcher_controls(dispatcher, **serializer.validated_data)
        return Response(self.get_response_serializer(dispatcher).data)

    @extend_schema(
        summary="Delete a dispatcher",
        parameters=[
            OpenApiParameter(
                "force",
                OpenApiTypes.BOOL,
                description="Delete even with unfinished tasks; they are requeued. "
                "true/1/yes or false/0/no.",
            )
        ],
        responses={
            204: OpenApiResponse(description="Deleted."),
            400: OpenApiResponse(ErrorSerializer, description="?force= is not a boolean."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="It has unfinished tasks and force is not set; or, with force, a "
                "scheduler is pushing a task to it (retry after Retry-After seconds).",
            ),
        },
    )
    def destroy(self, request: Request, guid: str | None = None) -> Response:
        force = _parse_force(request)
        services.delete_dispatcher(self.get_object(), force=force)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Rotate the signing secret of a dispatcher",
        request=RotateSecretSerializer,
        responses={
            200: RotateSecretResponseSerializer,
            409: OpenApiResponse(ErrorSerializer, description="Rotated concurrently; retry."),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="rotate-secret",
        serializer_class=RotateSecretSerializer,
    )
    def rotate_secret(self, request: Request, guid: str | None = None) -> Response:
        dispatcher = self.get_object()
        serializer = RotateSecretSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        secret = services.rotate_signing_secret(
            dispatcher, grace_seconds=serializer.validated_data.get("grace_seconds")
        )
        body = {
            "dispatcher_guid": str(dispatcher.guid),
            "signing_secret": secret,
            "previous_secret_valid_until": dispatcher.previous_secret_valid_until,
        }
        return Response(RotateSecretResponseSerializer(body).data, headers=_NO_STORE)
