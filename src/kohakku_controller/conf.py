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
    "PAGE_SIZE": 50,
    "MAX_PAGE_SIZE": 500,
    # Largest JSON request body the API parses, in bytes (uploads have their own cap).
    "MAX_JSON_BODY_BYTES": 1024 * 1024,
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
    # --- webhooks ----------------------------------------------------------------
    # Secrets per source; several per source are allowed so they can be rotated.
    "WEBHOOK_SECRETS": {"github": [], "slack": [], "custom": []},
    # Accept deliveries from a source that has no secret configured (development only).
    "ALLOW_UNSIGNED_WEBHOOKS": False,
}

# Settings whose values are dotted import paths (or lists of them).
IMPORT_STRINGS: tuple[str, ...] = ("AUTHENTICATION_CLASSES", "PAGINATION_CLASS")

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
            self._user_settings = dict(getattr(settings, SETTINGS_NAME, None) or {})
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
