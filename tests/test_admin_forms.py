"""The admin forms refuse what the API refuses, with the error on the field, and write
nothing; valid input still saves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib import admin

from kohakku_controller.oauth import ClientScopes
from kohakku_controller.skills.models import Skill, SkillVersion
from kohakku_controller.workflows.models import Workflow
from kohakku_controller.workflows.serializers import WorkflowSerializer

from .admin_pages import opened_version, workflow_form

pytestmark = pytest.mark.django_db

ADMIN = "/admin/kohakku_controller"


def form_errors(response: Any) -> dict[str, list[str]]:
    """The admin form's errors, by field (``__all__`` for form-wide ones)."""
    assert response.status_code == 200, response.status_code
    form = response.context["adminform"].form
    return {field: list(messages) for field, messages in form.errors.items()}


# --- workflows ------------------------------------------------------------------------------


@pytest.fixture
def triage() -> Skill:
    skill = Skill.objects.create(name="triage", slug="triage", last_version_number=1)
    SkillVersion.objects.create(
        skill=skill, version_number=1, content_hash="a" * 64, size=10, storage_ref="x.zip"
    )
    return skill


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("labels", "[1, 2]"),
        ("labels", '{"a": 5}'),
        ("input_template", "[[["),
        ("conditions", '"payload.x"'),
        ("conditions", '["((("]'),
        ("conditions", "[5]"),
        ("backend", "BAD BACKEND!"),
        ("timeout_seconds", "999999999"),
        ("skill_version", "999"),
        ("task_priority", "5000"),
    ],
)
def test_workflow_add_refuses_what_the_api_refuses(admin_browser, triage, field, value):
    response = admin_browser.post(f"{ADMIN}/workflow/add/", workflow_form(triage, **{field: value}))
    errors = form_errors(response)
    assert field in errors, errors
    assert not Workflow.objects.exists()


def test_workflow_add_saves_valid_input_and_derives_the_slug(admin_browser, triage):
    response = admin_browser.post(
        f"{ADMIN}/workflow/add/",
        workflow_form(
            triage,
            conditions="[\"payload.action == 'opened'\"]",
            labels='{"team": "infra"}',
            skill_version="1",
            timeout_seconds="600",
        ),
    )
    assert response.status_code == 302, form_errors(response)
    workflow = Workflow.objects.get()
    assert workflow.slug == "triage-prs"
    assert workflow.labels == {"team": "infra"}
    assert workflow.conditions == ["payload.action == 'opened'"]
    assert (workflow.skill_version, workflow.timeout_seconds) == (1, 600)


def test_workflow_add_refuses_a_taken_or_reserved_slug(admin_browser, triage):
    Workflow.objects.create(name="Other", slug="triage-prs", source="github", skill=triage)
    response = admin_browser.post(f"{ADMIN}/workflow/add/", workflow_form(triage))
    assert "slug" in form_errors(response)
    response = admin_browser.post(f"{ADMIN}/workflow/add/", workflow_form(triage, slug="dry-run"))
    assert "slug" in form_errors(response)
    assert Workflow.objects.count() == 1


def test_workflow_change_refuses_bad_labels_and_saves_good_ones(admin_browser, triage):
    workflow = Workflow.objects.create(
        name="Triage PRs", slug="triage-prs", source="github", skill=triage
    )
    url = f"{ADMIN}/workflow/{workflow.pk}/change/"
    data = {**workflow_form(triage), **opened_version(admin_browser, url)}
    del data["slug"]  # read-only once created
    response = admin_browser.post(url, {**data, "labels": "[1, 2]"})
    assert "labels" in form_errors(response)
    workflow.refresh_from_db()
    assert workflow.labels == {}
    response = admin_browser.post(url, {**data, "labels": '{"team": "infra"}'})
    assert response.status_code == 302, form_errors(response)
    workflow.refresh_from_db()
    assert (workflow.slug, workflow.labels) == ("triage-prs", {"team": "infra"})
    # What the admin saved, the API can show.
    assert WorkflowSerializer(Workflow.objects.all(), many=True).data[0]["labels"] == {
        "team": "infra"
    }


# --- skills ---------------------------------------------------------------------------------


def skill_form(**overrides: Any) -> dict[str, Any]:
    return {"name": "Admin Made Skill", "category": "tool", "description": "", **overrides}


def test_skill_add_refuses_an_unknown_category(admin_browser):
    response = admin_browser.post(f"{ADMIN}/skill/add/", skill_form(category="weird-cat"))
    assert "category" in form_errors(response)
    assert not Skill.objects.exists()


def test_skill_add_refuses_a_name_without_a_slug_or_with_a_taken_slug(admin_browser):
    response = admin_browser.post(f"{ADMIN}/skill/add/", skill_form(name="!!!"))
    assert "name" in form_errors(response)
    Skill.objects.create(name="admin made skill!", slug="admin-made-skill")
    response = admin_browser.post(f"{ADMIN}/skill/add/", skill_form())
    assert "name" in form_errors(response)
    assert Skill.objects.count() == 1


def test_skill_add_goes_through_create_skill(admin_browser):
    response = admin_browser.post(f"{ADMIN}/skill/add/", skill_form(category="agent"))
    assert response.status_code == 302, form_errors(response)
    skill = Skill.objects.get()
    assert (skill.name, skill.slug, skill.category) == (
        "Admin Made Skill",
        "admin-made-skill",
        "agent",
    )
    assert response["Location"].endswith("/admin/kohakku_controller/skill/")


def test_skill_change_keeps_the_name_and_checks_the_category(admin_browser):
    skill = Skill.objects.create(name="triage", slug="triage")
    url = f"{ADMIN}/skill/{skill.pk}/change/"
    versions = {"versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0"}
    versions.update(opened_version(admin_browser, url))
    response = admin_browser.post(
        url, {"name": "renamed", "category": "weird-cat", "description": "x", **versions}
    )
    assert "category" in form_errors(response)
    skill.refresh_from_db()
    assert (skill.category, skill.description) == ("tool", "")
    response = admin_browser.post(
        url, {"name": "renamed", "category": "data", "description": "x", **versions}
    )
    assert response.status_code == 302, form_errors(response)
    skill.refresh_from_db()
    assert (skill.name, skill.slug, skill.category, skill.description) == (
        "triage",
        "triage",
        "data",
        "x",
    )


# --- OAuth2 client scopes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "scopes",
    [
        "5",
        '"tasks:read dispatchers"',
        '["tasks:read", "nope"]',
        ["tasks:read dispatchers"],
        ["tasks:read", "nope"],
    ],
)
def test_client_scopes_refuse_unknown_scopes(admin_browser, application, scopes):
    response = admin_browser.post(
        f"{ADMIN}/clientscopes/add/", {"application": str(application.pk), "scopes": scopes}
    )
    assert "scopes" in form_errors(response)
    assert not ClientScopes.objects.exists()


def test_client_scopes_save_a_sorted_list_of_known_scopes(admin_browser, application):
    response = admin_browser.post(
        f"{ADMIN}/clientscopes/add/",
        {"application": str(application.pk), "scopes": ["tasks:write", "dispatchers"]},
    )
    assert response.status_code == 302, form_errors(response)
    granted = ClientScopes.objects.get(application=application)
    assert granted.scopes == ["dispatchers", "tasks:write"]
    assert json.loads(json.dumps(granted.scopes)) == granted.scopes
    assert str(granted).endswith("dispatchers tasks:write")


def test_client_scopes_written_by_hand_still_show(db):
    from kohakku_controller.oauth import ClientScopes, create_or_reset_client

    created = create_or_reset_client("by-hand", ["tasks:read"])
    ClientScopes.objects.filter(application=created.application).update(scopes=5)
    row = ClientScopes.objects.get(application=created.application)
    assert str(row) == f"{created.application.pk}: 5"


def test_operator_tokens_are_not_shown_by_the_admin(admin_browser, make_user):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=make_user("ops"))
    index = admin_browser.get("/admin/").content.decode()
    assert "tokenproxy" not in index and token.key not in index
    # DRF's token admin names a token by its user's id in URLs.
    user_id = token.user_id
    for page in ("", f"{user_id}/change/", f"{user_id}/history/", f"{user_id}/delete/", "add/"):
        response = admin_browser.get(f"/admin/authtoken/tokenproxy/{page}")
        assert response.status_code == 403, page
        assert token.key not in response.content.decode()


def test_a_hosts_own_token_admin_is_left_alone_and_can_replace_the_closed_one():
    from rest_framework.authtoken.admin import TokenAdmin
    from rest_framework.authtoken.models import TokenProxy

    from kohakku_controller.admin import _hide_operator_tokens

    class HostTokenAdmin(admin.ModelAdmin):
        pass

    closed = type(admin.site._registry[TokenProxy])
    try:
        # A host app after the controller replaces it the usual way.
        admin.site.unregister(TokenProxy)
        admin.site.register(TokenProxy, HostTokenAdmin)
        # A host app before it: its admin is not DRF's, so it stays.
        _hide_operator_tokens()
        assert type(admin.site._registry[TokenProxy]) is HostTokenAdmin
    finally:
        admin.site.unregister(TokenProxy)
        admin.site.register(TokenProxy, closed)
    assert closed is not TokenAdmin and issubclass(closed, TokenAdmin)


def test_an_oauth2_application_has_no_link_to_a_page_that_is_not_mounted(admin_browser):
    from kohakku_controller.oauth import create_or_reset_client

    created = create_or_reset_client("orchestrator", ["tasks:read"])
    url = f"/admin/oauth2_provider/application/{created.application.pk}/change/"
    page = admin_browser.get(url)
    assert page.status_code == 200
    assert "View on site" not in page.content.decode()
