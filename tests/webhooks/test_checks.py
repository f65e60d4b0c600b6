"""The system check on Standard Webhooks secrets."""

from __future__ import annotations

from django.core.checks import run_checks
from django.test import override_settings


def _e006() -> list[str]:
    return [m.msg for m in run_checks() if m.id == "kohakku_controller.E006"]


def test_valid_whsec_secret_passes():
    with override_settings(
        KOHAKKU_CONTROLLER={
            "WEBHOOK_SECRETS": {"custom": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}
        }
    ):
        assert _e006() == []


def test_plain_password_is_an_error_naming_the_index():
    with override_settings(
        KOHAKKU_CONTROLLER={
            "WEBHOOK_SECRETS": {"custom": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2!"]}
        }
    ):
        messages = _e006()
    assert len(messages) == 1
    assert "['custom'][1]" in messages[0]
