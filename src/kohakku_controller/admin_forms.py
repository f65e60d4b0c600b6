"""Helpers for admin forms that validate with the API's rules.

The admin must refuse what the API refuses. Its forms call the same serializers and
services, and show the API's errors (DRF error details) on the matching form fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms


def error_messages(detail: Any) -> list[str]:
    """Flatten a DRF error detail (a string, a list or a nested mapping) into messages.

    Nested keys (a list index, a label key) prefix their messages: ``"0: ..."``.
    """
    if isinstance(detail, Mapping):
        return [
            f"{key}: {message}"
            for key, value in detail.items()
            for message in error_messages(value)
        ]
    if isinstance(detail, (list, tuple)):
        return [message for item in detail for message in error_messages(item)]
    return [str(detail)]


def add_api_errors(form: forms.BaseForm, detail: Any) -> None:
    """Show a DRF error detail on ``form``: each field's errors on that field, when the form
    has it and has no error there yet; anything else as a form-wide error naming the field."""
    if not isinstance(detail, Mapping):
        form.add_error(None, error_messages(detail))
        return
    for field, value in detail.items():
        if field in form.fields:
            if field not in form.errors:
                form.add_error(field, error_messages(value))
        elif field == "non_field_errors":
            form.add_error(None, error_messages(value))
        else:
            form.add_error(None, [f"{field}: {message}" for message in error_messages(value)])
