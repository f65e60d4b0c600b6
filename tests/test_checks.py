"""System checks catch configuration mistakes with an id and a hint."""

import pytest
from django.core import checks
from django.test import override_settings


def _ids(**kwargs):
    return {message.id: message for message in checks.run_checks(**kwargs)}


def test_clean_configuration_has_no_controller_errors():
    assert not [i for i in _ids() if i.startswith("kohakku_controller.E")]


def test_unknown_key_suggests_the_right_one():
    with override_settings(KOHAKKU_CONTROLLER={"PAGE_SIZ": 10}):
        found = _ids()["kohakku_controller.E001"]
    assert "'PAGE_SIZ'" in found.msg
    assert found.hint == "Did you mean 'PAGE_SIZE'?"


def test_settings_must_be_a_dict():
    with override_settings(KOHAKKU_CONTROLLER=["oops"]):
        assert "kohakku_controller.E001" in _ids()


def test_import_string_that_does_not_import():
    with override_settings(KOHAKKU_CONTROLLER={"PAGINATION_CLASS": "nowhere.Pager"}):
        found = _ids()["kohakku_controller.E002"]
    assert "nowhere.Pager" in found.msg


@pytest.mark.parametrize("key", ["THROTTLE_CLASSES", "AUTHENTICATION_CLASSES"])
@pytest.mark.parametrize("value", ["rest_framework.throttling.UserRateThrottle", None])
def test_a_class_list_setting_that_is_not_a_list(key, value):
    with override_settings(KOHAKKU_CONTROLLER={key: value}):
        found = _ids()["kohakku_controller.E002"]
    assert found.msg.startswith(f"KOHAKKU_CONTROLLER[{key!r}] must be a list of dotted paths")


def test_missing_storage_and_cache_alias():
    with override_settings(KOHAKKU_CONTROLLER={"STORAGE_ALIAS": "blobs", "CACHE_ALIAS": "fast"}):
        found = _ids()
    assert "'blobs'" in found["kohakku_controller.E003"].msg
    assert "'fast'" in found["kohakku_controller.E004"].msg


def test_missing_required_app(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_filters"]
    assert "django_filters" in _ids()["kohakku_controller.E005"].msg


def test_oauth2_scopes_not_declared():
    with override_settings(OAUTH2_PROVIDER={"SCOPES": {"read": "Read"}}):
        assert "tasks:read" in _ids()["kohakku_controller.W001"].msg


def test_deploy_checks_warn_about_filesystem_storage_and_missing_secrets(settings):
    filesystem = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    with override_settings(
        STORAGES={**settings.STORAGES, "kohakku": filesystem},
        KOHAKKU_CONTROLLER={"WEBHOOK_SECRETS": {"github": ["s"]}, "ALLOW_UNSIGNED_WEBHOOKS": True},
    ):
        found = _ids(include_deployment_checks=True)
    assert "kohakku_controller.W002" in found
    assert "kohakku_controller.W003" in found
    assert "slack, custom" in found["kohakku_controller.W004"].msg


def test_deploy_checks_do_not_run_without_deploy_flag():
    assert "kohakku_controller.W002" not in _ids()


def test_deploy_check_warns_about_loopback_public_url():
    with override_settings(KOHAKKU_CONTROLLER={"PUBLIC_BASE_URL": "http://127.0.0.1:8000"}):
        assert "kohakku_controller.W005" in _ids(include_deployment_checks=True)
    with override_settings(KOHAKKU_CONTROLLER={"PUBLIC_BASE_URL": "https://ctl.example.com"}):
        assert "kohakku_controller.W005" not in _ids(include_deployment_checks=True)


def test_numeric_settings_must_be_finite_and_in_range():
    bad = {
        "SCHEDULER_POLL_SECONDS": 0,  # would spin the scheduler
        "PAGE_SIZE": -1,
        "MAX_JSON_DEPTH": 2.5,
        "MISSED_HEARTBEATS": True,
        "HEALTH_CHECK_TIMEOUT": float("nan"),
        "SCHEDULER_BATCH_SIZE": "100",
    }
    with override_settings(KOHAKKU_CONTROLLER=bad):
        found = [m for m in checks.run_checks() if m.id == "kohakku_controller.E007"]
    assert sorted(m.msg.split("'")[1] for m in found) == sorted(bad)


def test_numeric_settings_that_may_be_zero_or_a_whole_float():
    good = {"CANCEL_GRACE_SECONDS": 0, "SCHEDULER_POLL_SECONDS": 1, "PAGE_SIZE": 10}
    with override_settings(KOHAKKU_CONTROLLER=good):
        assert "kohakku_controller.E007" not in _ids()


def _messages(check_id, controller_settings):
    with override_settings(KOHAKKU_CONTROLLER=controller_settings):
        return [m.msg for m in checks.run_checks() if m.id == check_id]


def test_settings_that_bound_each_other_or_a_column_must_agree():
    found = _messages(
        "kohakku_controller.E008",
        {
            "TASK_DEFAULT_TIMEOUT_SECONDS": 7200,
            "TASK_MAX_TIMEOUT_SECONDS": 3600,  # every task relying on the default is refused
            "TASK_MAX_ATTEMPTS_LIMIT": 40_000,  # beyond the attempts column
            "DEFAULT_DISPATCHER_CAPACITY": 20_000,
            "SCHEDULER_LEASE_SECONDS": 10,  # a push may take 3 + 10 s
        },
    )
    assert sorted(message.split("'")[1] for message in found) == [
        "DEFAULT_DISPATCHER_CAPACITY",
        "SCHEDULER_LEASE_SECONDS",
        "TASK_DEFAULT_TIMEOUT_SECONDS",
        "TASK_MAX_ATTEMPTS_LIMIT",
    ]
    assert any("at most TASK_MAX_TIMEOUT_SECONDS (3600)" in message for message in found)
    assert any("more than one push may take (13 s)" in message for message in found)


def test_bounds_are_compared_only_between_valid_numbers():
    # The bad limit is E007's to report; E008 does not report it again, or compare with it.
    settings = {"TASK_MAX_TIMEOUT_SECONDS": -1, "TASK_DEFAULT_TIMEOUT_SECONDS": 60}
    assert _messages("kohakku_controller.E008", settings) == []
    assert len(_messages("kohakku_controller.E007", settings)) == 1
    assert _messages("kohakku_controller.E008", {"TASK_DEFAULT_TIMEOUT_SECONDS": 604800}) == []


def test_unknown_wakeup_channel_is_an_error():
    [message] = _messages("kohakku_controller.E009", {"SCHEDULER_WAKEUP": "redsi"})
    assert "'redsi'" in message and "'redis'" in message
    assert _messages("kohakku_controller.E009", {"SCHEDULER_WAKEUP": "poll"}) == []


def test_a_schema_class_that_cannot_build_the_document_is_an_error(settings):
    settings.REST_FRAMEWORK = {}  # DRF's own default: rest_framework.schemas.openapi.AutoSchema
    errors = [e for e in checks.run_checks() if e.id == "kohakku_controller.E010"]
    assert len(errors) == 1
    assert "ControllerAutoSchema" in errors[0].hint
    settings.REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
    assert not [e for e in checks.run_checks() if e.id == "kohakku_controller.E010"]


def test_without_oauth2_provider_start_up_names_the_missing_app():
    import subprocess
    import sys

    script = (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['django.contrib.contenttypes', "
        "'django.contrib.auth', 'rest_framework', 'kohakku_controller'])\n"
        "django.setup()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: kohakku_controller needs "
        "'oauth2_provider' in INSTALLED_APPS (see 'Install into a host project')."
    )


@pytest.mark.parametrize(
    "controller_settings, expected",
    [
        ({"THROTTLE_CLASSES": ["nowhere.Throttle"]}, "does not import"),
        ("not a dict", "must be a dict"),
    ],
)
def test_a_setting_that_breaks_the_urls_is_reported_by_check_not_a_traceback(
    controller_settings, expected
):
    # In a new process: the URL patterns load (and read the settings) during the checks.
    import os
    import subprocess
    import sys

    script = (
        "import django\n"
        "from django.conf import settings\n"
        "django.setup()\n"
        f"settings.KOHAKKU_CONTROLLER = {controller_settings!r}\n"
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'check'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    "key, value, kind",
    [
        ("PAGINATION_CLASS", "os.path", "pagination"),
        ("THROTTLE_CLASSES", ["os.getcwd"], "throttle"),
        (
            "AUTHENTICATION_CLASSES",
            ["rest_framework.throttling.UserRateThrottle"],
            "authentication",
        ),
    ],
)
def test_an_import_string_of_the_wrong_kind_is_an_error(key, value, kind):
    [message] = _messages("kohakku_controller.E002", {key: value})
    assert f"not a DRF {kind} class" in message


def test_times_and_counts_have_upper_bounds():
    too_large = {
        "CANCEL_GRACE_SECONDS": 10**12,  # overflowed every scheduler pass
        "MISSED_HEARTBEATS": 10**15,  # the dispatcher list answered 500
        "HEALTH_CHECK_TIMEOUT": 1e12,  # /ready/ answered 500
        "SCHEDULER_POLL_SECONDS": 1e-6,  # a busy loop
        "TASK_RETENTION_DAYS": 10**9,
    }
    found = _messages("kohakku_controller.E007", too_large)
    assert sorted(message.split("'")[1] for message in found) == sorted(too_large)
    assert any("at least 0.1 and at most 86400" in message for message in found)
    fine = {"SKILL_BLOB_GRACE_SECONDS": 3153600000, "MISSED_HEARTBEATS": 1000}
    assert _messages("kohakku_controller.E007", fine) == []


def test_the_default_page_size_must_fit_under_the_largest():
    [message] = _messages("kohakku_controller.E008", {"PAGE_SIZE": 100, "MAX_PAGE_SIZE": 2})
    assert "at most MAX_PAGE_SIZE (2)" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("STORAGE_ALIAS", ["kohakku"]),
        ("CACHE_ALIAS", ["default"]),  # crashed the check itself
        ("SECRET_ENCRYPTION_KEY", 123),
        ("SKILL_CATEGORIES", "tool"),  # read as the categories t, o, o, l
        ("SKILL_CATEGORIES", []),
        ("SKILL_CATEGORIES", None),
        ("PUBLIC_BASE_URL", None),
        ("PUBLIC_BASE_URL", "controller.example.com"),
        ("PUBLIC_BASE_URL", "ftp://controller.example.com"),
        ("PUBLIC_BASE_URL", "https://user:pw@controller.example.com"),
        ("STORAGE_PUBLIC_ENDPOINT_URL", "s3.example.com"),
        ("ALLOW_UNSIGNED_WEBHOOKS", "False"),  # a non-empty string is true
        ("RECONCILE_REPORTED_TASKS", 0),
        ("WEBHOOK_SECRETS", ["abc"]),  # crashed the check itself
        ("WEBHOOK_SECRETS", {"gihub": ["abc"]}),
        ("WEBHOOK_SECRETS", {"github": [123]}),  # answered 500 on every GitHub delivery
        ("WEBHOOK_SECRETS", {"github": 123}),
    ],
)
def test_a_setting_of_the_wrong_kind_is_an_error(key, value):
    with override_settings(KOHAKKU_CONTROLLER={key: value}):
        found = [m for m in checks.run_checks(include_deployment_checks=True)]
    [message] = [m.msg for m in found if m.id == "kohakku_controller.E012"]
    assert message.startswith(f"KOHAKKU_CONTROLLER[{key!r}] is {value!r}; ")


@pytest.mark.parametrize(
    "key, value",
    [
        ("SECRET_ENCRYPTION_KEY", None),
        ("SECRET_ENCRYPTION_KEY", ""),  # an unset variable: derived from SECRET_KEY
        ("PUBLIC_BASE_URL", "https://example.com/controller/"),  # behind a proxy's prefix
        ("PUBLIC_BASE_URL", "http://[2001:db8::1]:8000"),
        ("PUBLIC_BASE_URL", "https://controller.example.com:8443"),
        ("STORAGE_PUBLIC_ENDPOINT_URL", None),
        ("WEBHOOK_SECRETS", {"github": "one-secret", "slack": []}),
        # Unset environment variables: ingest skips empty secrets.
        ("WEBHOOK_SECRETS", {"github": None, "slack": "", "custom": ["", b"whsec_AAAA"]}),
        ("WEBHOOK_SECRETS", None),
        ("SKILL_CATEGORIES", ("tool",)),
    ],
)
def test_settings_of_the_right_kind_pass(key, value):
    assert _messages("kohakku_controller.E012", {key: value}) == []


@pytest.mark.parametrize(
    "entry",
    [
        {"BACKEND": "nope.Storage"},
        {"BACKEND": ".Storage"},
        {"BACKEND": "..pkg.Storage"},
        {},
        {"OPTIONS": {}},
        "django.core.files.storage",
    ],
)
def test_a_storage_backend_that_does_not_import_is_an_error(settings, entry):
    settings.STORAGES = {**settings.STORAGES, "kohakku": entry}
    assert "does not import" in _ids()["kohakku_controller.E003"].msg


def test_empty_webhook_secrets_count_as_none_in_every_check():
    unset = {"WEBHOOK_SECRETS": {"github": [""], "slack": "", "custom": [""]}}
    with override_settings(KOHAKKU_CONTROLLER=unset):
        found = checks.run_checks(include_deployment_checks=True)
    ids = {m.id: m for m in found}
    assert "kohakku_controller.E006" not in ids and "kohakku_controller.E012" not in ids
    assert "github, slack, custom" in ids["kohakku_controller.W004"].msg


def test_pagination_may_be_turned_off():
    assert _messages("kohakku_controller.E002", {"PAGINATION_CLASS": None}) == []


def test_without_the_client_scopes_backend_every_client_gets_every_scope(settings):
    settings.OAUTH2_PROVIDER = {
        **settings.OAUTH2_PROVIDER,
        "SCOPES_BACKEND_CLASS": "oauth2_provider.scopes.SettingsScopes",
    }
    assert "ClientScopesBackend" in _ids()["kohakku_controller.E011"].hint
    # Without OAuth2 authentication the scopes backend is never asked.
    token_only = {"AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"]}
    with override_settings(KOHAKKU_CONTROLLER=token_only):
        assert "kohakku_controller.E011" not in _ids()
    # A host's own backend is the host's decision.
    settings.OAUTH2_PROVIDER = {
        **settings.OAUTH2_PROVIDER,
        "SCOPES_BACKEND_CLASS": "tests.test_checks.HostScopes",
    }
    assert "kohakku_controller.E011" not in _ids()


class HostScopes:
    """A host's own scopes backend (not a subclass of the controller's)."""

    def get_all_scopes(self):
        return {}

    def get_available_scopes(self, application=None, request=None, *args, **kwargs):
        return []

    def get_default_scopes(self, application=None, request=None, *args, **kwargs):
        return []


class ToAnotherDatabase:
    """A host's router that sends every model to another database."""

    def db_for_read(self, model, **hints):
        return "controller"

    db_for_write = db_for_read


def test_routing_the_controllers_models_to_another_database_is_refused(settings):
    settings.DATABASE_ROUTERS = ["tests.test_checks.ToAnotherDatabase"]
    error = _ids()["kohakku_controller.E013"]
    assert "kohakku_controller.Task to 'controller'" in error.msg
    settings.DATABASE_ROUTERS = []
    assert "kohakku_controller.E013" not in _ids()
