"""Task API: create, list, retrieve, events, cancel, result; dispatcher callback and upload."""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import tempfile
from typing import Any

from django.core.files import File
from django.db.models import QuerySet
from django.http import FileResponse, HttpResponseRedirect
from django.utils.http import content_disposition_header
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import ControllerAPIView, ControllerGenericViewSet
from ..auth import is_oauth2_token
from ..conf import kohakku_settings
from ..exceptions import Conflict, IncompleteBody, PayloadTooLarge
from ..parsers import declared_length, read_bounded
from ..schema import PRESIGNED_LOCATION_HEADER, ErrorSerializer
from ..storage import get_storage, presigned_url, storage_is_remote
from . import services
from .filters import TaskFilter
from .models import ACTIVE_STATUSES, Task, TaskStatus
from .serializers import (
    CallbackResponseSerializer,
    CallbackSerializer,
    ResultUploadResponseSerializer,
    TaskCreateSerializer,
    TaskEventSerializer,
    TaskSerializer,
)

_CHUNK = 64 * 1024


class TaskViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    ControllerGenericViewSet,
):
    """Tasks: ``tasks:read`` to read, ``tasks:write`` to create and cancel."""

    queryset = Task.objects.select_related("skill_version__skill", "dispatcher")
    serializer_class = TaskSerializer
    lookup_field = "guid"
    filter_backends = [DjangoFilterBackend]
    filterset_class = TaskFilter
    read_scope = "tasks:read"
    write_scope = "tasks:write"
    action_model_permissions = {"cancel": "change", "events": "view", "result": "view"}

    @extend_schema(
        request=TaskCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Same key and body: the same task (200). Same key, other body: 409.",
            ),
            OpenApiParameter(
                "Idempotent-Replayed",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[200],
                enum=["true"],
                description="Sent when the answer is the task an earlier request created.",
            ),
        ],
        responses={
            201: OpenApiResponse(TaskSerializer, description="Created."),
            200: OpenApiResponse(
                TaskSerializer, description="A retry with the same Idempotency-Key and body."
            ),
            409: OpenApiResponse(
                ErrorSerializer, description="Idempotency-Key reused with another body."
            ),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = TaskCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        origin_ref = ""
        scope = f"user:{request.user.pk}" if request.user else ""
        if is_oauth2_token(request.auth) and getattr(request.auth, "application", None):
            origin_ref = f"oauth2 client {request.auth.application.name}"[:255]
            scope = f"client:{request.auth.application.pk}"
        task = services.create_task(
            **serializer.validated_data,
            origin="api",
            origin_ref=origin_ref,
            idempotency_key=request.headers.get("Idempotency-Key") or None,
            idempotency_scope=scope,
            created_by=request.user,
        )
        replay = getattr(task, "idempotent_replay", False)
        headers = {"Idempotent-Replayed": "true"} if replay else {}
        return Response(
            self.get_response_serializer(task).data,
            status=status.HTTP_200_OK if replay else status.HTTP_201_CREATED,
            headers=headers,
        )

    @extend_schema(responses={200: TaskEventSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def events(self, request: Request, guid: str | None = None) -> Response:
        """The task's history, oldest first."""
        task = self.get_object()
        events: QuerySet = task.events.order_by("id")
        page = self.paginate_queryset(events)
        if page is not None:
            return self.get_paginated_response(TaskEventSerializer(page, many=True).data)
        return Response(TaskEventSerializer(events, many=True).data)

    @extend_schema(
        request=None,
        responses={
            200: TaskSerializer,
            202: TaskSerializer,
            409: OpenApiResponse(ErrorSerializer, description="The task already ended."),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, guid: str | None = None) -> Response:
        """Cancel at once if queued (200), else ask the dispatcher (202)."""
        task = services.cancel_task(self.get_object())
        # 200 when the task is cancelled now; 202 when its dispatcher was asked, even if the
        # task ended otherwise (completed, failed) before this answer was written.
        cancelled = task.status == TaskStatus.CANCELLED
        code = status.HTTP_200_OK if cancelled else status.HTTP_202_ACCEPTED
        return Response(self.get_response_serializer(task).data, status=code)

    @extend_schema(
        parameters=[PRESIGNED_LOCATION_HEADER],
        responses={
            (200, "*/*"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The result file; Content-Type is guessed from its name "
                "(application/octet-stream when unknown).",
            ),
            302: OpenApiResponse(description="Redirect to a presigned download URL (S3)."),
            404: OpenApiResponse(
                ErrorSerializer, description="No such task, or the task has no stored result."
            ),
        },
    )
    @action(detail=True, methods=["get"])
    def result(self, request: Request, guid: str | None = None) -> Any:
        """The stored result: streamed, or a redirect to a short-lived URL on S3."""
        task = self.get_object()
        if not task.result_key:
            raise NotFound("The task has no result.")
        # A dispatcher chose the bytes and the name: they are downloaded, never rendered
        # (an HTML result shown inline would run its scripts on the controller's origin).
        content_type = result_content_type(task.result_key)
        filename = posixpath.basename(task.result_key)
        storage = get_storage()
        if storage_is_remote(storage):
            url = presigned_url(
                task.result_key,
                expires_seconds=kohakku_settings.RESULT_URL_EXPIRES_SECONDS,
                params={
                    "ResponseContentType": content_type,
                    "ResponseContentDisposition": content_disposition_header(True, filename),
                },
            )
            return HttpResponseRedirect(url)
        try:
            stored = storage.open(task.result_key, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound("The result object is missing from storage.") from None
        response = FileResponse(
            stored, content_type=content_type, as_attachment=True, filename=filename
        )
        response["Content-Security-Policy"] = "sandbox"
        return response


#: Result types served as what they are; any other is served as ``application/octet-stream``.
_PASSIVE_RESULT_TYPES = frozenset(
    {
        "application/json",
        "text/plain",
        "text/csv",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-tar",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
    }
)


def result_content_type(key: str) -> str:
    """The type a result is served with: guessed from its name among passive types only."""
    guessed, encoding = mimetypes.guess_type(key)
    if encoding is not None:  # x.gz, x.tar.gz: the bytes are compressed, whatever is inside
        guessed = "application/gzip" if encoding == "gzip" else None
    return guessed if guessed in _PASSIVE_RESULT_TYPES else "application/octet-stream"


class CallbackTokenView(ControllerAPIView):
    """An endpoint a dispatcher calls with a task's callback token, which the view checks
    (with the task it names); it reads the raw body itself, so any content type is taken."""

    reads_raw_body = True  # never 415
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    callback_token_auth = True  # the schema shows the callbackToken scheme

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # Machine endpoints that only speak JSON, whatever a dispatcher sends as Accept:
        # nothing to negotiate (parsing the Accept header was a tenth of a callback's CPU).
        renderer = JSONRenderer()
        return renderer, renderer.media_type

    def get_authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="kohakku-callback"'


class TaskCallbackView(CallbackTokenView):
    """``POST /tasks/{guid}/callback/``: a dispatcher reports progress or the outcome.

    Authenticated by the task's callback token (``Authorization: Bearer``) and the
    dispatcher's HMAC signature; see docs/dispatcher-contract.md.
    """

    @extend_schema(
        request=CallbackSerializer,
        responses={
            200: CallbackResponseSerializer,
            401: OpenApiResponse(ErrorSerializer, description="Bad token or signature."),
            404: OpenApiResponse(ErrorSerializer, description="No such task."),
            409: OpenApiResponse(ErrorSerializer, description="The task ended differently."),
            413: OpenApiResponse(
                ErrorSerializer, description="The body is over CALLBACK_MAX_BODY_BYTES."
            ),
        },
        parameters=[
            OpenApiParameter(
                "X-Kohakku-Timestamp", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True
            ),
            OpenApiParameter(
                "X-Kohakku-Signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True
            ),
        ],
    )
    def post(self, request: Request, guid: str) -> Response:
        body = read_bounded(
            request._request,
            kohakku_settings.CALLBACK_MAX_BODY_BYTES,
            declared=declared_length(request.META),
            what="The callback body",
        )
        outcome = services.apply_callback(
            guid,
            body=body,
            authorization=request.headers.get("Authorization"),
            timestamp=request.headers.get("X-Kohakku-Timestamp"),
            signature=request.headers.get("X-Kohakku-Signature"),
        )
        return Response(
            {
                "status": "ok",
                "task_guid": str(outcome.task.guid),
                "task_status": outcome.task.status,
                "changed": outcome.changed,
            }
        )


class TaskResultUploadView(CallbackTokenView):
    """``PUT /tasks/{guid}/result/upload/``: the result upload for filesystem storage.

    Takes the raw body (streamed, capped at ``RESULT_MAX_BYTES``) with the task's callback
    token, and stores it under ``results/<guid>/`` (``?name=`` picks the file name).
    """

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "name",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                default="output.json",
                description="File name under the task's result prefix; no '..'.",
            )
        ],
        responses={
            201: ResultUploadResponseSerializer,
            400: OpenApiResponse(ErrorSerializer, description="?name= is not a valid file name."),
            401: OpenApiResponse(ErrorSerializer, description="Bad callback token."),
            404: OpenApiResponse(ErrorSerializer, description="No such task."),
            413: OpenApiResponse(ErrorSerializer, description="The body is over RESULT_MAX_BYTES."),
            409: OpenApiResponse(ErrorSerializer, description="The task is not running."),
        },
    )
    def put(self, request: Request, guid: str) -> Response:
        task = services.authenticate_task_token(guid, request.headers.get("Authorization"))
        if task.status not in ACTIVE_STATUSES:
            raise Conflict(f"The task is {task.status}; results are taken while it runs.")
        name = request.query_params.get("name", "output.json")
        key = f"{task.result_prefix}{name}"
        if not services.result_key_is_valid(task, key):
            raise ValidationError(
                {
                    "name": [
                        "Must be a relative file name without '..', each part at most 255 bytes."
                    ]
                }
            )
        limit = kohakku_settings.RESULT_MAX_BYTES
        declared = declared_length(request.META)
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"The result is larger than {limit} bytes.")
        digest = hashlib.sha256()
        size = 0
        stream = request._request
        with tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024) as spool:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The result is larger than {limit} bytes.")
                digest.update(chunk)
                spool.write(chunk)
            if declared is not None and size < declared:
                raise IncompleteBody(size, declared)  # nothing of it is stored
            spool.seek(0)
            stored = services.store_result(task, key, File(spool, name=name))
        return Response(
            {"result_key": stored, "size": size, "sha256": digest.hexdigest()},
            status=status.HTTP_201_CREATED,
        )
