"""The hooks docs/extend.md offers work on every action a user can call.

The host in tests/extension_hooks_urls.py overrides ``cancel`` without ``@action``, adds a
field to responses through ``get_serializer_class()`` and hides skills through
``get_queryset()`` and ``get_skill_queryset()``, and adds a visibility filter backend to
the delivery log.
"""

from __future__ import annotations

from typing import Any

import pytest

from kohakku_controller.skills import services as skill_services
from kohakku_controller.tasks.services import create_task
from tests import extension_hooks_urls
from tests.skills.conftest import upload_file
from tests.skills.zips import package
from tests.tasks.conftest import skill_version  # noqa: F401 (fixture)

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.extension_hooks_urls")]


@pytest.mark.usefixtures("skill_version")
def test_an_action_overridden_without_its_decorator_keeps_its_route(staff_client):
    task = create_task(skill="code-review")

    response = staff_client.post(f"/api/v1/tasks/{task.guid}/cancel/")

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "cancelled"
    assert extension_hooks_urls.cancelled_by_the_host[-1] == str(task.guid)


def test_the_overridden_action_keeps_its_openapi_description(staff_client):
    schema = staff_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    cancel = schema["paths"]["/api/v1/tasks/{guid}/cancel/"]["post"]
    assert set(cancel["responses"]) >= {"200", "202", "409"}
    assert cancel["description"].startswith("Cancel at once if queued")
    # An override with its own @extend_schema changes what it names and keeps the rest.
    archive = schema["paths"]["/api/v1/skills/{slug}/archive/"]["post"]
    assert archive["summary"] == "Archive a skill (the platform team's way)"
    assert set(archive["responses"]) >= {"200", "409"} and "requestBody" not in archive


@pytest.mark.usefixtures("skill_version")
def test_a_get_serializer_class_that_returns_a_request_serializer_keeps_the_answer(staff_client):
    # DRF's usual pattern, which the controller itself used before: the create action's
    # serializer is the request body's. The answer is still the task.
    from rest_framework.test import APIRequestFactory, force_authenticate

    from kohakku_controller.tasks.models import Task
    from kohakku_controller.tasks.serializers import TaskCreateSerializer
    from kohakku_controller.tasks.views import TaskViewSet

    class ClassicTaskViewSet(TaskViewSet):
        def get_serializer_class(self):
            if self.action == "create":
                return TaskCreateSerializer
            return super().get_serializer_class()

    request = APIRequestFactory().post("/tasks/", {"skill": "code-review"}, format="json")
    force_authenticate(request, user=staff_client.user)
    response = ClassicTaskViewSet.as_view({"post": "create"})(request)
    assert response.status_code == 201, response.data
    assert response.data["guid"] == str(Task.objects.get().guid)


@pytest.mark.usefixtures("skill_version")
def test_fields_added_by_get_serializer_class_show_on_every_task_response(staff_client):
    created = staff_client.post("/api/v1/tasks/", {"skill": "code-review"}, format="json")
    assert created.status_code == 201
    guid = created.json()["guid"]
    cancelled = staff_client.post(f"/api/v1/tasks/{guid}/cancel/")
    listed = staff_client.get("/api/v1/tasks/")
    for body in (created.json(), cancelled.json(), listed.json()[0]):
        assert body["ticket"].startswith("TICKET-"), body


def test_fields_added_by_get_serializer_class_show_on_every_skill_response(staff_client):
    created = staff_client.post("/api/v1/skills/", {"name": "lint"}, format="json")
    assert created.status_code == 201
    changed = staff_client.patch("/api/v1/skills/lint/", {"description": "x"}, format="json")
    archived = staff_client.post("/api/v1/skills/lint/archive/")
    restored = staff_client.post("/api/v1/skills/lint/unarchive/")
    for response in (created, changed, archived, restored):
        assert response.json()["owner"] == "platform-team", response.json()


@pytest.fixture
def hidden_skill(staff_client: Any) -> Any:
    skill = skill_services.create_skill(name="internal-deploy")
    skill_services.upload_package(skill, upload_file(package(skill.slug)))
    return skill


@pytest.mark.parametrize(
    "method, suffix",
    [
        ("get", ""),
        ("get", "download/"),
        ("get", "download/?version=1"),
        ("head", "download/"),
        ("get", "versions/"),
        ("get", "versions/1/"),
        ("post", "versions/1/yank/"),
    ],
)
def test_a_skill_hidden_by_the_host_is_not_found_on_any_action(
    staff_client, hidden_skill, method, suffix
):
    url = f"/api/v1/skills/{hidden_skill.slug}/{suffix}"
    if method == "post":
        response = staff_client.post(url, {"reason": "x"}, format="json")
    else:
        response = getattr(staff_client, method)(url)
    assert response.status_code == 404


@pytest.mark.usefixtures("filesystem_storage")  # the controller signs the URL, not S3
def test_a_signed_download_url_of_a_hidden_skill_still_serves_its_dispatcher(hidden_skill):
    from rest_framework.test import APIClient

    version = hidden_skill.versions.get()
    url = skill_services.package_download_url(version, base_url="http://testserver")
    response = APIClient().get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == package(hidden_skill.slug)


def test_versions_of_a_visible_skill_answer_with_the_added_field(staff_client, hidden_skill):
    skill = skill_services.create_skill(name="lint")
    skill_services.upload_package(skill, upload_file(package(skill.slug)))
    yank = "/api/v1/skills/lint/versions/1/yank/"
    yanked = staff_client.post(yank, {"reason": "bad"}, format="json")
    assert yanked.status_code == 200
    assert yanked.json()["owner"] == "platform-team"
    assert staff_client.get("/api/v1/skills/lint/download/?version=1").status_code == 200


def test_a_hosts_visibility_backend_applies_to_lookups_and_is_documented_there(staff_client):
    from kohakku_controller.webhooks.models import Delivery

    slack = Delivery.objects.create(source="slack", status="rejected", status_code=401)
    assert staff_client.get("/api/v1/webhooks/deliveries/").json() == []
    url = f"/api/v1/webhooks/deliveries/{slack.guid}/"
    assert staff_client.get(url).status_code == 404
    assert staff_client.get(url, {"with_slack": "1"}).status_code == 200

    schema = staff_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for operation in (
        paths["/api/v1/webhooks/deliveries/"]["get"],
        paths["/api/v1/webhooks/deliveries/{guid}/"]["get"],
    ):
        assert "with_slack" in [parameter["name"] for parameter in operation["parameters"]]
    # The list's own filters stay on the list.
    detail = paths["/api/v1/webhooks/deliveries/{guid}/"]["get"]["parameters"]
    assert "source" not in [parameter["name"] for parameter in detail]
