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
