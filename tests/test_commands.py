import io
import json

import pytest
from django.core.management import CommandError, call_command
from oauth2_provider.models import get_application_model

from kohakku_controller.oauth import ClientScopes

pytestmark = pytest.mark.django_db


def test_create_client_prints_credentials_once_and_grants_scopes(capsys):
    call_command("kohakku_create_client", "eu-dispatcher", "--scopes", "dispatchers")
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.split())
    application = get_application_model().objects.get(client_id=out["client_id"])
    assert application.name == "eu-dispatcher"
    assert application.authorization_grant_type == "client-credentials"
    # Stored hashed: the printed secret is not what the database holds.
    assert application.client_secret != out["client_secret"]
    assert ClientScopes.objects.get(application=application).scopes == ["dispatchers"]


def test_create_client_refuses_unknown_scopes():
    with pytest.raises(CommandError, match="unknown scopes: admin"):
        call_command("kohakku_create_client", "x", "--scopes", "admin,tasks:read")
    assert not get_application_model().objects.exists()


def test_seed_demo_is_idempotent(settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo")
    first = json.loads((tmp_path / "demo-credentials.json").read_text())
    call_command("seed_demo")
    second = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert first["operator"]["token"] == second["operator"]["token"]
    assert get_application_model().objects.count() == 2
    # A new secret each run; the file always holds the working one.
    assert second["dispatcher_client"]["client_secret"] in capsys.readouterr().out


def test_seed_demo_uploads_the_hello_skill_once_and_routes_the_demo_event(
    settings, tmp_path, capsys
):
    from kohakku_controller.skills.models import SkillVersion
    from kohakku_controller.workflows.events import build_event_document
    from kohakku_controller.workflows.models import Workflow
    from kohakku_controller.workflows.services import match_workflow

    settings.VAR_DIR = tmp_path
    call_command("seed_demo")
    assert "hello v1 (uploaded)" in capsys.readouterr().out
    Workflow.objects.filter(slug="demo-hello").update(enabled=False, event="other")
    call_command("seed_demo")
    assert "hello v1 (already uploaded)" in capsys.readouterr().out

    assert SkillVersion.objects.filter(skill__slug="hello").count() == 1
    workflow = Workflow.objects.get()
    # Rerunning restores the demo workflow.
    assert (workflow.slug, workflow.source, workflow.event, workflow.enabled) == (
        "demo-hello",
        "custom",
        "demo.hello",
        True,
    )
    payload = {"type": "demo.hello", "name": "Ada"}
    document = build_event_document("custom", "demo.hello", {}, payload)
    match = match_workflow("custom", "demo.hello", document)
    assert match.workflow == workflow
    assert match.input == {"name": "Ada"}


def test_create_client_refuses_an_empty_scope_list():
    for scopes in ("", " , "):
        with pytest.raises(CommandError, match="--scopes must name at least one scope"):
            call_command("kohakku_create_client", "x", "--scopes", scopes)
    assert not get_application_model().objects.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("evil\nname", "must not contain control characters"),
        ("bell\x07", "must not contain control characters"),
        ("x" * 256, "must be at most 255 characters"),
    ],
)
def test_create_client_refuses_bad_names(name, message):
    with pytest.raises(CommandError, match=f"application name {message}"):
        call_command("kohakku_create_client", name, "--scopes", "tasks:read")
    assert not get_application_model().objects.exists()


@pytest.mark.parametrize("client_id", ["", "two words", "tab\tid", "x" * 256])
def test_create_client_refuses_bad_client_ids(client_id):
    with pytest.raises(CommandError, match="--client-id"):
        call_command(
            "kohakku_create_client", "x", "--scopes", "tasks:read", "--client-id", client_id
        )
    assert not get_application_model().objects.exists()


def _credentials(capsys):
    return dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())


def test_create_client_rerun_resets_secret_and_scopes(capsys):
    call_command("kohakku_create_client", "ci", "--scopes", "tasks:read")
    first = _credentials(capsys)
    call_command("kohakku_create_client", "ci", "--scopes", "tasks:read tasks:write")
    second = _credentials(capsys)
    assert second["client_id"] == first["client_id"]
    assert second["client_secret"] != first["client_secret"]
    application = get_application_model().objects.get()
    assert ClientScopes.objects.get(application=application).scopes == [
        "tasks:read",
        "tasks:write",
    ]
    # The same --client-id with the same name resets too.
    call_command(
        "kohakku_create_client", "ci", "--scopes", "tasks:read", "--client-id", first["client_id"]
    )
    assert _credentials(capsys)["client_id"] == first["client_id"]
    assert get_application_model().objects.count() == 1


def test_create_client_refuses_to_rename_another_application_without_rename(capsys):
    call_command(
        "kohakku_create_client",
        "Demo dispatcher",
        "--scopes",
        "dispatchers",
        "--client-id",
        "demo-dispatcher",
    )
    application = get_application_model().objects.get()
    secret = application.client_secret
    with pytest.raises(
        CommandError, match=r"belongs to the application 'Demo dispatcher'.*--rename"
    ):
        call_command(
            "kohakku_create_client",
            "probe4",
            "--scopes",
            "tasks:read",
            "--client-id",
            "demo-dispatcher",
        )
    application.refresh_from_db()
    assert (application.name, application.client_secret) == ("Demo dispatcher", secret)
    assert ClientScopes.objects.get(application=application).scopes == ["dispatchers"]

    capsys.readouterr()
    call_command(
        "kohakku_create_client",
        "probe4",
        "--scopes",
        "tasks:read",
        "--client-id",
        "demo-dispatcher",
        "--rename",
    )
    application.refresh_from_db()
    assert application.name == "probe4"
    assert application.client_secret != secret
    assert ClientScopes.objects.get(application=application).scopes == ["tasks:read"]


def test_create_client_refuses_ambiguous_names_and_other_grant_types():
    model = get_application_model()
    model.objects.create(
        name="web",
        client_type=model.CLIENT_PUBLIC,
        authorization_grant_type=model.GRANT_AUTHORIZATION_CODE,
        redirect_uris="https://example.com/cb",
    )
    with pytest.raises(CommandError, match="not a confidential client-credentials application"):
        call_command("kohakku_create_client", "web", "--scopes", "tasks:read")
    assert model.objects.get().authorization_grant_type == model.GRANT_AUTHORIZATION_CODE

    # The command never makes two applications with one name; the admin can.
    for client_id in ("a", "b"):
        model.objects.create(
            name="twin",
            client_id=client_id,
            client_type=model.CLIENT_CONFIDENTIAL,
            authorization_grant_type=model.GRANT_CLIENT_CREDENTIALS,
        )
    for extra in ([], ["--client-id", "c"], ["--client-id", "c", "--change-client-id"]):
        with pytest.raises(CommandError, match="More than one application is named 'twin'"):
            call_command("kohakku_create_client", "twin", "--scopes", "tasks:read", *extra)
    # Naming one of them chooses it.
    call_command(
        "kohakku_create_client",
        "twin",
        "--scopes",
        "tasks:read",
        "--client-id",
        "b",
        stdout=io.StringIO(),
    )
    assert model.objects.count() == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "nan"], "--days: must be a finite number"),
        (["--days", "inf"], "--days: must be a finite number"),
        (["--days", "1e10"], "--days: must be between 0 and 36500"),
        (["--days", "800000"], "--days: must be between 0 and 36500"),
        (["--days", "-1"], "--days: must be between 0 and 36500"),
        (["--days", "week"], "--days: expected a number"),
    ],
)
def test_prune_deliveries_refuses_bad_days(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("kohakku_prune_deliveries", *args, stdout=io.StringIO())


def test_prune_deliveries_checks_the_retention_setting(settings):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "WEBHOOK_DELIVERY_RETENTION_DAYS": 10**9,
    }
    with pytest.raises(CommandError, match="WEBHOOK_DELIVERY_RETENTION_DAYS must be between"):
        call_command("kohakku_prune_deliveries", stdout=io.StringIO())


def test_prune_deliveries_accepts_the_bounds():
    for days in ("0", "36500", "0.5"):
        out = io.StringIO()
        call_command("kohakku_prune_deliveries", "--days", days, "--dry-run", stdout=out)
        assert "Would delete 0 deliveries" in out.getvalue()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("100000000000", "--grace-seconds: must be between 0 and 3153600000"),
        ("-1", "--grace-seconds: must be between 0"),
        ("1.5", "--grace-seconds: expected an integer"),
    ],
)
def test_prune_blobs_refuses_bad_grace(value, message):
    with pytest.raises(CommandError, match=message):
        call_command("kohakku_prune_blobs", "--grace-seconds", value, stdout=io.StringIO())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "-1"], "--batch-size: must be between 1 and 10000"),
        (["--batch-size", "0"], "--batch-size: must be between 1 and 10000"),
        (["--batch-size", "many"], "--batch-size: expected an integer"),
        (["--concurrency", "-5"], "--concurrency: must be between 1 and 1000"),
        (["--concurrency", "0"], "--concurrency: must be between 1 and 1000"),
        (["--poll-seconds", "0"], "--poll-seconds: must be between 0.1 and 86400"),
        (["--poll-seconds", "-1"], "--poll-seconds: must be between 0.1 and 86400"),
        (["--poll-seconds", "nan"], "--poll-seconds: must be a finite number"),
        (["--poll-seconds", "inf"], "--poll-seconds: must be a finite number"),
        (["--name", ""], "--name: must not be empty"),
        (["--name", "a\nb"], "--name: must not contain control characters"),
    ],
)
def test_scheduler_refuses_bad_options(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("kohakku_scheduler", "--once", *args, stdout=io.StringIO())


def test_scheduler_checks_keyword_options():
    with pytest.raises(CommandError, match="--poll-seconds must be between"):
        call_command("kohakku_scheduler", poll_seconds=0, stdout=io.StringIO())


def test_scheduler_accepts_good_options():
    out = io.StringIO()
    call_command(
        "kohakku_scheduler",
        "--once",
        "--batch-size",
        "5",
        "--concurrency",
        "2",
        "--poll-seconds",
        "0.5",
        "--name",
        "replica-1",
        stdout=out,
    )
    assert "claimed=0 pushed=0" in out.getvalue()


def test_the_scheduler_says_at_start_where_dispatchers_are_told_to_call(settings, monkeypatch):
    from kohakku_controller.tasks.scheduler import Scheduler

    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "PUBLIC_BASE_URL": "https://controller.example:8443",
    }
    monkeypatch.setattr(Scheduler, "run_forever", lambda self, stop, poll_seconds=None: None)
    monkeypatch.setattr("signal.signal", lambda *args: None)  # keep the test run's handlers
    out = io.StringIO()
    call_command("kohakku_scheduler", "--name", "replica-1", stdout=out)
    assert out.getvalue().splitlines()[0] == (
        "scheduler replica-1 running; dispatchers are told to reach the controller at "
        "https://controller.example:8443"
    )


def test_create_client_on_a_locked_database_is_a_one_line_error(monkeypatch):
    from django.db import OperationalError

    from kohakku_controller.management.commands import kohakku_create_client as command

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(command, "create_or_reset_client", locked)
    with pytest.raises(CommandError, match=r"could not make the change \(database is locked\)"):
        call_command("kohakku_create_client", "busy", "--scopes", "dispatchers")


def test_create_client_on_an_unmigrated_database_gets_no_retry_hint(monkeypatch):
    from django.db import OperationalError

    from kohakku_controller.management.commands import kohakku_create_client as command

    def missing(*args, **kwargs):
        raise OperationalError("no such table: oauth2_provider_application")

    monkeypatch.setattr(command, "create_or_reset_client", missing)
    with pytest.raises(CommandError) as failure:
        call_command("kohakku_create_client", "new", "--scopes", "dispatchers")
    assert str(failure.value) == (
        "The database could not make the change (no such table: oauth2_provider_application); "
        "nothing was changed."
    )
