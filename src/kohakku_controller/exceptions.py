"""Errors the API raises, the handler that turns every client fault into JSON, and the
host-level 404 and 500 handlers that answer JSON under the API's URLs."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, UnreadablePostError
from django.urls import URLResolver, get_resolver, get_urlconf
from django.utils.translation import gettext_lazy as _
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

#: The key of errors that belong to no field, in every error body of the API.
NON_FIELD_ERRORS = "non_field_errors"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = _("Request body is too large.")
    default_code = "payload_too_large"


class LengthRequired(exceptions.APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = _(
        "Send the request body with a Content-Length header; chunked bodies are not accepted."
    )
    default_code = "length_required"


class IncompleteBody(exceptions.ParseError):
    """The body ended before its ``Content-Length``: the client closed its side early."""

    default_code = "incomplete_body"

    def __init__(self, received: int, declared: int) -> None:
        super().__init__(
            _(
                "The request body ended after {received} of the {declared} bytes its "
                "Content-Length announced."
            ).format(received=received, declared=declared)
        )


class UnsupportedContentEncoding(exceptions.APIException):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    default_code = "unsupported_content_encoding"

    def __init__(self, encoding: str) -> None:
        super().__init__(
            _("Content-Encoding {encoding!r} is not supported; send the body uncompressed.").format(
                encoding=encoding
            )
        )


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = _("The request conflicts with the current state of the resource.")
    default_code = "conflict"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = _("A backing service is unavailable; try again later.")
    default_code = "service_unavailable"


#: Seconds a client is asked to wait (``Retry-After``) after a 503.
RETRY_AFTER_SECONDS = 1

logger = logging.getLogger("kohakku_controller")


def _translate_django_error(exc: Exception) -> Exception:
    """Map request-level Django errors (raised while reading the body) to API errors."""
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ParseError(_("Too many form fields."))
    if isinstance(exc, UnreadablePostError):
        return exceptions.ParseError(_("The request body could not be read."))
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError(_("The request was rejected as malformed."))
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is unreachable or restarting, or dropped this connection: nothing
        # was committed, and the request may be sent again.
        logger.warning("database unavailable: %s", type(exc).__name__)
        return ServiceUnavailable(_("The database is unavailable; try again shortly."))
    if isinstance(exc, IntegrityError):
        # A constraint the request's own checks could not see coming, broken by a change
        # committed meanwhile (a row it refers to deleted before its commit): the statement
        # or transaction was rolled back, and the request may be sent again.
        # Logged with its traceback: a constraint broken without a concurrent change would be
        # a bug, and must not pass for a retryable conflict unnoticed.
        logger.error("request conflicted with a concurrent change: %s", exc, exc_info=exc)
        return Conflict(
            _("The request conflicted with a concurrent change and was not completed; retry.")
        )
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus JSON answers for body-size, malformed-request and outage errors.

    A 503 carries ``Retry-After``.
    """
    response = drf_exception_handler(_translate_django_error(exc), context)
    if response is not None and isinstance(response.data, dict):
        # Errors that belong to no field are under "non_field_errors" in the API's contract,
        # whatever a host's NON_FIELD_ERRORS_KEY says.
        key = api_settings.NON_FIELD_ERRORS_KEY
        if key != NON_FIELD_ERRORS and key in response.data:
            response.data[NON_FIELD_ERRORS] = response.data.pop(key)
    if response is not None and response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        response.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    if isinstance(exc, exceptions.NotAuthenticated):
        # A bearer token was sent but refused: say why ("The access token has expired.")
        # rather than that no credentials were provided.
        oauth2_error = getattr(context.get("request"), "oauth2_error", None) or {}
        if oauth2_error.get("error_description"):
            response.data = {"detail": str(oauth2_error["error_description"])}
    return response


#: The application namespace of the API's URLconf (``kohakku_controller.urls``).
API_APP_NAME = "kohakku_controller"


def is_api_path(path_info: str) -> bool:
    """True when ``path_info`` lies under a mount of the API's URLconf.

    Walks the host's URL patterns the way Django resolves them, so it follows any prefix
    (``api/v1/``, a regex, nested includes) and any partial include of the API.
    """

    def under_api(patterns: Any, remaining: str) -> bool:
        for pattern in patterns:
            if not isinstance(pattern, URLResolver):
                continue
            match = pattern.pattern.match(remaining)
            if match is None:
                continue
            if pattern.app_name == API_APP_NAME or under_api(pattern.url_patterns, match[0]):
                return True
        return False

    resolver = get_resolver(get_urlconf())
    match = resolver.pattern.match(path_info)
    return match is not None and under_api(resolver.url_patterns, match[0])


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A ``handler404`` for host projects: JSON under the API's URLs, Django's page elsewhere.

    A URL under the API that matches no endpoint (``/api/v1/nope/``, ``/api/v1/``) then
    answers ``{"detail": "Not found."}`` like the API's own 404s, instead of an HTML page.
    Set it in the host's root URLconf: ``handler404 = "kohakku_controller.exceptions.not_found"``.
    """
    if is_api_path(request.path_info):
        return _json_error(str(exceptions.NotFound.default_detail), status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A ``handler400`` for host projects: JSON under the API's URLs, Django's page elsewhere.

    Django answers 400 itself for a ``Host`` not in ``ALLOWED_HOSTS`` and for other
    suspicious requests (too many form fields, for example), before any view runs.
    """
    if is_api_path(request.path_info):
        return _json_error("Bad request.", status.HTTP_400_BAD_REQUEST)
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """A ``handler500`` for host projects: JSON under the API's URLs, Django's page elsewhere.

    No detail of the error reaches the client; it is logged by Django as usual.
    """
    if is_api_path(request.path_info):
        return _json_error("Server error.", status.HTTP_500_INTERNAL_SERVER_ERROR)
    return defaults.server_error(request)


def _json_error(detail: str, code: int) -> HttpResponse:
    """``{"detail": ...}`` rendered as the API renders its own errors."""
    body = JSONRenderer().render({"detail": detail})
    return HttpResponse(body, status=code, content_type="application/json")
