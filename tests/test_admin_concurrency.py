"""The admin under concurrent edits: a form opened before someone else's change is refused,
a change landing between the form's check and its write is refused too, and a save or action
that loses a race ends as a form error or a message, never a 500 or a lost update.

A concurrent change is made between the page's GET and its POST. One landing between the
check and the write is made before the POST while the admin is handed the object as read
before it (``get_object``), which is what a race does on any database.
"""

from __future__ import annotations

from typing import Any

import pytest

from kohakku_controller import admin as root_admin
from kohakku_controller.admin_forms import VERSION_FIELD, stale_message
from kohakku_controller.dispatchers import admin as dispatchers_admin
from kohakku_controller.dispatchers import services as dispatcher_services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.oauth import ClientScopes, create_or_reset_client
from kohakku_controller.skills import admin as skills_admin
from kohakku_controller.skills import services as skill_services
from kohakku_controller.skills.models import Skill
from kohakku_controller.workflows import admin as workflows_admin
from kohakku_controller.workflows.models import Workflow
from kohakku_controller.workflows.services import save_workflow

from .admin_pages import messages_of, opened_version, workflow_form

pytestmark = pytest.mark.django_db

ADMIN = "/admin/kohakku_controller"


@pytest.fixture
def skill() -> Skill:
    return Skill.objects.create(name="triage", slug="triage")


@pytest.fixture
def clientscopes(application: Any) -> ClientScopes:
    return ClientScopes.objects.create(application=application, scopes=["tasks:read"])


@pytest.fixture
def workflow(skill: Skill) -> Workflow:
    return Workflow.objects.create(
        name="Triage PRs", slug="triage-prs", source="github", event="pull_request", skill=skill
    )


@pytest.fixture
def dispatcher(application: Any) -> Dispatcher:
    return dispatcher_services.checkin(
        application=application,
        data={"name": "local-dev", "endpoint_url": "http://dispatcher:8080", "backends": ["local"]},
    ).dispatcher


# Per model: the change form's fields as the page shows them, with the operator's edit;
# a change another request makes (as the API does); and whether that change was kept.


def workflow_edit(workflow: Workflow) -> dict[str, Any]:
    return workflow_form(workflow.skill, name=workflow.name, enabled="")  # the operator disables it


def workflow_changed_elsewhere(workflow: Workflow) -> None:
    save_workflow(Workflow.objects.get(pk=workflow.pk), priority=7)


def workflow_kept(workflow: Workflow) -> bool:
    stored = Workflow.objects.get(pk=workflow.pk)
    return (stored.enabled, stored.priority) == (True, 7)


def skill_edit(skill: Skill) -> dict[str, Any]:
    # "archived" is left out: the page showed the skill not archived.
    return {
        "category": skill.category,
        "description": "edited",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
    }


def skill_changed_elsewhere(skill: Skill) -> None:
    skill_services.set_skill_archived(Skill.objects.get(pk=skill.pk), True)


def skill_kept(skill: Skill) -> bool:
    stored = Skill.objects.get(pk=skill.pk)
    return (stored.archived, stored.description) == (True, "")


def dispatcher_edit(dispatcher: Dispatcher) -> dict[str, Any]:
    return {"enabled": "on", "draining": "on", "capacity": str(dispatcher.capacity)}


def dispatcher_changed_elsewhere(dispatcher: Dispatcher) -> None:
    dispatcher_services.set_dispatcher_controls(dispatcher, capacity=9)


def dispatcher_kept(dispatcher: Dispatcher) -> bool:
    stored = Dispatcher.objects.get(pk=dispatcher.pk)
    return (stored.draining, stored.capacity) == (False, 9)


def clientscopes_edit(grant: ClientScopes) -> dict[str, Any]:
    return {"application": str(grant.application_id), "scopes": ["tasks:read", "tasks:write"]}


def clientscopes_changed_elsewhere(grant: ClientScopes) -> None:
    create_or_reset_client(grant.application.name, ["dispatchers"])  # as the command does


def clientscopes_kept(grant: ClientScopes) -> bool:
    return ClientScopes.objects.get(pk=grant.pk).scopes == ["dispatchers"]


CASES = {
    "clientscopes": (
        root_admin.ClientScopesAdmin,
        clientscopes_edit,
        clientscopes_changed_elsewhere,
        clientscopes_kept,
    ),
    "workflow": (
        workflows_admin.WorkflowAdmin,
        workflow_edit,
        workflow_changed_elsewhere,
        workflow_kept,
    ),
    "skill": (skills_admin.SkillAdmin, skill_edit, skill_changed_elsewhere, skill_kept),
    "dispatcher": (
        dispatchers_admin.DispatcherAdmin,
        dispatcher_edit,
        dispatcher_changed_elsewhere,
        dispatcher_kept,
    ),
}


def change_url(obj: Any) -> str:
    return f"{ADMIN}/{obj._meta.model_name}/{obj.pk}/change/"


@pytest.mark.parametrize("name", CASES)
def test_a_form_opened_before_another_change_is_refused(admin_browser, request, name):
    _, edit, changed_elsewhere, kept = CASES[name]
    obj = request.getfixturevalue(name)
    url = change_url(obj)
    opened = opened_version(admin_browser, url)
    changed_elsewhere(obj)
    response = admin_browser.post(url, {**edit(obj), **opened})
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == {"__all__": [stale_message(obj)]}
    assert kept(obj)
    # Reloaded, the page carries the new version, and the edit saves.
    response = admin_browser.post(url, {**edit(obj), **opened_version(admin_browser, url)})
    assert response.status_code == 302, response.context["adminform"].form.errors


@pytest.mark.parametrize("name", CASES)
def test_a_change_landing_between_the_check_and_the_write_is_refused(
    admin_browser, request, monkeypatch, name
):
    model_admin, edit, changed_elsewhere, kept = CASES[name]
    obj = request.getfixturevalue(name)
    url = change_url(obj)
    opened = opened_version(admin_browser, url)
    stale = type(obj).objects.get(pk=obj.pk)  # the admin's read when the form is posted
    changed_elsewhere(obj)  # commits after that read, before the admin's write
    monkeypatch.setattr(model_admin, "get_object", lambda *args, **kwargs: stale)
    response = admin_browser.post(url, {**edit(obj), **opened})
    assert (response.status_code, response["Location"]) == (302, url)
    assert messages_of(response) == [stale_message(obj)]
    assert kept(obj)


def test_the_form_carries_its_version_hidden(admin_browser, dispatcher):
    html = admin_browser.get(change_url(dispatcher)).content.decode()
    assert f'type="hidden" name="{VERSION_FIELD}"' in html


def test_a_dispatcher_deleted_while_its_page_is_saved_is_a_message(
    admin_browser, dispatcher, monkeypatch
):
    url = change_url(dispatcher)
    opened = opened_version(admin_browser, url)
    stale = Dispatcher.objects.get(pk=dispatcher.pk)
    dispatcher_services.delete_dispatcher(dispatcher)  # through the API, after the admin read
    monkeypatch.setattr(
        dispatchers_admin.DispatcherAdmin, "get_object", lambda *args, **kwargs: stale
    )
    response = admin_browser.post(url, {**dispatcher_edit(stale), **opened})
    assert (response.status_code, response["Location"]) == (302, url)
    assert messages_of(response) == ["No such dispatcher."]
    assert not Dispatcher.objects.exists()


def test_a_dispatcher_deleted_while_an_action_runs_is_left_out(
    admin_browser, dispatcher, application, monkeypatch
):
    other = dispatcher_services.checkin(
        application=application,
        data={"name": "other", "endpoint_url": "http://other:8080", "backends": ["local"]},
    ).dispatcher
    set_controls = dispatcher_services.set_dispatcher_controls

    def deleted_first(target: Dispatcher, **changes: Any) -> Dispatcher:
        if target.pk == dispatcher.pk:
            dispatcher_services.delete_dispatcher(target)  # through the API, meanwhile
        return set_controls(target, **changes)

    monkeypatch.setattr(dispatcher_services, "set_dispatcher_controls", deleted_first)
    response = admin_browser.post(
        f"{ADMIN}/dispatcher/",
        {"action": "start_draining", "_selected_action": [dispatcher.pk, other.pk]},
    )
    assert response.status_code == 302
    assert messages_of(response) == [
        "1 dispatcher(s) changed.",
        "1 dispatcher(s) were deleted meanwhile and left out.",
    ]
    assert list(Dispatcher.objects.values_list("name", "draining")) == [("other", True)]


# Adds that lose a race: another request saves the same name (or the same application's
# scopes) after this form was checked and before it is written.


def competing_skill(application: Any) -> None:
    skill_services.create_skill(name="Admin Made Skill", category="tool")


def competing_workflow(application: Any) -> None:
    skill = Skill.objects.get(slug="triage")
    Workflow.objects.create(name="Triage PRs", slug="triage-prs", source="github", skill=skill)


def competing_scopes(application: Any) -> None:
    ClientScopes.objects.create(application=application, scopes=["tasks:read"])


ADDS = {
    "skill": (
        skills_admin.SkillAdmin,
        lambda application: {"name": "Admin Made Skill", "category": "tool", "description": ""},
        competing_skill,
        "name: A skill with this name or slug ('admin-made-skill') already exists.",
    ),
    "workflow": (
        workflows_admin.WorkflowAdmin,
        lambda application: {
            **workflow_edit(Workflow(name="Triage PRs", skill=Skill.objects.get(slug="triage"))),
            "slug": "",
        },
        competing_workflow,
        "slug: A workflow with slug 'triage-prs' already exists. "
        "name: A workflow named 'Triage PRs' already exists.",
    ),
    "clientscopes": (
        root_admin.ClientScopesAdmin,
        lambda application: {"application": str(application.pk), "scopes": ["tasks:write"]},
        competing_scopes,
        "Nothing was saved: another request saved a conflicting OAuth2 client scopes at the "
        "same time. Check it and try again.",
    ),
}


@pytest.mark.parametrize("name", ADDS)
def test_an_add_that_loses_a_race_is_a_message(
    admin_browser, application, skill, monkeypatch, name
):
    model_admin, form, compete, message = ADDS[name]
    save_model = model_admin.save_model

    def saved_by_another_request_first(self: Any, *args: Any, **kwargs: Any) -> None:
        compete(application)
        save_model(self, *args, **kwargs)

    monkeypatch.setattr(model_admin, "save_model", saved_by_another_request_first)
    url = f"{ADMIN}/{name}/add/"
    response = admin_browser.post(url, form(application))
    assert (response.status_code, response["Location"]) == (302, url)
    assert messages_of(response) == [message]
