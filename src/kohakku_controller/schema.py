"""OpenAPI generation: drf-spectacular's AutoSchema plus the controller's error responses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """Every error body: ``detail`` for request-wide faults, or field name -> reasons."""

    detail = serializers.CharField(help_text="What went wrong.", required=False)


_ERROR_DESCRIPTIONS = {
    "400": "The request is invalid; the body names each faulty field and why.",
    "401": "No valid credential was sent.",
    "403": "The credential lacks the scope or permission for this action.",
    "404": "No such object.",
    "411": "The body was sent without Content-Length (chunked); send its length.",
    "413": "The request body is larger than allowed.",
    "415": "Unsupported content type.",
}


class ControllerAutoSchema(AutoSchema):
    """Adds the error responses a client can meet to every operation."""

    def error_codes(self) -> list[str]:
        codes = []
        if self.method in ("POST", "PUT", "PATCH"):
            codes += ["400", "411", "413", "415"]
        if self.view.get_authenticators():
            codes += ["401", "403"]
        if "{" in self.path:
            codes.append("404")
        return codes

    def get_filter_backends(self) -> list[Any]:
        # The same backends the view applies: list filters only on the list action.
        if not self._is_list_view() or not hasattr(self.view, "filter_backends_for_action"):
            return super().get_filter_backends()
        return self.view.filter_backends_for_action()

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self.error_codes():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=_ERROR_DESCRIPTIONS[code]),
                    code,
                )
        return responses
