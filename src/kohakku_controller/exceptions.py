"""Errors the API raises, and the handler that turns every client fault into JSON."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
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
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus JSON answers for body-size and malformed-request errors."""
    return drf_exception_handler(_translate_django_error(exc), context)
