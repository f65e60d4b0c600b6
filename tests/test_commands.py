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
