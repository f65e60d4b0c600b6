"""The ``KOHAKKU_CONTROLLER`` settings dict, read through a lazy object.

Usage::

    from kohakku_controller.conf import kohakku_settings
    kohakku_settings.PAGE_SIZE

Values are read from ``settings.KOHAKKU_CONTROLLER`` on first access and cached;
the cache is dropped whenever Django sends ``setting_changed`` for that setting
(``override_settings`` in tests does this). Entries named in ``IMPORT_STRINGS``
are dotted paths that are imported on access.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

SETTINGS_NAME = "KOHAKKU_CONTROLLER"

DEFAULTS: dict[str, Any] = {
    # --- storage and cache, chosen by alias ---------------------------------
    # Alias in settings.STORAGES for skill packages and task results.
    "STORAGE_ALIAS": "kohakku",
    # Alias in settings.CACHES for wake-ups, rate data and readiness.
    "CACHE_ALIAS": "default",
    # --- API ------------------------------------------------------------------
    "AUTHENTICATION_CLASSES": [
        "oauth2_provider.contrib.rest_framework.OAuth2Authentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "PAGINATION_CLASS": "kohakku_controller.pagination.LinkHeaderPagination",
    # DRF throttles for the API (import strings). None by default, whatever the host's
    # DEFAULT_THROTTLE_CLASSES: a throttled heartbeat, callback or probe breaks the platform.
    "THROTTLE_CLASSES": [],
    "PAGE_SIZE": 50,
    "MAX_PAGE_SIZE": 500,
    # Largest JSON request body the API parses, in bytes (uploads have their own cap).
    "MAX_JSON_BODY_BYTES": 1024 * 1024,
    # Deepest nesting of objects and arrays in a JSON document from the network (request
    # bodies and webhook payloads).
    "MAX_JSON_DEPTH": 64,
    # --- health ----------------------------------------------------------------
    # Seconds each readiness check may take before it counts as failed.
    "HEALTH_CHECK_TIMEOUT": 2.0,
    # --- dispatchers ---------------------------------------------------------
    # A dispatcher is offline once this many heartbeat intervals pass without one.
    "MISSED_HEARTBEATS": 3,
    # Seconds a rotated-out signing secret stays valid after a rotation (check-in with
    # "rotate_secret": true, or the operator's rotate-secret call). 0 ends it at once.
    "SECRET_ROTATION_GRACE_SECONDS": 3600,
    # Capacity (maximum concurrent tasks) of a dispatcher whose check-in does not say.
    "DEFAULT_DISPATCHER_CAPACITY": 4,
    # --- dispatcher contract -------------------------------------------------
    # Accepted clock skew for X-Kohakku-Timestamp, in seconds.
    "SIGNATURE_TOLERANCE_SECONDS": 300,
    # Key material used to encrypt dispatcher signing secrets at rest.
    # None derives a key from settings.SECRET_KEY.
    "SECRET_ENCRYPTION_KEY": None,
    # --- skills ----------------------------------------------------------------
    # Categories a skill may have.
    "SKILL_CATEGORIES": ["tool", "agent", "workflow", "integration", "data"],
    # Largest package (the zip as uploaded), in bytes; larger uploads answer 413.
    "SKILL_PACKAGE_MAX_BYTES": 50 * 1024 * 1024,
    # Largest total size of a package's files once decompressed, counted while decompressing.
    "SKILL_PACKAGE_MAX_UNCOMPRESSED_BYTES": 200 * 1024 * 1024,
    # Most entries (files and folders) a package may hold.
    "SKILL_PACKAGE_MAX_FILES": 1000,
    # Largest decompressed/compressed ratio of one entry once it passes 1 MiB (zip bombs).
    "SKILL_PACKAGE_MAX_COMPRESSION_RATIO": 100,
    # Largest YAML front matter of SKILL.md, in bytes, and its deepest nesting.
    "SKILL_MANIFEST_MAX_BYTES": 64 * 1024,
    "SKILL_MANIFEST_MAX_DEPTH": 8,
    # On S3 storage, answer downloads with 302 to a presigned URL instead of streaming.
    "SKILL_DOWNLOAD_REDIRECT": False,
    # Lifetime of presigned and signed download URLs, in seconds.
    "SKILL_DOWNLOAD_URL_EXPIRES_SECONDS": 900,
    # Stored blobs no version references are pruned only once older than this, in seconds.
    "SKILL_BLOB_GRACE_SECONDS": 24 * 3600,
    # Endpoint that presigned S3 URLs are signed for, when clients reach S3 under another
    # address than the controller does (e.g. "https://s3.example.com"). None: the storage's.
    "STORAGE_PUBLIC_ENDPOINT_URL": None,
    # --- tasks -------------------------------------------------------------------
    # Origin (scheme://host[:port]) the dispatchers reach the controller at; used to build
    # callback, result-upload and package URLs sent in pushes.
    "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
    # Defaults and limits for new tasks.
    "TASK_DEFAULT_TIMEOUT_SECONDS": 3600,
    "TASK_MAX_TIMEOUT_SECONDS": 7 * 24 * 3600,
    "TASK_DEFAULT_MAX_ATTEMPTS": 3,
    "TASK_MAX_ATTEMPTS_LIMIT": 20,
    # Largest task input, in bytes of compact JSON.
    "TASK_INPUT_MAX_BYTES": 256 * 1024,
    # Most required labels a task may list.
    "TASK_MAX_LABELS": 32,
    # --- callbacks and results -------------------------------------------------
    # Largest callback body, in bytes.
    "CALLBACK_MAX_BODY_BYTES": 64 * 1024,
    # Largest result_metadata (compact JSON bytes) and error_message (characters).
    "RESULT_METADATA_MAX_BYTES": 16 * 1024,
    "ERROR_MESSAGE_MAX_CHARS": 8000,
    # Largest result a dispatcher may upload through the controller's upload endpoint.
    "RESULT_MAX_BYTES": 100 * 1024 * 1024,
    # Lifetime of presigned result upload / download URLs (package URLs: see skills).
    "RESULT_URL_EXPIRES_SECONDS": 3600,
    # --- scheduler ---------------------------------------------------------------
    # Queued tasks claimed per pass.
    "SCHEDULER_BATCH_SIZE": 100,
    # Longest wait between passes when no wake-up arrives.
    "SCHEDULER_POLL_SECONDS": 2.0,
    # Pushes (and cancel requests) in flight at once per scheduler.
    "SCHEDULER_PUSH_CONCURRENCY": 16,
    # Timeouts of one push, in seconds.
    "PUSH_CONNECT_TIMEOUT": 3.0,
    "PUSH_READ_TIMEOUT": 10.0,
    # A claim whose push was never recorded is taken back after this many seconds (it
    # must exceed the push timeouts).
    "SCHEDULER_LEASE_SECONDS": 60,
    # Backoff after a failed push: base x 2^(attempt-1), capped, with jitter.
    "PUSH_BACKOFF_BASE_SECONDS": 2.0,
    "PUSH_BACKOFF_MAX_SECONDS": 300.0,
    # A queued task that matched no dispatcher is looked at again after this long.
    "UNMATCHED_RECHECK_SECONDS": 5.0,
    # Extra time after a dispatcher goes offline before its unfinished tasks are requeued.
    "LOST_DISPATCHER_GRACE_SECONDS": 300,
    # Time a dispatcher has to confirm a cancellation before the task is marked cancelled.
    "CANCEL_GRACE_SECONDS": 60,
    # Requeue running tasks that a dispatcher's heartbeats stop listing (after this grace).
    "RECONCILE_REPORTED_TASKS": True,
    "REPORTED_TASKS_GRACE_SECONDS": 60,
    # Wake-up channel: "auto" (PostgreSQL LISTEN/NOTIFY, else Redis pub/sub, else polling),
    # "postgres", "redis" or "poll".
    "SCHEDULER_WAKEUP": "auto",
    # --- webhooks ----------------------------------------------------------------
    # Secrets per source; several per source are allowed so they can be rotated.
    "WEBHOOK_SECRETS": {"github": [], "slack": [], "custom": []},
    # Accept deliveries from a source that has no secret configured (development only).
    "ALLOW_UNSIGNED_WEBHOOKS": False,
    # Largest webhook body accepted, in bytes (GitHub sends up to 25 MB); larger gets 413.
    "WEBHOOK_MAX_BODY_BYTES": 25 * 1024 * 1024,
    # Bytes of each delivery's raw body kept in the delivery log; longer bodies are
    # truncated there and cannot be replayed.
    "WEBHOOK_LOG_BODY_BYTES": 1024 * 1024,
    # Accepted clock skew for Slack and Standard Webhooks timestamps, in seconds.
    "WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS": 300,
    # Days kohakku_prune_deliveries keeps deliveries for.
    "WEBHOOK_DELIVERY_RETENTION_DAYS": 30,
    # Days kohakku_prune_tasks keeps finished tasks (with their events and results) for.
    "TASK_RETENTION_DAYS": 90,
}

# Settings whose values are dotted import paths (or lists of them).
IMPORT_STRINGS: tuple[str, ...] = ("AUTHENTICATION_CLASSES", "PAGINATION_CLASS", "THROTTLE_CLASSES")

# Settings that used to exist: name -> what to do instead.
REMOVED_SETTINGS: dict[str, str] = {}


def perform_import(value: Any, setting_name: str) -> Any:
    """Import a dotted path, or each of a list of them."""
    if value is None:
        return None
    if isinstance(value, str):
        return import_from_string(value, setting_name)
    if isinstance(value, (list, tuple)):
        return [import_from_string(item, setting_name) for item in value]
    return value


def import_from_string(value: str, setting_name: str) -> Any:
    try:
        return import_string(value)
    except ImportError as exc:
        raise ImportError(
            f"Could not import {value!r} for {SETTINGS_NAME}[{setting_name!r}]: {exc}"
        ) from exc


class KohakkuSettings:
    """Lazy access to ``settings.KOHAKKU_CONTROLLER`` with defaults filled in."""

    def __init__(
        self,
        defaults: dict[str, Any] | None = None,
        import_strings: tuple[str, ...] | None = None,
    ) -> None:
        self.defaults = defaults if defaults is not None else DEFAULTS
        self.import_strings = import_strings if import_strings is not None else IMPORT_STRINGS
        self._cached_attrs: set[str] = set()
        self._user_settings: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user_settings is None:
            configured = getattr(settings, SETTINGS_NAME, None) or {}
            # Anything but a dict is check E001's to report; meanwhile, the defaults.
            self._user_settings = dict(configured) if isinstance(configured, dict) else {}
        return self._user_settings

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr not in self.defaults:
            raise AttributeError(f"Invalid {SETTINGS_NAME} setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr in self.import_strings:
            value = perform_import(value, attr)
        self._cached_attrs.add(attr)
        setattr(self, attr, value)
        return value

    def reload(self) -> None:
        for attr in self._cached_attrs:
            delattr(self, attr)
        self._cached_attrs.clear()
        self._user_settings = None


kohakku_settings = KohakkuSettings()


def reload_kohakku_settings(*args: Any, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        kohakku_settings.reload()


setting_changed.connect(reload_kohakku_settings)
