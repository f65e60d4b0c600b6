"""Fixtures shared by every test: API clients for each kind of caller, and real S3."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone
from oauth2_provider.models import get_access_token_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from kohakku_controller.oauth import create_or_reset_client


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A SeaweedFS S3 server for the whole session (only started when a test asks)."""
    from tests.s3server import run_seaweedfs

    with run_seaweedfs() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _real_s3_storage(request: pytest.FixtureRequest) -> Iterator[None]:
    """With KOHAKKU_TEST_S3=1 every test runs with the controller's storage on real S3."""
    if os.environ.get("KOHAKKU_TEST_S3") != "1":
        yield
        return
    server = request.getfixturevalue("s3_server")
    from django.conf import settings

    storages = {**settings.STORAGES, "kohakku": _s3_storage_settings(server, "kohakku-test")}
    with override_settings(STORAGES=storages):
        yield


def _s3_storage_settings(server: Any, bucket: str) -> dict[str, Any]:
    return {
        "BACKEND": "kohakku_controller.s3.S3Storage",
        "OPTIONS": {
            "endpoint_url": server.endpoint_url,
            "bucket_name": bucket,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            "region_name": "us-east-1",
        },
    }


@pytest.fixture
def s3_storage(s3_server: Any, settings: Any) -> Any:
    """The controller's storage on real S3 for this test, whatever the run's default."""
    settings.STORAGES = {
        **settings.STORAGES,
        "kohakku": _s3_storage_settings(s3_server, "kohakku-test"),
    }
    return s3_server


@pytest.fixture
def filesystem_storage(tmp_path: Any, settings: Any) -> Any:
    """The controller's storage on the local filesystem for this test."""
    settings.STORAGES = {
        **settings.STORAGES,
        "kohakku": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "storage")},
        },
    }
    return tmp_path / "storage"


@pytest.fixture
def redis_cache(settings: Any) -> str:
    """The cache on the real Redis for this test: REDIS_URL, or else db 14 on the local server.

    The services run, which sets REDIS_URL (db 15) and may clear it, runs beside the runs on
    embedded defaults; those use db 14, and every run's keys and pub/sub channels (which span
    databases) carry its process id, so runs that share the server never see each other's.
    """
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"kohakku-test-{os.getpid()}",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        },
    }
    return url


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def make_user(db: Any) -> Callable[..., Any]:
    def make(username: str = "operator", *, staff: bool = False, perms: tuple[str, ...] = ()):
        from django.contrib.auth.models import Permission

        user = get_user_model().objects.create_user(username=username, is_staff=staff)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return user

    return make


@pytest.fixture
def token_client(make_user: Callable[..., Any]) -> Callable[..., APIClient]:
    """An APIClient authenticated with a DRF token for a new user."""

    def make(username: str = "operator", *, staff: bool = False, perms: tuple[str, ...] = ()):
        user = make_user(username, staff=staff, perms=perms)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        client.user = user
        return client

    return make


@pytest.fixture
def staff_client(token_client: Callable[..., APIClient]) -> APIClient:
    return token_client("staff", staff=True)


@pytest.fixture
def oauth_client(db: Any) -> Callable[..., APIClient]:
    """An APIClient with an OAuth2 client-credentials access token carrying ``scopes``."""

    def make(*scopes: str, name: str | None = None, expired: bool = False) -> APIClient:
        import secrets

        created = create_or_reset_client(name or f"client-{secrets.token_hex(4)}", list(scopes))
        expires = timezone.now() + (timedelta(hours=-1) if expired else timedelta(hours=1))
        access_token = get_access_token_model().objects.create(
            application=created.application,
            token=secrets.token_urlsafe(24),
            expires=expires,
            scope=" ".join(scopes),
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token.token}")
        client.application = created.application
        return client

    return make


def _database_vendor() -> str:
    from django.db import connection

    return connection.vendor


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PostgreSQL-only tests (locking, SKIP LOCKED races) run in the real-services run.

    Elsewhere they are deselected, not skipped, and the count is reported; so are tests that
    run a PostgreSQL server of their own on a machine without the server binaries, and
    SQLite-only tests on PostgreSQL.
    """
    from tests.pgserver import server_binaries

    reasons: list[tuple[str, bool]] = [
        ("postgres", _database_vendor() != "postgresql"),
        ("sqlite", _database_vendor() != "sqlite"),
        ("postgres_server", server_binaries() is None),
    ]
    selected, deselected = [], {marker: 0 for marker, _ in reasons}
    for item in items:
        unmet = [m for m, missing in reasons if missing and item.get_closest_marker(m)]
        if unmet:
            deselected[unmet[0]] += 1
            config.hook.pytest_deselected(items=[item])
        else:
            selected.append(item)
    items[:] = selected
    config._kohakku_deselected = deselected  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from django.conf import settings

    storage = settings.STORAGES["kohakku"]["BACKEND"]
    if os.environ.get("KOHAKKU_TEST_S3") == "1":
        storage = "kohakku_controller.s3.S3Storage (SeaweedFS)"
    return [
        f"kohakku: database={settings.DATABASES['default']['ENGINE']} "
        f"cache={settings.CACHES['default']['BACKEND']} storage={storage}"
    ]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    deselected = getattr(config, "_kohakku_deselected", {})
    if deselected.get("postgres"):
        terminalreporter.write_line(
            f"kohakku: {deselected['postgres']} PostgreSQL-only tests deselected on this "
            "database; they run in the py313-django61-services environment."
        )
    if deselected.get("sqlite"):
        terminalreporter.write_line(
            f"kohakku: {deselected['sqlite']} SQLite-only tests deselected on this database; "
            "they run in the embedded-defaults environments."
        )
    if deselected.get("postgres_server"):
        terminalreporter.write_line(
            f"kohakku: {deselected['postgres_server']} tests that restart a PostgreSQL server of "
            "their own deselected: initdb and pg_ctl were not found on this machine."
        )


@pytest.fixture
def admin_browser(db: Any) -> Any:
    """A test client logged in to the admin as a superuser."""
    from django.test import Client

    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.fixture
def application(db: Any) -> Any:
    """A confidential client-credentials OAuth2 application named "orchestrator"."""
    from oauth2_provider.models import get_application_model

    model = get_application_model()
    return model.objects.create(
        name="orchestrator",
        client_type=model.CLIENT_CONFIDENTIAL,
        authorization_grant_type=model.GRANT_CLIENT_CREDENTIALS,
    )
