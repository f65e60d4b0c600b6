"""Test settings: the example project's settings, read from the same environment variables.

Unset variables give the embedded defaults (SQLite, local memory, filesystem). The
real-services run sets ``DATABASE_URL`` and ``REDIS_URL``, and ``KOHAKKU_TEST_S3=1`` to
start a SeaweedFS S3 server for the session (see ``tests/s3server.py``).
"""

import tempfile
from pathlib import Path

from example_project.settings import *  # noqa: F403
from example_project.settings import DATABASES, KOHAKKU_CONTROLLER

TEST_VAR_DIR = Path(tempfile.mkdtemp(prefix="kohakku-tests-"))
VAR_DIR = TEST_VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "kohakku": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(TEST_VAR_DIR / "storage")},
    },
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["NAME"] = str(TEST_VAR_DIR / "db.sqlite3")
    DATABASES["default"]["TEST"] = {"NAME": str(TEST_VAR_DIR / "test.sqlite3")}

KOHAKKU_CONTROLLER = {**KOHAKKU_CONTROLLER}
LOGGING = {"version": 1, "disable_existing_loggers": False}
ROOT_URLCONF = "tests.urls"
STATIC_ROOT = TEST_VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
