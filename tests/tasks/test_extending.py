"""Hosts replace a controller viewset with a subclass through ``build_urlpatterns``."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from kohakku_controller.tasks.services import create_task
from kohakku_controller.urls import build_urlpatterns

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.extending_urls")]


@pytest.fixture
def tasks(skill_version):
    return {
        team: create_task(skill="code-review", labels={"team": team}) for team in ("blue", "red")
    }


def test_the_subclass_serves_the_route_and_keeps_its_names(token_client, tasks, oauth_client):
    operator = token_client("blue-operator", perms=("kohakku_controller.view_task",))
    operator.user.groups.add(Group.objects.create(name="blue"))
    listed = operator.get("/api/v1/tasks/").json()
    assert [task["labels"] for task in listed] == [{"team": "blue"}]
    assert operator.get(f"/api/v1/tasks/{tasks['red'].guid}/").status_code == 404
    assert operator.get(f"/api/v1/tasks/{tasks['blue'].guid}/events/").status_code == 200
    # Clients and the rest of the API are untouched; URL names still reverse.
    assert len(oauth_client("tasks:read").get("/api/v1/tasks/").json()) == 2
    assert reverse("kohakku_controller:task-detail", args=[tasks["red"].guid]).startswith(
        "/api/v1/tasks/"
    )
    assert reverse("kohakku_controller:task-callback", args=[tasks["red"].guid])
    assert reverse("kohakku_controller:skill-list") == "/api/v1/skills/"


def test_an_unknown_viewset_name_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match=r"'tasks'.*known: dispatcher"):
        build_urlpatterns({"tasks": object})
