"""The skills API: registry, package upload and download, versions and yanking."""

from __future__ import annotations

import logging
from typing import Any

from django.http import (
    FileResponse,
    HttpResponse,
    HttpResponseNotModified,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404
from django.utils.cache import parse_etags
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import UPLOAD_PARSERS, ControllerGenericViewSet
from ..conf import kohakku_settings
from ..exceptions import PayloadTooLarge, ServiceUnavailable
from ..parsers import declared_length, positive_int_param
from ..schema import PRESIGNED_LOCATION_HEADER, ErrorSerializer
from ..storage import storage_is_remote
from . import services
from .filters import SkillFilter
from .models import Skill, SkillVersion
from .serializers import (
    SkillCreateSerializer,
    SkillDetailSerializer,
    SkillSerializer,
    SkillUpdateSerializer,
    SkillVersionSerializer,
    UploadResultSerializer,
    UploadSerializer,
    YankSerializer,
)
from .uploads import HashingUploadHandler

logger = logging.getLogger(__name__)

# Room for multipart boundaries and part headers around the package itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
SIGNATURE_PARAM = "signature"


class SignedDownloadPermission(permissions.BasePermission):
    """Lets a request in on a valid signed download URL alone (see ``package_download_url``)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        try:
            services.verify_download_signature(
                view.kwargs.get("slug", ""),
                request.query_params.get("version"),
                request.query_params.get("expires"),
                request.query_params.get(SIGNATURE_PARAM),
            )
        except ValueError as exc:
            self.message = str(exc)
            return False
        return True


def _requested_version(request: Request) -> int | None:
    """``?version=N`` as a number; ``None`` (latest) when absent or empty."""
    return positive_int_param(request, "version")


def _etag_matches(if_none_match: str, etag: str) -> bool:
    # If-None-Match uses the weak comparison: W/"x" matches "x".
    if if_none_match.strip() == "*":
        return True
    return any(tag.removeprefix("W/") == etag for tag in parse_etags(if_none_match))


_DOWNLOAD_RESPONSE_HEADERS = [
    OpenApiParameter(
        "ETag",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200, 302, 304],
        description="The package's content hash, quoted.",
    ),
    OpenApiParameter(
        "X-Content-Hash",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200, 302, 304],
        description="sha256 of the package.",
    ),
    OpenApiParameter(
        "Content-Disposition",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        description="attachment; filename=<slug>-<version>.zip",
    ),
    PRESIGNED_LOCATION_HEADER,
    OpenApiParameter(
        "Retry-After",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[503],
        description="Seconds to wait before retrying.",
    ),
]

_DOWNLOAD_HEADERS_DOC = (
    "Streams `application/zip` with `X-Content-Hash` (sha256), a strong `ETag`, "
    "`Content-Length` and `Content-Disposition`. `If-None-Match` answers 304."
)


class SkillViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ControllerGenericViewSet):
    """Skills: list, create, retrieve, change, archive; upload and download packages."""

    queryset = Skill.objects.all()
    serializer_class = SkillDetailSerializer
    lookup_field = "slug"
    read_scope = "skills:read"
    write_scope = "skills:write"
    action_model_permissions = {"download": "view"}
    filter_backends = [DjangoFilterBackend]
    filterset_class = SkillFilter

    def get_serializer_class(self) -> Any:
        # What responses show; request bodies have their own serializers, named by each
        # action (and in its OpenAPI description).
        return SkillSerializer if self.action == "list" else SkillDetailSerializer

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        drf_request = super().initialize_request(request, *args, **kwargs)
        if self.action == "download" and SIGNATURE_PARAM in request.GET:
            # A signed URL is the whole credential; other headers are not consulted.
            drf_request.authenticators = ()
        if self.action == "upload":
            # Set before anything reads the body (OAuth2 authentication reads the form).
            request.upload_handlers = [HashingUploadHandler(request)]
        return drf_request

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if self.action == "upload":
            # Refuse an announced oversize body before a byte of it is read.
            limit = kohakku_settings.SKILL_PACKAGE_MAX_BYTES
            length = declared_length(request.META) or 0
            if length > limit + MULTIPART_OVERHEAD_BYTES:
                raise PayloadTooLarge(f"The package is larger than {limit} bytes.")
        super().initial(request, *args, **kwargs)

    def get_permissions(self) -> list[Any]:
        if self.action == "download" and SIGNATURE_PARAM in self.request.query_params:
            return [SignedDownloadPermission()]
        return super().get_permissions()

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # Downloads answer a zip whatever Accept says; errors still render as JSON.
        return super().perform_content_negotiation(
            request, force=force or self.action == "download"
        )

    @extend_schema(
        request=SkillCreateSerializer,
        responses={
            201: SkillDetailSerializer,
            409: OpenApiResponse(
                ErrorSerializer, description="A skill with this name or slug exists."
            ),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a skill; its slug is derived from the name."""
        serializer = SkillCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        skill = services.create_skill(**serializer.validated_data)
        return Response(self.get_response_serializer(skill).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=SkillUpdateSerializer, responses={200: SkillDetailSerializer})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the description and/or category."""
        skill = self.get_object()
        serializer = SkillUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        skill = services.update_skill(skill, **serializer.validated_data)
        return Response(self.get_response_serializer(skill).data)

    @extend_schema(
        request=None,
        responses={
            200: SkillDetailSerializer,
            409: OpenApiResponse(ErrorSerializer, description="The skill is already archived."),
        },
    )
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, slug: str | None = None) -> Response:
        """Archive the skill: it leaves the list and new tasks cannot use it."""
        skill = services.set_skill_archived(self.get_object(), True)
        return Response(self.get_response_serializer(skill).data)

    @extend_schema(
        request=None,
        responses={
            200: SkillDetailSerializer,
            409: OpenApiResponse(ErrorSerializer, description="The skill is not archived."),
        },
    )
    @action(detail=True, methods=["post"])
    def unarchive(self, request: Request, slug: str | None = None) -> Response:
        """Restore an archived skill."""
        skill = services.set_skill_archived(self.get_object(), False)
        return Response(self.get_response_serializer(skill).data)

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        responses={
            201: OpenApiResponse(UploadResultSerializer, description="A new version."),
            200: OpenApiResponse(
                UploadResultSerializer, description="The same bytes as an existing version."
            ),
            409: OpenApiResponse(
                ErrorSerializer,
                description="The skill is archived, or another upload to it is in progress.",
            ),
        },
    )
    @action(detail=True, methods=["post"], parser_classes=UPLOAD_PARSERS)
    def upload(self, request: Request, slug: str | None = None) -> Response:
        """Upload a package (multipart field ``file``); same bytes answer the same version."""
        skill = self.get_object()
        serializer = UploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.upload_package(
            skill, serializer.validated_data["file"], user=request.user
        )
        version = result.version
        body = {
            "slug": skill.slug,
            "storage_ref": version.storage_ref,
            "content_hash": version.content_hash,
            "version_number": version.version_number,
            "deduplicated": result.deduplicated,
        }
        code = status.HTTP_200_OK if result.deduplicated else status.HTTP_201_CREATED
        return Response(body, status=code)

    @extend_schema(
        description=_DOWNLOAD_HEADERS_DOC,
        parameters=[
            OpenApiParameter("version", int, description="Pinned version; latest by default."),
            OpenApiParameter("expires", int, description="Signed URLs only."),
            OpenApiParameter("signature", str, description="Signed URLs only."),
            OpenApiParameter(
                "If-None-Match",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="ETag of the client's copy; a match answers 304.",
            ),
            *_DOWNLOAD_RESPONSE_HEADERS,
        ],
        # A signed URL (expires and signature) is the whole credential.
        auth=[{"oauth2": ["skills:read"]}, {"tokenAuth": []}, {}],
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY),
            302: OpenApiResponse(description="Redirect to a presigned S3 URL."),
            304: OpenApiResponse(description="The client's copy (If-None-Match) is current."),
            400: OpenApiResponse(
                ErrorSerializer, description="?version= is not a positive integer."
            ),
            403: OpenApiResponse(
                ErrorSerializer,
                description="The credential lacks the permission, or the signed URL is "
                "invalid or expired.",
            ),
            404: OpenApiResponse(
                ErrorSerializer, description="No such skill, or no such (non-yanked) version."
            ),
            503: OpenApiResponse(
                ErrorSerializer, description="The package could not be read from storage."
            ),
        },
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, slug: str | None = None) -> HttpResponse:
        """Download a package: the latest non-yanked version, or ``?version=N``."""
        requested = _requested_version(request)
        if SIGNATURE_PARAM not in request.query_params:
            # The caller must be able to see the skill (a host's get_queryset() applies). A
            # signed URL is the controller's own grant of one version to a dispatcher.
            self.get_object()
        version = services.version_for_download(slug or "", requested)
        etag = f'"{version.content_hash}"'
        pinned = requested is not None
        headers = {
            "ETag": etag,
            "X-Content-Hash": version.content_hash,
            # A pinned version never changes; "latest" must be revalidated every time.
            "Cache-Control": "private, max-age=31536000, immutable"
            if pinned
            else "private, no-cache",
        }
        if _etag_matches(request.headers.get("If-None-Match", ""), etag):
            response: HttpResponse = HttpResponseNotModified()
        elif kohakku_settings.SKILL_DOWNLOAD_REDIRECT and storage_is_remote():
            expires = kohakku_settings.SKILL_DOWNLOAD_URL_EXPIRES_SECONDS
            response = HttpResponseRedirect(services.presigned_package_url(version, expires))
            headers["Cache-Control"] = "private, no-store"
        elif request.method == "HEAD":
            response = HttpResponse(content_type=services.PACKAGE_CONTENT_TYPE)
        else:
            response = self._stream(version)
        for name, value in headers.items():
            response[name] = value
        if response.status_code == 200:
            response["Content-Type"] = services.PACKAGE_CONTENT_TYPE
            response["Content-Length"] = str(version.size)
            response["Content-Disposition"] = (
                f"attachment; filename={version.skill.slug}-{version.version_number}.zip"
            )
        return response

    @staticmethod
    def _stream(version: SkillVersion) -> HttpResponse:
        try:
            fileobj, chunks = services.open_package(version)
        except Exception:
            logger.exception("package blob %s could not be opened", version.storage_ref)
            raise ServiceUnavailable("The package could not be read from storage.") from None
        if fileobj is not None:
            return FileResponse(fileobj, content_type=services.PACKAGE_CONTENT_TYPE)
        return StreamingHttpResponse(chunks, content_type=services.PACKAGE_CONTENT_TYPE)


_SKILL_SLUG_PARAMETER = extend_schema(
    parameters=[
        OpenApiParameter("skill_slug", str, OpenApiParameter.PATH, description="Skill slug.")
    ]
)


@extend_schema_view(
    list=_SKILL_SLUG_PARAMETER,
    retrieve=_SKILL_SLUG_PARAMETER,
    yank=_SKILL_SLUG_PARAMETER,
    unyank=_SKILL_SLUG_PARAMETER,
)
class SkillVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, ControllerGenericViewSet
):
    """The versions of one skill, newest first; yank and restore them."""

    queryset = SkillVersion.objects.all()
    serializer_class = SkillVersionSerializer
    lookup_field = "version_number"
    lookup_value_regex = r"[0-9]+"
    read_scope = "skills:read"
    write_scope = "skills:write"

    @property
    def permission_model(self) -> type[Skill] | type[SkillVersion]:
        # Versions are read with the skill (view_skill, as for downloads); yanking and
        # restoring need change_skillversion.
        return Skill if self.request.method in permissions.SAFE_METHODS else SkillVersion

    def get_skill_queryset(self) -> Any:
        """The skills whose versions the caller may see and yank (override it as you
        override the ``skill`` viewset's ``get_queryset()``); others answer 404."""
        return Skill.objects.all()

    def get_skill(self) -> Skill:
        if not hasattr(self, "_skill"):
            self._skill = get_object_or_404(
                self.get_skill_queryset(), slug=self.kwargs["skill_slug"]
            )
        return self._skill

    def get_queryset(self) -> Any:
        return (
            super()
            .get_queryset()
            .filter(skill=self.get_skill())
            .select_related("skill", "uploaded_by")
            .order_by("-version_number")
        )

    def _set_yanked(self, request: Request, yanked: bool) -> Response:
        version = self.get_object()
        serializer = YankSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = services.set_version_yanked(
            version, yanked, reason=serializer.validated_data["reason"]
        )
        return Response(self.get_response_serializer(version).data)

    @extend_schema(
        request=YankSerializer,
        responses={
            200: SkillVersionSerializer,
            409: OpenApiResponse(ErrorSerializer, description="The version is already yanked."),
        },
    )
    @action(detail=True, methods=["post"])
    def yank(self, request: Request, **kwargs: Any) -> Response:
        """Yank the version: ``latest`` skips it; pinned downloads still work."""
        return self._set_yanked(request, True)

    @extend_schema(
        request=YankSerializer,
        responses={
            200: SkillVersionSerializer,
            409: OpenApiResponse(ErrorSerializer, description="The version is not yanked."),
        },
    )
    @action(detail=True, methods=["post"])
    def unyank(self, request: Request, **kwargs: Any) -> Response:
        """Restore a yanked version."""
        return self._set_yanked(request, False)
