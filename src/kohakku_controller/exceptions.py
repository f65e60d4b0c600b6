"""Errors the API raises, and the handler that turns every client fault into JSON."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db import InterfaceError, OperationalError
from django.http import UnreadablePostError
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = _("Request body is too large.")
    default_code = "payload_too_large"


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
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus JSON answers for body-size, malformed-request and outage errors.

    A 503 carries ``Retry-After``.
    """
    response = drf_exception_handler(_translate_django_error(exc), context)
    if response is not None and response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        response.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return response
