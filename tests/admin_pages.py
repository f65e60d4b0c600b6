"""Helpers for tests that use the admin as a browser does."""

from __future__ import annotations

from typing import Any

from django.contrib.messages import get_messages
from django.test import Client

from kohakku_controller.admin_forms import VERSION_FIELD


def opened_version(browser: Client, url: str) -> dict[str, str]:
    """The hidden version a change form opened at ``url`` sends back with the operator's
    input."""
    form = browser.get(url).context["adminform"].form
    return {VERSION_FIELD: form[VERSION_FIELD].value()}


def messages_of(response: Any) -> list[str]:
    """The admin messages the request behind ``response`` queued."""
    return [str(message) for message in get_messages(response.wsgi_request)]


def workflow_form(skill: Any, **overrides: Any) -> dict[str, Any]:
    """The workflow add or change form as a browser posts it, for ``skill``."""
    data = {
        "name": "Triage PRs",
        "slug": "",
        "enabled": "on",
        "priority": "100",
        "source": "github",
        "event": "pull_request",
        "conditions": "[]",
        "skill": str(skill.pk),
        "skill_version": "",
        "input_template": "payload",
        "backend": "local",
        "labels": "{}",
        "task_priority": "0",
        "timeout_seconds": "",
    }
    data.update(overrides)
    return data
