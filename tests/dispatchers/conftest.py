"""Fixtures for the dispatcher registry: dispatcher clients, operators and registered rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher

CHECKIN_URL = "/api/v1/dispatchers/checkin/"
LIST_URL = "/api/v1/dispatchers/"


def heartbeat_url(guid: Any) -> str:
    return f"/api/v1/dispatchers/{guid}/heartbeat/"


def detail_url(guid: Any) -> str:
    return f"/api/v1/dispatchers/{guid}/"


def rotate_url(guid: Any) -> str:
    return f"/api/v1/dispatchers/{guid}/rotate-secret/"


def checkin_body(name: str = "local-dev", **overrides: Any) -> dict[str, Any]:
    """The seed's check-in body."""
    body = {
        "name": name,
        "endpoint_url": "http://dispatcher:8080",
        "cloud": "local",
        "backends": ["local"],
        "labels": {},
        "heartbeat_interval_seconds": 60,
    }
    body.update(overrides)
    return body


@pytest.fixture
def dispatcher_client(oauth_client: Callable[..., APIClient]) -> APIClient:
    """An OAuth2 client with the ``dispatchers`` scope."""
    return oauth_client("dispatchers", name="dispatcher-client")


@pytest.fixture
def register(dispatcher_client: APIClient) -> Callable[..., Dispatcher]:
    """Check a dispatcher in through the service, owned by ``dispatcher_client``."""

    def make(name: str = "local-dev", *, application: Any = None, **fields: Any) -> Dispatcher:
        result = services.checkin(
            application=application or dispatcher_client.application,
            data=checkin_body(name, **fields),
        )
        return result.dispatcher

    return make
