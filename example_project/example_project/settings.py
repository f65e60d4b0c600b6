"""Settings of the example host project, read from environment variables.

Every variable has an embedded default, so the project runs with none set; an empty
variable counts as unset (except DJANGO_SECRET_KEY, where it stops start-up, and
DJANGO_DB_PREPARE_THRESHOLD, where it turns preparing off), and a number that does not
read stops start-up naming the variable. The full list, with defaults, is in
docs/settings.md ("Example project environment"):
DATABASE_URL, REDIS_URL, KOHAKKU_S3_ENDPOINT_URL, KOHAKKU_S3_BUCKET, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, KOHAKKU_GITHUB_WEBHOOK_SECRET,
KOHAKKU_SLACK_SIGNING_SECRET, KOHAKKU_CUSTOM_WEBHOOK_SECRET (each comma-separated for
rotation), the scheduler and liveness timings KOHAKKU_MISSED_HEARTBEATS,
KOHAKKU_LOST_DISPATCHER_GRACE_SECONDS, KOHAKKU_CANCEL_GRACE_SECONDS,
KOHAKKU_REPORTED_TASKS_GRACE_SECONDS, KOHAKKU_SCHEDULER_POLL_SECONDS,
KOHAKKU_SCHEDULER_LEASE_SECONDS, KOHAKKU_PUSH_BACKOFF_BASE_SECONDS, DJANGO_SECRET_KEY,
DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS, DJANGO_CONN_MAX_AGE, DJANGO_DB_PREPARE_THRESHOLD,
KOHAKKU_VAR_DIR, KOHAKKU_PUBLIC_BASE_URL, PORT and DJANGO_LOG_LEVEL.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from kohakku_controller.auth import SCOPES


def env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def env(name: str, default: str) -> str:
    """The variable, or ``default`` when it is unset or empty."""
    return os.environ.get(name, "").strip() or default


def env_number(name: str, kind: type[int] | type[float], default: str) -> Any:
    """The variable as a whole number (``int``) or a number (``float``), or ``default`` when
    it is unset or empty; a value that is neither stops start-up with the variable named."""
    value = env(name, default)
    try:
        return kind(value)
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise ImproperlyConfigured(f"{name}={value!r} is not {wanted}.") from None


BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env("KOHAKKU_VAR_DIR", str(BASE_DIR.parent / "var"))).resolve()
# The SQLite database, stored packages and static files live here: `manage.py migrate` on a
# fresh checkout must not fail with "unable to open database file".
# A read-only image that keeps nothing here may not be able to: then nothing needs it.
with contextlib.suppress(OSError):
    VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS") or ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "oauth2_provider",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "kohakku_controller",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_number("DJANGO_CONN_MAX_AGE", int, "0"),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # `make run` has the web server, the scheduler, a dispatcher and management commands on
    # one file. Write transactions take the lock when they begin (a read that turns into a
    # write cannot then fail with "database is locked"), waits for a lock last up to 20 s,
    # and write-ahead logging lets readers go on while one process writes.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's PostgreSQL backend whose health check asks the socket, not the server.
    DATABASES["default"]["ENGINE"] = "kohakku_controller.postgresql"
    options = DATABASES["default"].setdefault("OPTIONS", {})
    # Fail fast instead of hanging when the server is unreachable.
    options["connect_timeout"] = 3
    # Parameters travel beside the statement instead of being quoted into it: less work
    # per query. No named prepared statements, so PgBouncer in transaction mode still works.
    options["server_side_binding"] = True
    # A statement a connection runs this many times (a heartbeat's token lookup and update, a
    # callback's) is prepared: the server parses and plans it once per connection. Behind
    # PgBouncer in transaction mode this needs PgBouncer 1.21+ with max_prepared_statements
    # set; an empty value turns preparing off.
    preparing = os.environ.get("DJANGO_DB_PREPARE_THRESHOLD", "5").strip()
    options["prepare_threshold"] = (
        env_number("DJANGO_DB_PREPARE_THRESHOLD", int, "5") if preparing else None
    )

REDIS_URL = os.environ.get("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

S3_ENDPOINT_URL = os.environ.get("KOHAKKU_S3_ENDPOINT_URL")
if S3_ENDPOINT_URL:
    kohakku_storage = {
        "BACKEND": "kohakku_controller.s3.S3Storage",
        "OPTIONS": {
            "endpoint_url": S3_ENDPOINT_URL,
            "bucket_name": env("KOHAKKU_S3_BUCKET", "kohakku"),
            "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "region_name": env("AWS_DEFAULT_REGION", "us-east-1"),
            "custom_domain": None,
        },
    }
else:
    kohakku_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "storage")},
    }

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    "kohakku": kohakku_storage,
}

KOHAKKU_CONTROLLER = {
    # Where dispatchers reach this controller (callback, package and result URLs in pushes).
    "PUBLIC_BASE_URL": env("KOHAKKU_PUBLIC_BASE_URL", f"http://127.0.0.1:{env('PORT', '8000')}"),
    "WEBHOOK_SECRETS": {
        "github": env_list("KOHAKKU_GITHUB_WEBHOOK_SECRET"),
        "slack": env_list("KOHAKKU_SLACK_SIGNING_SECRET"),
        "custom": env_list("KOHAKKU_CUSTOM_WEBHOOK_SECRET"),
    },
}

# Scheduler and liveness timings, for demos and end-to-end tests that must not wait minutes.
# Each variable overrides the controller setting of the same name (without the prefix) only
# when it is set; see docs/settings.md.
_TIMING_SETTINGS = {
    "MISSED_HEARTBEATS": int,
    "LOST_DISPATCHER_GRACE_SECONDS": int,
    "CANCEL_GRACE_SECONDS": int,
    "REPORTED_TASKS_GRACE_SECONDS": int,
    "SCHEDULER_POLL_SECONDS": float,
    "SCHEDULER_LEASE_SECONDS": int,
    "PUSH_BACKOFF_BASE_SECONDS": float,
}
for _name, _kind in _TIMING_SETTINGS.items():
    if os.environ.get(f"KOHAKKU_{_name}", "").strip():
        KOHAKKU_CONTROLLER[_name] = env_number(f"KOHAKKU_{_name}", _kind, "")

# Named explicitly so that makemigrations can resolve the swappable model.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"

OAUTH2_PROVIDER = {
    "SCOPES": dict(SCOPES),
    "SCOPES_BACKEND_CLASS": "kohakku_controller.oauth.ClientScopesBackend",
    "OAUTH2_VALIDATOR_CLASS": "kohakku_controller.oauth_validators.ControllerOAuth2Validator",
    "OAUTH2_BACKEND_CLASS": "kohakku_controller.oauth_validators.ControllerOAuthLibCore",
    "ACCESS_TOKEN_EXPIRE_SECONDS": 3600,
    # Client credentials is the only grant the controller's clients use; with every other
    # grant off, /o/token/ cannot be asked whether a user's password is right.
    "OAUTH2_SERVER_CLASS": "oauthlib.oauth2.BackendApplicationServer",
    # RFC 9700: no access token in a URL, no password or implicit grant.
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    # Without the "View on site" link to a page kohakku_controller.oauth_urls does not mount.
    "APPLICATION_ADMIN_CLASS": "kohakku_controller.oauth_admin.ClientApplicationAdmin",
}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "kohakku_controller.schema.ControllerAutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Kohakku controller API",
    "DESCRIPTION": "Control plane for skills run by remote dispatchers.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The interactive docs can then get an OAuth2 token for a client's id and secret.
    "OAUTH2_FLOWS": ["clientCredentials"],
    "OAUTH2_TOKEN_URL": "/o/token/",
    # Several resources have a "status" with its own values; name each set explicitly.
    "ENUM_NAME_OVERRIDES": {
        "HealthStatusEnum": ["ok", "error"],
        "TaskStatusEnum": "kohakku_controller.tasks.models.TaskStatus",
        "DispatcherStatusEnum": "kohakku_controller.dispatchers.models.DispatcherStatus",
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", "INFO")},
}
