"""The example project reads its configuration from the pinned environment variables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.sqlite
@pytest.mark.django_db(transaction=True)
def test_sqlite_transactions_that_read_then_write_wait_for_each_other():
    """`make run` puts several processes on one SQLite file: none may fail as "locked".

    Two transactions that both read and then write would deadlock on SQLite's lock upgrade,
    and one failed at once with "database is locked"; writers now take the lock when they
    begin, so the second waits for the first.
    """
    import contextlib
    import threading

    from django.db import connection, transaction

    from kohakku_controller.oauth import ClientScopes, create_or_reset_client

    both_read = threading.Barrier(2)
    errors: list[Exception] = []

    def read_then_write(index: int) -> None:
        try:
            with transaction.atomic():
                list(ClientScopes.objects.all())
                # With the fix the other is still waiting to begin: the barrier times out.
                with contextlib.suppress(threading.BrokenBarrierError):
                    both_read.wait(timeout=1)
                create_or_reset_client(f"client-{index}", [])
        except Exception as exc:  # the failure under test: "database is locked"
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=read_then_write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ClientScopes.objects.count() == 2


def test_migrate_on_a_fresh_checkout_creates_the_var_directory(tmp_path):
    var = tmp_path / "not-yet" / "var"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT / "example_project",
        env={"DJANGO_SETTINGS_MODULE": "example_project.settings", "PATH": "/usr/bin",
             "KOHAKKU_VAR_DIR": str(var)},
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert (var / "db.sqlite3").is_file()
