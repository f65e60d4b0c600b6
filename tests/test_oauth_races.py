"""Token requests racing a reset of the client's secret or a narrowed grant, on PostgreSQL.

A token request checks the client's secret and scopes, then saves its token. A reset or a
narrowed grant committed in between revokes the client's tokens, but not that one, which is
not saved yet: it must not be issued.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from oauth2_provider.models import get_access_token_model

from kohakku_controller.oauth import ClientScopes, create_or_reset_client
from kohakku_controller.oauth_validators import ControllerOAuth2Validator

from .concurrency import run_all

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def token_request(client_id: str, secret: str, scope: str) -> Any:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return Client().post(
        "/o/token/",
        {"grant_type": "client_credentials", "scope": scope},
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )


def after(monkeypatch: Any, step: str, change: Callable[[], Any]) -> None:
    """Commit ``change`` on another connection once the token request's ``step`` passed."""
    original = getattr(ControllerOAuth2Validator, step)

    def then_the_change(self: Any, *args: Any, **kwargs: Any) -> Any:
        passed = original(self, *args, **kwargs)
        (result,) = run_all([change])
        assert result is None or not isinstance(result, Exception), result
        return passed

    monkeypatch.setattr(ControllerOAuth2Validator, step, then_the_change)


def test_a_token_checked_against_a_secret_reset_meanwhile_is_not_issued(monkeypatch):
    created = create_or_reset_client("orchestrator", ["tasks:read"])
    after(monkeypatch, "authenticate_client", lambda: create_or_reset_client(
        "orchestrator", ["tasks:read"]
    ) and None)  # fmt: skip
    response = token_request(created.client_id, created.client_secret, "tasks:read")
    assert response.status_code == 401, response.content
    assert json.loads(response.content)["error"] == "invalid_client"
    assert not get_access_token_model().objects.exists()


def test_a_token_checked_against_a_grant_narrowed_meanwhile_is_not_issued(monkeypatch):
    created = create_or_reset_client("orchestrator", ["tasks:read", "tasks:write"])

    def narrow() -> None:
        grant = ClientScopes.objects.get(application=created.application)
        grant.scopes = ["tasks:read"]
        grant.save()

    after(monkeypatch, "validate_scopes", narrow)
    response = token_request(created.client_id, created.client_secret, "tasks:read tasks:write")
    assert response.status_code == 400, response.content
    assert json.loads(response.content)["error"] == "invalid_scope"
    assert not get_access_token_model().objects.exists()
    # A request for what is still granted gets its token.
    assert token_request(created.client_id, created.client_secret, "tasks:read").status_code == 200
