"""The task API: create (with Idempotency-Key), list with filters, retrieve, events, cancel."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from kohakku_controller.skills.models import SkillVersion
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.services import create_task

pytestmark = pytest.mark.django_db


def post(client, body, **headers):
    return client.post(
        "/api/v1/tasks/", json.dumps(body), content_type="application/json", **headers
    )


def test_create_with_only_skill_uses_latest_non_yanked(staff_client, skill_version):
    SkillVersion.objects.create(
        skill=skill_version.skill,
        version_number=2,
        content_hash="b" * 64,
        size=1,
        storage_ref="x",
        yanked=True,
    )
    response = post(staff_client, {"skill": "code-review"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert body["version"] == 1
    assert body["skill"] == "code-review"
    assert body["backend"] == "local"
    assert body["attempt"] == 0
    task = Task.objects.get(guid=body["guid"])
    assert task.created_by.username == "staff"
    assert list(task.events.values_list("kind", flat=True)) == ["created"]


def test_create_full_pinned_body(oauth_client, skill_version):
    client = oauth_client("tasks:write")
    response = post(
        client,
        {
            "skill": "code-review",
            "version": 1,
            "input": {"pr": 7},
            "backend": "k8s",
            "labels": {"gpu": "a100"},
            "priority": 5,
            "timeout_seconds": 600,
            "max_attempts": 2,
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["input"] == {"pr": 7}
    assert body["labels"] == {"gpu": "a100"}
    assert (body["priority"], body["timeout_seconds"], body["max_attempts"]) == (5, 600, 2)
    assert body["origin"] == "api"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"skill": "nope"}, "skill"),
        ({}, "skill"),
        ({"skill": "code-review", "version": 9}, "version"),
        ({"skill": "code-review", "version": "one"}, "version"),
        ({"skill": "code-review", "input": [1, 2]}, "input"),
        ({"skill": "code-review", "input": "text"}, "input"),
        ({"skill": "code-review", "labels": ["gpu"]}, "labels"),
        ({"skill": "code-review", "labels": {"gpu": 3}}, "labels"),
        ({"skill": "code-review", "labels": {"bad key!": "x"}}, "labels"),
        # The dispatchers' own label rule: no key a dispatcher could never carry.
        ({"skill": "code-review", "labels": {"gpu-": "a100"}}, "labels"),
        ({"skill": "code-review", "labels": {"gpu": "a\nb"}}, "labels"),
        ({"skill": "code-review", "priority": "high"}, "priority"),
        ({"skill": "code-review", "priority": 10**6}, "priority"),
        ({"skill": "code-review", "timeout_seconds": 0}, "timeout_seconds"),
        ({"skill": "code-review", "max_attempts": 0}, "max_attempts"),
        ({"skill": "code-review", "max_attempts": 1000}, "max_attempts"),
        ({"skill": "code-review", "backend": ""}, "backend"),
        # Backends no dispatcher can list (their rule): such a task would wait forever.
        ({"skill": "code-review", "backend": "Local"}, "backend"),
        ({"skill": "code-review", "backend": "k8s.gpu/a"}, "backend"),
        ({"skill": "code-review", "surprise": 1}, "surprise"),
    ],
)
def test_create_rejects_bad_input_naming_the_field(staff_client, skill_version, body, field):
    response = post(staff_client, body)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "5"),
        ("priority", 5.0),
        ("priority", True),
        ("version", "1"),
        ("version", 1.0),
        ("timeout_seconds", "60"),
        ("timeout_seconds", 60.0),
        ("max_attempts", "2"),
        ("backend", 5),
        ("backend", "local\n"),
        ("backend", " local"),
        ("skill", 5),
        ("skill", ["code-review"]),
    ],
)
def test_create_refuses_wrong_json_types_instead_of_converting(
    staff_client, skill_version, field, value
):
    response = post(staff_client, {"skill": "code-review", field: value})
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not Task.objects.exists()


def test_create_names_every_faulty_and_unknown_field_at_once(staff_client, skill_version):
    body = {"skill": 5, "priority": "5", "version": 1.0, "colour": "red", "Skill": "x"}
    response = post(staff_client, body)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert sorted(errors) == ["Skill", "colour", "priority", "skill", "version"]
    assert errors["colour"] == ["Unknown field."]
    assert not Task.objects.exists()


def test_create_rejects_yanked_version(staff_client, skill_version):
    SkillVersion.objects.filter(pk=skill_version.pk).update(yanked=True)
    response = post(staff_client, {"skill": "code-review", "version": 1})
    assert response.status_code == 400
    assert "version" in response.json()


def test_create_rejects_input_over_cap(staff_client, skill_version, settings):
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "TASK_INPUT_MAX_BYTES": 100}
    response = post(staff_client, {"skill": "code-review", "input": {"blob": "x" * 200}})
    assert response.status_code == 400
    assert "input" in response.json()
    assert not Task.objects.exists()


def test_create_rejects_malformed_json(staff_client, skill_version):
    response = staff_client.post("/api/v1/tasks/", b"{nope", content_type="application/json")
    assert response.status_code == 400
    assert not Task.objects.exists()


def test_idempotency_key_same_body_returns_same_task(staff_client, skill_version):
    first = post(staff_client, {"skill": "code-review"}, HTTP_IDEMPOTENCY_KEY="k-1")
    again = post(staff_client, {"skill": "code-review"}, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["guid"] == first.json()["guid"]
    assert Task.objects.count() == 1


def test_idempotency_key_other_body_conflicts(staff_client, skill_version):
    post(staff_client, {"skill": "code-review"}, HTTP_IDEMPOTENCY_KEY="k-2")
    response = post(
        staff_client, {"skill": "code-review", "priority": 3}, HTTP_IDEMPOTENCY_KEY="k-2"
    )
    assert response.status_code == 409
    assert "idempotency_key" in response.json()
    assert Task.objects.count() == 1


def test_idempotency_keys_belong_to_their_caller(oauth_client, token_client, skill_version):
    first_client, second_client = oauth_client("tasks:write"), oauth_client("tasks:write")
    operator = token_client("operator", staff=True)
    body = {"skill": "code-review"}
    guids = {
        post(caller, body, HTTP_IDEMPOTENCY_KEY="shared-key").json()["guid"]
        for caller in (first_client, second_client, operator)
    }
    assert len(guids) == 3
    replay = post(second_client, body, HTTP_IDEMPOTENCY_KEY="shared-key")
    assert replay.status_code == 200
    assert replay.json()["guid"] in guids


def test_scopes(oauth_client, skill_version, api_client):
    reader = oauth_client("tasks:read")
    assert post(reader, {"skill": "code-review"}).status_code == 403
    assert reader.get("/api/v1/tasks/").status_code == 200
    writer = oauth_client("skills:read")
    assert writer.get("/api/v1/tasks/").status_code == 403
    assert api_client.get("/api/v1/tasks/").status_code == 401


def test_operator_needs_model_permissions(token_client, skill_version):
    plain = token_client("plain")
    assert plain.get("/api/v1/tasks/").status_code == 403
    viewer = token_client("viewer", perms=("kohakku_controller.view_task",))
    assert viewer.get("/api/v1/tasks/").status_code == 200
    assert post(viewer, {"skill": "code-review"}).status_code == 403
    adder = token_client("adder", perms=("kohakku_controller.add_task",))
    assert post(adder, {"skill": "code-review"}).status_code == 201


def test_list_is_bare_array_with_filters(staff_client, skill_version, make_dispatcher, dispatch):
    one = create_task(skill="code-review", input={"n": 1})
    dispatched, _ = dispatch(one)
    create_task(skill="code-review", input={"n": 2}, origin="workflow")
    response = staff_client.get("/api/v1/tasks/")
    assert response.status_code == 200
    assert isinstance(response.json(), list)
    assert response["X-Total-Count"] == "2"
    assert "Link" in response
    by_status = staff_client.get("/api/v1/tasks/?status=dispatched").json()
    assert [t["guid"] for t in by_status] == [str(one.guid)]
    both = staff_client.get("/api/v1/tasks/?status=dispatched&status=queued").json()
    assert len(both) == 2
    assert len(staff_client.get("/api/v1/tasks/?origin=workflow").json()) == 1
    assert len(staff_client.get("/api/v1/tasks/?skill=code-review").json()) == 2
    assert len(staff_client.get("/api/v1/tasks/?skill=other").json()) == 0
    by_disp = staff_client.get(f"/api/v1/tasks/?dispatcher={dispatched.dispatcher.guid}").json()
    assert [t["guid"] for t in by_disp] == [str(one.guid)]
    assert len(staff_client.get("/api/v1/tasks/?created_after=2000-01-01T00:00:00Z").json()) == 2
    assert len(staff_client.get("/api/v1/tasks/?created_before=2000-01-01T00:00:00Z").json()) == 0
    assert staff_client.get("/api/v1/tasks/?status=bogus").status_code == 400
    assert staff_client.get("/api/v1/tasks/?created_after=yesterday").status_code == 400
    # Times whose UTC value falls off the calendar are invalid too, not a server error.
    for value in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        for name in ("created_after", "created_before"):
            refused = staff_client.get("/api/v1/tasks/", {name: value})
            assert refused.status_code == 400, (name, value)
            assert list(refused.json()) == [name]


def test_status_filter_reads_no_duplicates_and_ignores_an_empty_value(staff_client, skill_version):
    queued = create_task(skill="code-review")
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get("/api/v1/tasks/?status=queued&status=running")
    assert [t["guid"] for t in response.json()] == [str(queued.guid)]
    # No DISTINCT: PostgreSQL would sort every filtered row, on disk, for each page.
    assert not any("DISTINCT" in query["sql"] for query in queries.captured_queries)
    assert len(staff_client.get("/api/v1/tasks/?status=").json()) == 1


def test_version_filter_takes_positive_integers_only(staff_client, skill_version):
    SkillVersion.objects.create(
        skill=skill_version.skill, version_number=2, content_hash="b" * 64, size=1, storage_ref="x"
    )
    first = create_task(skill="code-review", version=1)
    second = create_task(skill="code-review", version=2)
    for query, expected in (("1", first), ("2", second), ("01", first)):
        response = staff_client.get(f"/api/v1/tasks/?version={query}")
        assert response.status_code == 200, response.content
        assert [t["guid"] for t in response.json()] == [str(expected.guid)]
    for bad in ("1.9", "0.5", "1.0", "0", "-1", "1e0", "one", "9" * 30):
        response = staff_client.get(f"/api/v1/tasks/?version={bad}")
        assert response.status_code == 400, (bad, response.content)
        assert list(response.json()) == ["version"], bad


def test_retrieve_and_events(staff_client, skill_version, dispatch):
    task = create_task(skill="code-review")
    dispatch(task)
    response = staff_client.get(f"/api/v1/tasks/{task.guid}/")
    assert response.status_code == 200
    assert response.json()["status"] == "dispatched"
    assert response.json()["dispatcher"]["name"] == "d1"
    events = staff_client.get(f"/api/v1/tasks/{task.guid}/events/").json()
    assert [e["kind"] for e in events] == ["created", "dispatched"]
    assert events[1]["from_status"] == "queued" and events[1]["attempt"] == 1
    assert (
        staff_client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/").status_code == 404
    )
    assert staff_client.get("/api/v1/tasks/not-a-uuid/").status_code == 404


def test_list_filters_do_not_apply_to_one_task(staff_client, skill_version):
    task = create_task(skill="code-review")
    for path in (f"/api/v1/tasks/{task.guid}/", f"/api/v1/tasks/{task.guid}/events/"):
        # A lookup by guid finds the task whatever list filters ride along; none is validated.
        assert staff_client.get(path, {"status": "running"}).status_code == 200
        assert staff_client.get(path, {"version": "-1"}).status_code == 200
    cancel = staff_client.post(f"/api/v1/tasks/{task.guid}/cancel/?status=running")
    assert cancel.status_code == 200


def test_cancel_queued_is_immediate(staff_client, skill_version):
    task = create_task(skill="code-review")
    response = staff_client.post(f"/api/v1/tasks/{task.guid}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = staff_client.post(f"/api/v1/tasks/{task.guid}/cancel/")
    assert again.status_code == 409
    kinds = list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))
    assert kinds == ["created", "cancelled"]


def test_cancel_dispatched_waits_for_dispatcher(staff_client, skill_version, dispatch):
    task = create_task(skill="code-review")
    dispatch(task)
    response = staff_client.post(f"/api/v1/tasks/{task.guid}/cancel/")
    assert response.status_code == 202
    assert response.json()["status"] == "dispatched"
    assert response.json()["cancel_requested_at"] is not None
    assert staff_client.post(f"/api/v1/tasks/{task.guid}/cancel/").status_code == 202
    kinds = list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))
    assert kinds.count("cancel_requested") == 1


def test_events_are_append_only(skill_version):
    task = create_task(skill="code-review")
    event = task.events.get()
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        TaskEvent.objects.filter(task=task).update(reason="x")
    with pytest.raises(TypeError):
        TaskEvent.objects.filter(task=task).delete()


def test_create_query_budget(staff_client, skill_version, django_assert_max_num_queries):
    # token auth 1, idempotency lookup 1, skill + version 2, savepoint/insert/event ~4,
    # NOTIFY on PostgreSQL 1.
    with django_assert_max_num_queries(9):
        response = post(staff_client, {"skill": "code-review"}, HTTP_IDEMPOTENCY_KEY="budget")
    assert response.status_code == 201


def test_list_query_budget(staff_client, skill_version, dispatch, django_assert_max_num_queries):
    for n in range(5):
        create_task(skill="code-review", input={"n": n})
    with django_assert_max_num_queries(4):
        response = staff_client.get("/api/v1/tasks/")
    assert len(response.json()) == 5


def _nested_lists(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("task_input", "where"),
    [
        ({"log": "a\x00b"}, "The string at input.log contains a NUL character"),
        ({"files": ["ok", "\ud800"]}, "The string at input.files[1] contains half of a surrogate"),
        ({"\x00": 1}, "A key in input contains a NUL character"),
        ({"ratio": float("inf")}, "Holds a number JSON cannot hold"),
        ({"ratio": [float("nan")]}, "Holds a number JSON cannot hold"),
        ({"count": 10**5000}, "Holds a number JSON cannot hold"),
        ({"tree": _nested_lists(64)}, "Nested more than 64 levels deep"),
        ({"tree": _nested_lists(5000)}, "Nested more than 64 levels deep"),
    ],
)
def test_create_task_refuses_what_no_json_column_can_hold(skill_version, task_input, where):
    """Host code calling the service directly gets the API's answer, not a database error."""
    from rest_framework.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        create_task(skill="code-review", input=task_input)
    assert any(where in str(message) for message in caught.value.detail["input"])
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [({"backend": "local\n"}, "backend"), ({"labels": {"gpu\n": "a100"}}, "labels")],
)
def test_create_task_from_host_code_refuses_a_final_newline(skill_version, options, field):
    """A regex anchored with "$" alone lets a final newline through; the rules do not."""
    from rest_framework.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        create_task(skill="code-review", **options)
    assert field in caught.value.detail
    assert not Task.objects.exists()


def test_times_are_iso_8601_whatever_the_hosts_drf_date_format(
    staff_client, skill_version, settings
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DATETIME_FORMAT": "%d/%m/%Y"}
    task = create_task(skill="code-review")
    [listed] = staff_client.get("/api/v1/tasks/").json()
    assert listed["created_at"] == task.created_at.isoformat().replace("+00:00", "Z")
