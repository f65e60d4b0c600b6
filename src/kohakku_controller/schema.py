"""OpenAPI generation: drf-spectacular's AutoSchema plus the controller's security
requirements, error responses and list headers."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from .auth import ScopedPermission


class ErrorSerializer(serializers.Serializer):
    """Every error body: ``detail`` for request-wide faults, or field name -> reasons."""

    detail = serializers.CharField(help_text="What went wrong.", required=False)


_ERROR_DESCRIPTIONS = {
    "400": "The request is invalid; the body names each faulty field and why.",
    "401": "No valid credential was sent.",
    "403": "The credential lacks the scope or permission for this action.",
    "404": "No such object.",
    "409": "The request conflicts with the current state of the resource.",
    "411": "The body was sent without Content-Length (chunked); send its length.",
    "413": "The request body is larger than allowed.",
    "415": "Unsupported content type.",
    "503": "The database or another backing service is unavailable; nothing was changed. "
    "Retry after Retry-After seconds.",
}
_LIST_ERROR_DESCRIPTIONS = {
    "400": "A filter, page or page_size is invalid; the body names the parameter.",
    "404": "The page is past the last page.",
}

#: Response headers of every paginated list (see ``pagination.LinkHeaderPagination``).
LIST_HEADERS = [
    OpenApiParameter(
        "Link",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        description='RFC 8288 links to the "first", "prev", "next" and "last" pages.',
    ),
    OpenApiParameter(
        "X-Total-Count",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[200],
        description="Number of items across all pages.",
    ),
]
#: The header of a 302 to a presigned storage URL (package and result downloads on S3).
PRESIGNED_LOCATION_HEADER = OpenApiParameter(
    "Location",
    OpenApiTypes.URI,
    OpenApiParameter.HEADER,
    response=[302],
    description="The presigned URL.",
)
#: The header of every 503 the exception handler answers.
_RETRY_AFTER = {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}


#: The security scheme of the endpoints a dispatcher calls with a task's callback token (views
#: that set ``callback_token_auth = True``).
CALLBACK_TOKEN_SCHEME = "callbackToken"  # noqa: S105  (a scheme name, not a secret)
_CALLBACK_TOKEN_DEFINITION = {
    "type": "http",
    "scheme": "bearer",
    "description": "The task's callback token: `callback_token` of the push, valid for that "
    "attempt only. Callbacks are signed as well (X-Kohakku-Timestamp, X-Kohakku-Signature); "
    "see the dispatcher contract.",
}


class ControllerAutoSchema(AutoSchema):
    """Adds the security requirements and the error responses a client can meet."""

    def get_auth(self) -> list[Any]:
        if getattr(self.view, "callback_token_auth", False):
            self.registry.register_on_missing(
                ResolvedComponent(
                    name=CALLBACK_TOKEN_SCHEME,
                    type=ResolvedComponent.SECURITY_SCHEMA,
                    object=CALLBACK_TOKEN_SCHEME,
                    schema=_CALLBACK_TOKEN_DEFINITION,
                )
            )
            return [{CALLBACK_TOKEN_SCHEME: []}]
        auths = super().get_auth()
        scopes = [
            permission.required_scopes(self.view.request, self.view)
            for permission in self.view.get_permissions()
            if isinstance(permission, ScopedPermission)
        ]
        if scopes and scopes[0] and "oauth2" in self._authenticator_names():
            # The extension for django-oauth-toolkit only knows its own permission classes.
            auths = [{"oauth2": scopes[0]}, *(a for a in auths if "oauth2" not in a)]
        return auths

    def _authenticator_names(self) -> set[str]:
        names = set()
        for authenticator in self.view.get_authenticators():
            scheme = OpenApiAuthenticationExtension.get_match(authenticator)
            if scheme is not None and isinstance(scheme.name, str):
                names.add(scheme.name)
        return names

    def _is_paginated_list(self) -> bool:
        return self.method == "GET" and self._is_list_view() and self._get_paginator() is not None

    def _reads_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None

    def error_codes(self) -> list[str]:
        # Every view refuses a chunked body, whatever the method and whether or not it
        # reads one.
        codes = ["411"]
        if self._reads_body():
            codes += ["400", "413"]
            # A view that reads its raw body itself takes any content type.
            if not getattr(self.view, "reads_raw_body", False):
                codes.append("415")
        if self._is_paginated_list():
            codes += ["400", "404"]
        if self.view.get_authenticators():
            codes += ["401", "403"]
        elif getattr(self.view, "callback_token_auth", False):
            codes.append("401")
        if "{" in self.path:
            codes.append("404")
        codes.append("503")
        return list(dict.fromkeys(codes))

    def get_filter_backends(self) -> list[Any]:
        # The same backends the view applies (filter_backends_for_action): list filters on
        # the list only, other backends (a host's object visibility) wherever an object is
        # looked up too.
        if not hasattr(self.view, "filter_backends_for_action"):
            return super().get_filter_backends()
        if self._is_list_view() or getattr(self.view, "detail", False):
            return self.view.filter_backends_for_action()
        return []

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        if self._is_paginated_list():
            parameters += LIST_HEADERS
        return parameters

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        list_view = self._is_paginated_list()
        for code in self.error_codes():
            if code in responses:
                continue
            description = _ERROR_DESCRIPTIONS[code]
            if list_view and code in _LIST_ERROR_DESCRIPTIONS:
                description = _LIST_ERROR_DESCRIPTIONS[code]
                if code == "404" and "{" in self.path:
                    description = "No such object, or the page is past the last page."
            responses[code] = self._get_response_for_code(
                OpenApiResponse(ErrorSerializer, description=description), code
            )
            if code == "503":
                responses[code]["headers"] = {"Retry-After": dict(_RETRY_AFTER)}
        return responses
