"""Labels and backend names: the rules a dispatcher's and a task's share.

Tasks and workflows validate their required labels and backend with the same rules as
dispatchers, so a task can never require a label or a backend no dispatcher could carry.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from rest_framework.exceptions import ValidationError

#: A backend name, as a dispatcher lists it and a task asks for it.
BACKEND_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
BACKEND_NAME_RULE = (
    "1-32 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit"
)
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
MAX_LABELS = 64
LABEL_VALUE_MAX_LENGTH = 255


def has_control_characters(value: str) -> bool:
    """True if ``value`` holds control, format or line/paragraph separator characters."""
    return any(unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in value)


def validate_labels(data: Any, *, max_labels: int = MAX_LABELS) -> dict[str, str]:
    """Return ``data`` as a label map, or raise ``ValidationError`` saying what is wrong.

    The error is a message for the map as a whole, or ``{key: [reason]}`` per bad label.
    """
    if not isinstance(data, dict):
        raise ValidationError("Expected an object mapping label keys to strings.")
    if len(data) > max_labels:
        raise ValidationError(f"At most {max_labels} labels are allowed.")
    errors: dict[str, list[str]] = {}
    for key, value in data.items():
        if not LABEL_KEY_RE.fullmatch(key):
            errors[key[:70]] = [
                "Label keys are 1-63 characters: letters, digits, '.', '_', '/' and '-', "
                "starting and ending with a letter or digit."
            ]
        elif not isinstance(value, str):
            errors[key] = ["Label values must be strings."]
        elif len(value) > LABEL_VALUE_MAX_LENGTH:
            errors[key] = [f"At most {LABEL_VALUE_MAX_LENGTH} characters."]
        elif has_control_characters(value):
            errors[key] = ["Must not contain control characters."]
    if errors:
        raise ValidationError(errors)
    return dict(data)
