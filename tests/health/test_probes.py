"""/health/ and /ready/: every check listed, 503 when one fails, never a hang or a leak."""

import socket
import time

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db(transaction=True)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_health_checks_the_database(client):
    response = client.get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database"}
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["database"]["latency_ms"] >= 0


def test_ready_checks_database_cache_and_storage(client):
    response = client.get("/ready/")
    assert response.status_code == 200, response.content
    assert set(response.json()["checks"]) == {"database", "cache", "storage"}
    assert response["Cache-Control"] == "no-store"


def test_probes_need_no_credentials(client):
    assert client.get("/ready/", HTTP_AUTHORIZATION="Token bogus").status_code == 200


def test_dead_redis_fails_readiness_quickly_and_keeps_liveness(client):
    port = _closed_port()
    caches = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }
    with override_settings(CACHES=caches):
        started = time.monotonic()
        ready = client.get("/ready/")
        elapsed = time.monotonic() - started
        health = client.get("/health/")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["cache"]["status"] == "error"
    assert checks["database"]["status"] == "ok"
    assert str(port) not in ready.content.decode()
    assert "127.0.0.1" not in ready.content.decode()
    assert elapsed < 3
    assert health.status_code == 200


def test_hanging_dependency_times_out(client, settings):
    # A listening socket that never answers: the S3 client would wait on it.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        storages = {
            **settings.STORAGES,
            "kohakku": {
                "BACKEND": "kohakku_controller.s3.S3Storage",
                "OPTIONS": {
                    "endpoint_url": f"http://127.0.0.1:{port}",
                    "bucket_name": "nowhere",
                    "access_key": "k",
                    "secret_key": "s",
                },
            },
        }
        with override_settings(STORAGES=storages, KOHAKKU_CONTROLLER={"HEALTH_CHECK_TIMEOUT": 0.5}):
            started = time.monotonic()
            response = client.get("/ready/")
            elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == {
        "status": "error",
        "latency_ms": 500.0,
        "error": "timed out after 0.5 s",
    }
    assert elapsed < 1.5


def test_stopped_s3_endpoint_fails_readiness(client, settings):
    port = _closed_port()
    storages = {
        **settings.STORAGES,
        "kohakku": {
            "BACKEND": "kohakku_controller.s3.S3Storage",
            "OPTIONS": {
                "endpoint_url": f"http://127.0.0.1:{port}",
                "bucket_name": "nowhere",
                "access_key": "k",
                "secret_key": "s",
            },
        },
    }
    with override_settings(STORAGES=storages):
        started = time.monotonic()
        response = client.get("/ready/")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["status"] == "error"
    assert "127.0.0.1" not in response.content.decode()
    assert elapsed < 3
