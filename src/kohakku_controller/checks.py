"""System checks for a host project's configuration of the controller."""

from __future__ import annotations

import difflib
import math
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .auth import SCOPES
from .conf import DEFAULTS, IMPORT_STRINGS, REMOVED_SETTINGS, SETTINGS_NAME, perform_import
from .dispatchers.serializers import MAX_CAPACITY
from .parsers import MAX_QUERY_INT

REQUIRED_APPS = (
    "rest_framework",
    "rest_framework.authtoken",
    "oauth2_provider",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
)
WEBHOOK_SOURCES = ("github", "slack", "custom")


def _user_settings() -> Any:
    return getattr(settings, SETTINGS_NAME, {})


@register(Tags.compatibility)
def check_settings_keys(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    user = _user_settings()
    if not isinstance(user, dict):
        return [
            Error(
                f"{SETTINGS_NAME} must be a dict.",
                hint=f"Set {SETTINGS_NAME} = {{...}} in your settings, or remove it.",
                id="kohakku_controller.E001",
            )
        ]
    errors = []
    for key in sorted(user):
        if key in REMOVED_SETTINGS:
            hint = REMOVED_SETTINGS[key]
        elif key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f"Did you mean {close[0]!r}?" if close else "Remove it; see the settings docs."
        else:
            continue
        errors.append(
            Error(
                f"{SETTINGS_NAME} has an unknown key {key!r}.",
                hint=hint,
                obj=SETTINGS_NAME,
                id="kohakku_controller.E001",
            )
        )
    return errors


#: Import-string settings that hold a list of classes.
LIST_SETTINGS = frozenset({"AUTHENTICATION_CLASSES", "THROTTLE_CLASSES"})


@register(Tags.compatibility)
def check_import_strings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    user = _user_settings()
    if not isinstance(user, dict):
        return []
    errors = []
    for key in IMPORT_STRINGS:
        if key not in user:
            continue
        if key in LIST_SETTINGS and not isinstance(user[key], list | tuple):
            errors.append(
                Error(
                    f"{SETTINGS_NAME}[{key!r}] must be a list of dotted paths, not "
                    f"{type(user[key]).__name__}.",
                    hint='For example ["rest_framework.throttling.UserRateThrottle"]; [] for none.',
                    obj=SETTINGS_NAME,
                    id="kohakku_controller.E002",
                )
            )
            continue
        try:
            imported = perform_import(user[key], key)
        except ImportError as exc:
            errors.append(
                Error(
                    f"{SETTINGS_NAME}[{key!r}] does not import: {exc}",
                    hint="Give a dotted path to a class that exists and is installed.",
                    obj=SETTINGS_NAME,
                    id="kohakku_controller.E002",
                )
            )
            continue
        kind, method = CLASS_KINDS[key]
        if key == "PAGINATION_CLASS" and imported is None:
            continue  # DRF's way to turn pagination off
        for path, value in zip(_as_list(user[key]), _as_list(imported), strict=True):
            if not (isinstance(value, type) and callable(getattr(value, method, None))):
                errors.append(
                    Error(
                        f"{SETTINGS_NAME}[{key!r}] names {path!r}, which is not a DRF {kind} "
                        f"class (a class with the method {method}()).",
                        hint=f"Give the dotted path of a {kind} class.",
                        obj=SETTINGS_NAME,
                        id="kohakku_controller.E002",
                    )
                )
    return errors


#: What the classes of the import-string settings must be: DRF's kind, and a method it calls.
CLASS_KINDS: dict[str, tuple[str, str]] = {
    "AUTHENTICATION_CLASSES": ("authentication", "authenticate"),
    "PAGINATION_CLASS": ("pagination", "paginate_queryset"),
    "THROTTLE_CLASSES": ("throttle", "allow_request"),
}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


#: Numeric settings for which 0 is meaningful (no grace, no retention, keep no body).
MAY_BE_ZERO = frozenset(
    {
        "SECRET_ROTATION_GRACE_SECONDS",
        "SKILL_BLOB_GRACE_SECONDS",
        "LOST_DISPATCHER_GRACE_SECONDS",
        "CANCEL_GRACE_SECONDS",
        "REPORTED_TASKS_GRACE_SECONDS",
        "PUSH_BACKOFF_BASE_SECONDS",
        "UNMATCHED_RECHECK_SECONDS",
        "WEBHOOK_LOG_BODY_BYTES",
        "WEBHOOK_DELIVERY_RETENTION_DAYS",
        "TASK_RETENTION_DAYS",
    }
)


@register(Tags.compatibility)
def check_numbers(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Numeric settings hold finite numbers of their default's kind, above 0 (or at least 0).

    A poll interval of 0 or NaN would spin the scheduler; a page size of -1 would break lists.
    """
    user = _user_settings()
    if not isinstance(user, dict):
        return []
    errors = []
    for key, value in sorted(user.items()):
        requirement = _number_requirement(key)
        if requirement is None or _meets(key, value):
            continue
        default = DEFAULTS[key]
        errors.append(
            Error(
                f"{SETTINGS_NAME}[{key!r}] is {value!r}; it must be {requirement}.",
                hint=f"The default is {default!r}; see the settings docs.",
                obj=SETTINGS_NAME,
                id="kohakku_controller.E007",
            )
        )
    return errors


#: Numeric settings with a range of their own: (lowest, highest).
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    # As kohakku_scheduler --poll-seconds: a shorter poll is a busy loop.
    "SCHEDULER_POLL_SECONDS": (0.1, 86400),
    # Times the longest heartbeat interval (3600 s): up to 41 days without a heartbeat.
    "MISSED_HEARTBEATS": (1, 1000),
    "TASK_RETENTION_DAYS": (0, 36500),
    "WEBHOOK_DELIVERY_RETENTION_DAYS": (0, 36500),
}
#: The longest time any other time setting may give: longer ones overflow date arithmetic.
LONGEST_SECONDS = 100 * 365 * 24 * 3600


def _number_range(key: str) -> tuple[float | None, float]:
    """(lowest, highest) of a numeric setting; a lowest of None means "above 0"."""
    if key in NUMBER_RANGES:
        return NUMBER_RANGES[key]
    longest = LONGEST_SECONDS if key.endswith(("_SECONDS", "_TIMEOUT")) else math.inf
    return (0 if key in MAY_BE_ZERO else None, longest)


def _number_requirement(key: str) -> str | None:
    """What a numeric setting must be, in words; None for other settings."""
    default = DEFAULTS.get(key)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return None
    lowest, highest = _number_range(key)
    if isinstance(default, float):
        low = "a number above 0" if lowest is None else f"a number of at least {_n(lowest)}"
    else:
        low = f"a whole number of at least {_n(1 if lowest is None else lowest)}"
    return low if highest == math.inf else f"{low} and at most {_n(highest)}"


def _n(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _meets(key: str, value: Any) -> bool:
    """Whether ``value`` is what the numeric setting ``key`` must be (see E007)."""
    default = DEFAULTS[key]
    kinds = (int,) if isinstance(default, int) else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value):
        return False
    lowest, highest = _number_range(key)
    return (value > 0 if lowest is None else value >= lowest) and value <= highest


#: Numeric settings with an upper bound: the largest value their database column holds, or
#: another setting they must not exceed (a default above its own limit refuses every task
#: that relies on it).
UPPER_BOUNDS: dict[str, int | str] = {
    "TASK_MAX_TIMEOUT_SECONDS": MAX_QUERY_INT,  # a 32-bit integer column
    "TASK_DEFAULT_TIMEOUT_SECONDS": "TASK_MAX_TIMEOUT_SECONDS",
    "TASK_MAX_ATTEMPTS_LIMIT": 2**15 - 1,  # a 16-bit integer column
    "TASK_DEFAULT_MAX_ATTEMPTS": "TASK_MAX_ATTEMPTS_LIMIT",
    "DEFAULT_DISPATCHER_CAPACITY": MAX_CAPACITY,  # the most a dispatcher may declare
    "PAGE_SIZE": "MAX_PAGE_SIZE",  # ?page_size= is capped there; the default must be too
}
WAKEUP_MODES = ("auto", "postgres", "redis", "poll")


@register(Tags.compatibility)
def check_settings_against_each_other(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Settings that bound each other, or that a database column bounds, agree.

    Only values that pass E007 are compared, so one mistake is reported once.
    """
    errors = []

    def error(key: str, requirement: str) -> None:
        errors.append(
            Error(
                f"{SETTINGS_NAME}[{key!r}] is {_setting(key)!r}; it must be {requirement}.",
                hint="See the settings docs.",
                obj=SETTINGS_NAME,
                id="kohakku_controller.E008",
            )
        )

    for key, bound in UPPER_BOUNDS.items():
        if isinstance(bound, str):
            if not _is_valid_number(bound):
                continue
            limit, name = _setting(bound), f"{bound} ({_setting(bound)!r})"
        else:
            limit, name = bound, f"{bound}"
        if _is_valid_number(key) and _setting(key) > limit:
            error(key, f"at most {name}")
    push_keys = ("PUSH_CONNECT_TIMEOUT", "PUSH_READ_TIMEOUT")
    if all(_is_valid_number(key) for key in ("SCHEDULER_LEASE_SECONDS", *push_keys)):
        push = sum(_setting(key) for key in push_keys)
        if _setting("SCHEDULER_LEASE_SECONDS") <= push:
            # A push still in flight when its lease ends is sent again by another pass.
            error("SCHEDULER_LEASE_SECONDS", f"more than one push may take ({push:g} s)")
    if _setting("SCHEDULER_WAKEUP") not in WAKEUP_MODES:
        errors.append(
            Error(
                f"{SETTINGS_NAME}['SCHEDULER_WAKEUP'] is {_setting('SCHEDULER_WAKEUP')!r}; it "
                f"must be one of {', '.join(map(repr, WAKEUP_MODES))}.",
                hint="Anything else makes the scheduler poll.",
                obj=SETTINGS_NAME,
                id="kohakku_controller.E009",
            )
        )
    return errors


def _is_valid_number(key: Any) -> bool:
    """Whether ``key`` names a numeric setting whose value E007 accepts."""
    return (
        isinstance(key, str) and _number_requirement(key) is not None and _meets(key, _setting(key))
    )


def _setting(key: str) -> Any:
    user = _user_settings()
    return user.get(key, DEFAULTS[key]) if isinstance(user, dict) else DEFAULTS[key]


@register(Tags.compatibility)
def check_aliases(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The storage and cache aliases exist (their type is E012's), and the storage's
    backend imports."""
    errors = []
    storage_alias = _setting("STORAGE_ALIAS")
    storages = getattr(settings, "STORAGES", {})
    if isinstance(storage_alias, str) and storage_alias not in storages:
        errors.append(
            Error(
                f"Storage alias {storage_alias!r} is not in settings.STORAGES.",
                hint=(
                    f'Add STORAGES[{storage_alias!r}] (for example {{"BACKEND": '
                    '"django.core.files.storage.FileSystemStorage"}) or set '
                    f"{SETTINGS_NAME}['STORAGE_ALIAS'] to an alias you have."
                ),
                id="kohakku_controller.E003",
            )
        )
    elif isinstance(storage_alias, str):
        storage = storages[storage_alias]
        backend = storage.get("BACKEND") if isinstance(storage, dict) else None
        try:
            if not isinstance(backend, str):
                raise ImportError("STORAGES entries are dicts with a 'BACKEND' dotted path")
            import_string(backend)
        except (ImportError, TypeError, ValueError) as exc:  # ".Storage" is a ValueError
            errors.append(
                Error(
                    f"STORAGES[{storage_alias!r}]['BACKEND'] ({backend!r}) does not import: {exc}",
                    hint="Give the dotted path of a storage class, for example "
                    "'kohakku_controller.s3.S3Storage'.",
                    id="kohakku_controller.E003",
                )
            )
    cache_alias = _setting("CACHE_ALIAS")
    if isinstance(cache_alias, str) and cache_alias not in settings.CACHES:
        errors.append(
            Error(
                f"Cache alias {cache_alias!r} is not in settings.CACHES.",
                hint=f"Add CACHES[{cache_alias!r}] or set {SETTINGS_NAME}['CACHE_ALIAS'].",
                id="kohakku_controller.E004",
            )
        )
    return errors


@register(Tags.compatibility)
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    missing = [app for app in REQUIRED_APPS if app not in settings.INSTALLED_APPS]
    if not missing:
        return []
    return [
        Error(
            f"The controller needs these apps in INSTALLED_APPS: {', '.join(missing)}.",
            hint="Add them before 'kohakku_controller'; see 'Install into a host project'.",
            id="kohakku_controller.E005",
        )
    ]


@register(Tags.compatibility)
def check_database_routing(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The controller's tables must be in the default database: its transactions, locks,
    wake-ups and raw statements run there, whatever a router says."""
    from django.apps import apps
    from django.db import DEFAULT_DB_ALIAS, router

    routed = set()
    for model in apps.get_app_config("kohakku_controller").get_models():
        for alias in (router.db_for_read(model), router.db_for_write(model)):
            if alias not in (None, DEFAULT_DB_ALIAS):
                routed.add(f"{model._meta.label} to {alias!r}")
    if not routed:
        return []
    return [
        Error(
            f"DATABASE_ROUTERS send the controller's models to another database than "
            f"{DEFAULT_DB_ALIAS!r}: {', '.join(sorted(routed))}.",
            hint="Keep the controller's tables (and django-oauth-toolkit's) in the default "
            "database; route other apps as you like.",
            id="kohakku_controller.E013",
        )
    ]


@register(Tags.compatibility)
def check_schema_class(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The OpenAPI document needs drf-spectacular's schema class as DRF's default: the
    ``@extend_schema`` decorators on the controller's actions build on it."""
    from drf_spectacular.openapi import AutoSchema
    from rest_framework.settings import api_settings

    default = api_settings.DEFAULT_SCHEMA_CLASS
    if isinstance(default, type) and issubclass(default, AutoSchema):
        return []
    return [
        Error(
            "REST_FRAMEWORK['DEFAULT_SCHEMA_CLASS'] is not a drf-spectacular schema class: "
            "the controller's OpenAPI document (/api/v1/schema/) cannot be generated.",
            hint="Set REST_FRAMEWORK = {'DEFAULT_SCHEMA_CLASS': "
            "'kohakku_controller.schema.ControllerAutoSchema'} (or "
            "'drf_spectacular.openapi.AutoSchema').",
            id="kohakku_controller.E010",
        )
    ]


@register(Tags.security)
def check_oauth2_scopes(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    declared = (getattr(settings, "OAUTH2_PROVIDER", {}) or {}).get("SCOPES", {})
    missing = [scope for scope in SCOPES if scope not in declared]
    if not missing:
        return []
    return [
        Warning(
            f"OAUTH2_PROVIDER['SCOPES'] lacks the controller's scopes: {', '.join(missing)}.",
            hint=(
                "OAuth2 clients cannot be granted these scopes. Merge "
                "kohakku_controller.auth.SCOPES into OAUTH2_PROVIDER['SCOPES']."
            ),
            id="kohakku_controller.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_filesystem_storage(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    alias = _setting("STORAGE_ALIAS")
    storage = getattr(settings, "STORAGES", {}).get(alias) if isinstance(alias, str) else None
    backend = (storage or {}).get("BACKEND")
    if backend != "django.core.files.storage.FileSystemStorage":
        return []
    return [
        Warning(
            "Skill packages and results are kept on the local filesystem.",
            hint=(
                "With more than one web replica each sees different files. Use S3 or MinIO: "
                "BACKEND 'kohakku_controller.s3.S3Storage'."
            ),
            id="kohakku_controller.W002",
        )
    ]


@register(Tags.security, deploy=True)
def check_webhook_secrets(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    secrets = _webhook_secrets()
    warnings = []
    if _setting("ALLOW_UNSIGNED_WEBHOOKS"):
        warnings.append(
            Warning(
                "ALLOW_UNSIGNED_WEBHOOKS is on: anyone can create tasks through webhooks.",
                hint=f"Set {SETTINGS_NAME}['ALLOW_UNSIGNED_WEBHOOKS'] = False in production.",
                id="kohakku_controller.W003",
            )
        )
    unconfigured = [
        source for source in WEBHOOK_SOURCES if not _configured_secrets(secrets.get(source))
    ]
    if unconfigured:
        warnings.append(
            Warning(
                f"No webhook secret for: {', '.join(unconfigured)}.",
                hint=(
                    "Deliveries from these sources are refused. Set "
                    f"{SETTINGS_NAME}['WEBHOOK_SECRETS'][source] = [secret, ...]."
                ),
                id="kohakku_controller.W004",
            )
        )
    return warnings


@register(Tags.security)
def check_custom_webhook_secrets(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Standard Webhooks secrets must be ``whsec_<base64>``; anything else never verifies."""
    import base64
    import binascii

    secrets = _configured_secrets(_webhook_secrets().get("custom"))
    errors = []
    for index, secret in enumerate(secrets):
        text = secret.decode("ascii", "replace") if isinstance(secret, bytes) else str(secret)
        try:
            valid = bool(base64.b64decode(text.strip().removeprefix("whsec_"), validate=True))
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            errors.append(
                Error(
                    f"{SETTINGS_NAME}['WEBHOOK_SECRETS']['custom'][{index}] is not a "
                    "Standard Webhooks secret: deliveries signed with it would be refused.",
                    hint="Use 'whsec_' followed by base64, e.g. 'whsec_' + "
                    "base64.b64encode(secrets.token_bytes(32)).decode().",
                    id="kohakku_controller.E006",
                )
            )
    return errors


def _configured_secrets(value: Any) -> list[Any]:
    """One source's secrets as ingest reads them (a list, empty ones left out)."""
    from .webhooks.services import configured_secrets

    secrets = configured_secrets(value)
    return list(secrets) if isinstance(secrets, list | tuple) else []


def _webhook_secrets() -> dict[str, Any]:
    """``WEBHOOK_SECRETS`` if it is a dict (E012 reports anything else), else ``{}``."""
    secrets = _setting("WEBHOOK_SECRETS")
    return secrets if isinstance(secrets, dict) else {}


@register(Tags.security, deploy=True)
def check_public_base_url(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from urllib.parse import urlsplit

    host = urlsplit(str(_setting("PUBLIC_BASE_URL") or "")).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1", ""):
        return []
    return [
        Warning(
            f"PUBLIC_BASE_URL points at {host or 'nothing'}: dispatchers on other hosts cannot "
            "send callbacks, upload results or download packages.",
            hint=f"Set {SETTINGS_NAME}['PUBLIC_BASE_URL'] to the controller's external URL.",
            id="kohakku_controller.W005",
        )
    ]


@register(Tags.security)
def check_scopes_backend(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Without the controller's scopes backend, django-oauth-toolkit lets every OAuth2 client
    take every scope: a dispatcher's credentials could create tasks or manage skills."""
    from oauth2_provider.contrib.rest_framework import OAuth2Authentication
    from oauth2_provider.scopes import SettingsScopes
    from oauth2_provider.settings import oauth2_settings

    try:
        authenticators = perform_import(_setting("AUTHENTICATION_CLASSES"), "")
        backend = oauth2_settings.SCOPES_BACKEND_CLASS
    except (ImportError, TypeError):
        return []  # E002 (or django-oauth-toolkit) reports the import
    uses_oauth2 = any(
        isinstance(authenticator, type) and issubclass(authenticator, OAuth2Authentication)
        for authenticator in _as_list(authenticators)
    )
    # django-oauth-toolkit's own default; a host's own backend is the host's decision.
    if not uses_oauth2 or backend is not SettingsScopes:
        return []
    return [
        Error(
            "OAUTH2_PROVIDER['SCOPES_BACKEND_CLASS'] is django-oauth-toolkit's default: every "
            "OAuth2 client may take every scope, whatever it was granted.",
            hint="Set OAUTH2_PROVIDER['SCOPES_BACKEND_CLASS'] = "
            "'kohakku_controller.oauth.ClientScopesBackend'.",
            id="kohakku_controller.E011",
        )
    ]


@register(Tags.compatibility)
def check_setting_kinds(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The settings that are neither numbers (E007) nor import strings (E002) hold what the
    controller reads them as; a wrong kind would fail later, in a request or a push."""
    user = _user_settings()
    if not isinstance(user, dict):
        return []
    errors = []
    for key in sorted(user):
        problem = _kind_problem(key, user[key])
        if problem:
            errors.append(
                Error(
                    f"{SETTINGS_NAME}[{key!r}] is {user[key]!r}; {problem}.",
                    hint=f"The default is {DEFAULTS[key]!r}; see the settings docs.",
                    obj=SETTINGS_NAME,
                    id="kohakku_controller.E012",
                )
            )
    return errors


def _kind_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the setting ``key``, or None (also for keys checked elsewhere)."""
    if isinstance(DEFAULTS.get(key), bool):
        return None if isinstance(value, bool) else "it must be True or False"
    checker = _KIND_CHECKERS.get(key)
    return checker(value) if checker else None


def _non_empty_text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "it must be a non-empty string"


def _categories(value: Any) -> str | None:
    from .skills.models import Skill

    longest = Skill._meta.get_field("category").max_length  # what a skill's column holds
    names = value if isinstance(value, list | tuple) else []
    if names and all(isinstance(item, str) and 0 < len(item) <= longest for item in names):
        return None
    return f"it must be a non-empty list of names of 1 to {longest} characters"


def _http_url(value: Any) -> str | None:
    from urllib.parse import urlsplit

    reason = "it must be an http(s) URL with a host, without credentials, query or fragment"
    if not isinstance(value, str):
        return reason
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return reason
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        return reason
    if parts.username is not None or parts.query or parts.fragment:
        return reason
    return None


def _optional_http_url(value: Any) -> str | None:
    return None if value is None else _http_url(value)


def _webhook_secrets_problem(value: Any) -> str | None:
    from .webhooks.services import configured_secrets

    if value is None:
        return None
    if not isinstance(value, dict):
        return f"it must be a dict of {', '.join(WEBHOOK_SOURCES)} to lists of secrets"
    unknown = [str(source) for source in value if source not in WEBHOOK_SOURCES]
    if unknown:
        known = ", ".join(WEBHOOK_SOURCES)
        return f"{', '.join(map(repr, unknown))} is not a webhook source (known: {known})"
    for source, secrets in value.items():
        # As ingest reads them: empty entries (an unset variable) are skipped.
        items = configured_secrets(secrets)
        if not isinstance(items, list | tuple) or not all(
            isinstance(secret, str | bytes) for secret in items
        ):
            return f"the secrets of {source!r} must be a list of strings"
    return None


_KIND_CHECKERS = {
    "STORAGE_ALIAS": _non_empty_text,
    "CACHE_ALIAS": _non_empty_text,
    # None or "" (an unset variable): the key is derived from SECRET_KEY.
    "SECRET_ENCRYPTION_KEY": lambda value: None if value in (None, "") else _non_empty_text(value),
    "SKILL_CATEGORIES": _categories,
    "PUBLIC_BASE_URL": _http_url,
    "STORAGE_PUBLIC_ENDPOINT_URL": _optional_http_url,
    "WEBHOOK_SECRETS": _webhook_secrets_problem,
}
