"""The example project reads its configuration from the pinned environment variables."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRINT_SETTINGS = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "db": settings.DATABASES["default"]["ENGINE"],
    "db_name": settings.DATABASES["default"]["NAME"],
    "db_options": settings.DATABASES["default"].get("OPTIONS", {}),
    "cache": settings.CACHES["default"]["BACKEND"],
    "storage": settings.STORAGES["kohakku"]["BACKEND"],
    "storage_options": settings.STORAGES["kohakku"].get("OPTIONS", {}),
    "secrets": settings.KOHAKKU_CONTROLLER["WEBHOOK_SECRETS"],
}))
"""


def _settings_with(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=ROOT / "example_project",
        env={"DJANGO_SETTINGS_MODULE": "example_project.settings", "PATH": "/usr/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_embedded_defaults():
    found = _settings_with({})
    assert found["db"] == "django.db.backends.sqlite3"
    assert found["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert found["storage"] == "django.core.files.storage.FileSystemStorage"
    assert found["secrets"] == {"github": [], "slack": [], "custom": []}


def test_real_services_from_environment():
    found = _settings_with(
        {
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/kohakku",
            "REDIS_URL": "redis://127.0.0.1:6379/3",
            "KOHAKKU_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
            "KOHAKKU_S3_BUCKET": "packages",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "KOHAKKU_GITHUB_WEBHOOK_SECRET": "new, old",
            "KOHAKKU_SLACK_SIGNING_SECRET": "slack",
            "KOHAKKU_CUSTOM_WEBHOOK_SECRET": "whsec_abc",
        }
    )
    assert found["db"] == "kohakku_controller.postgresql"
    assert found["db_name"] == "kohakku"
    assert found["db_options"] == {
        "connect_timeout": 3,
        "server_side_binding": True,
        "prepare_threshold": 5,
    }
    assert found["cache"] == "django_redis.cache.RedisCache"
    assert found["storage"] == "kohakku_controller.s3.S3Storage"
    assert found["storage_options"]["bucket_name"] == "packages"
    assert found["storage_options"]["endpoint_url"] == "http://127.0.0.1:8333"
    assert found["secrets"] == {
        "github": ["new", "old"],
        "slack": ["slack"],
        "custom": ["whsec_abc"],
    }


def test_prepared_statements_can_be_turned_off_for_old_poolers():
    database = "postgres://postgres@127.0.0.1:5432/kohakku"
    off = _settings_with({"DATABASE_URL": database, "DJANGO_DB_PREPARE_THRESHOLD": ""})
    assert off["db_options"]["prepare_threshold"] is None
    eager = _settings_with({"DATABASE_URL": database, "DJANGO_DB_PREPARE_THRESHOLD": "0"})
    assert eager["db_options"]["prepare_threshold"] == 0
