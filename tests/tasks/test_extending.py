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
def tasks(skill_version, make_user):
    made = {}
    for team in ("blue", "red"):
        member = make_user(f"{team}-member")
        member.groups.add(Group.objects.create(name=team))
        made[team] = create_task(skill="code-review", created_by=member)
    return made


def test_the_subclass_serves_the_route_and_keeps_its_names(token_client, tasks, oauth_client):
    operator = token_client("blue-operator", perms=("kohakku_controller.view_task",))
    operator.user.groups.add(Group.objects.get(name="blue"))
    listed = operator.get("/api/v1/tasks/").json()
    assert [task["guid"] for task in listed] == [str(tasks["blue"].guid)]
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


def test_the_documented_example_is_the_code_the_tests_mount():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (root / "tests" / "extending_urls.py").read_text()
    code = code.split('"""\n', 1)[1].lstrip()  # without the module docstring
    assert code in (root / "docs" / "extend.md").read_text()


def test_an_action_of_a_subclass_may_set_its_own_throttles_and_authentication(staff_client):
    from rest_framework.decorators import action
    from rest_framework.response import Response
    from rest_framework.test import APIRequestFactory, force_authenticate

    from kohakku_controller.tasks.views import TaskViewSet

    class Mine(TaskViewSet):
        @action(detail=False, throttle_classes=[], authentication_classes=[])
        def ping(self, request):
            return Response(
                {"throttles": self.throttle_classes, "auth": self.authentication_classes}
            )

    view = Mine.as_view({"get": "ping"}, **Mine.ping.kwargs)
    request = APIRequestFactory().get("/ping/")
    force_authenticate(request, user=staff_client.user)
    response = view(request)
    assert response.status_code == 200
    assert response.data == {"throttles": [], "auth": []}
    # The class itself still reads the controller's settings.
    assert Mine.throttle_classes == [] and len(Mine.authentication_classes) == 2
