"""POST /api/v1/dispatchers/{guid}/heartbeat/: server-clock stamp, ownership, constant cost."""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.test import override_settings
from django.utils import timezone
from rest_framework.exceptions import NotFound

from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher

from .conftest import heartbeat_url

pytestmark = pytest.mark.django_db


def _age(dispatcher: Dispatcher, seconds: int) -> None:
    """Pretend the last heartbeat happened ``seconds`` ago."""
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_heartbeat_answers_the_seed_body_and_stamps_server_time(dispatcher_client, register):
    dispatcher = register()
    _age(dispatcher, 3600)
    before = timezone.now()
    response = dispatcher_client.post(heartbeat_url(dispatcher.guid))
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "dispatcher_guid": str(dispatcher.guid)}
    dispatcher.refresh_from_db()
    assert before <= dispatcher.last_heartbeat_at <= timezone.now()
    assert dispatcher.status() == "online"


def test_heartbeat_answers_the_canonical_guid_however_the_url_spells_it(
    dispatcher_client, register
):
    dispatcher = register()
    for spelling in (str(dispatcher.guid).upper(), dispatcher.guid.hex):
        response = dispatcher_client.post(f"/api/v1/dispatchers/{spelling}/heartbeat/")
        assert response.status_code == 200, response.content
        assert response.json() == {"status": "ok", "dispatcher_guid": str(dispatcher.guid)}


def test_heartbeat_stores_running_tasks_and_free_capacity(dispatcher_client, register):
    dispatcher = register()
    tasks = [str(uuid.uuid4()), str(uuid.uuid4()).upper()]
    response = dispatcher_client.post(
        heartbeat_url(dispatcher.guid),
        {"running_tasks": tasks, "free_capacity": 2},
        format="json",
    )
    assert response.status_code == 200
    dispatcher.refresh_from_db()
    assert dispatcher.reported_task_guids == [tasks[0], tasks[1].lower()]
    assert dispatcher.reported_free_capacity == 2
    # A guid listed twice (in any spelling) is stored once.
    twice = {"running_tasks": [tasks[1], tasks[0], tasks[1].lower()], "free_capacity": 2}
    dispatcher_client.post(heartbeat_url(dispatcher.guid), twice, format="json")
    dispatcher.refresh_from_db()
    assert dispatcher.reported_task_guids == [tasks[1].lower(), tasks[0]]
    # A heartbeat that omits them: free capacity unknown, the task list is kept.
    dispatcher_client.post(heartbeat_url(dispatcher.guid), {}, format="json")
    dispatcher.refresh_from_db()
    assert dispatcher.reported_free_capacity is None
    assert dispatcher.reported_task_guids == [tasks[1].lower(), tasks[0]]
    dispatcher_client.post(heartbeat_url(dispatcher.guid), {"running_tasks": []}, format="json")
    dispatcher.refresh_from_db()
    assert dispatcher.reported_task_guids == []


def test_client_clock_is_ignored(dispatcher_client, register):
    dispatcher = register()
    response = dispatcher_client.post(
        heartbeat_url(dispatcher.guid), {"timestamp": "2099-01-01T00:00:00Z"}, format="json"
    )
    assert response.status_code == 400
    assert "timestamp" in response.json()


def test_heartbeat_clears_lost(dispatcher_client, register):
    dispatcher = register()
    _age(dispatcher, 10_000)
    assert [d.pk for d in services.mark_lost_dispatchers()] == [dispatcher.pk]
    dispatcher_client.post(heartbeat_url(dispatcher.guid))
    dispatcher.refresh_from_db()
    assert dispatcher.lost_at is None


def test_a_method_the_endpoint_lacks_is_405_for_a_dispatcher(
    dispatcher_client, api_client, register
):
    dispatcher = register()
    response = dispatcher_client.get(heartbeat_url(dispatcher.guid))
    assert response.status_code == 405
    assert response["Allow"] == "POST, OPTIONS"
    # Without credentials: 401 first, as everywhere.
    assert api_client.get(heartbeat_url(dispatcher.guid)).status_code == 401


def test_unknown_guid_is_404(dispatcher_client, register):
    register()
    response = dispatcher_client.post(heartbeat_url(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json() == {"detail": "No such dispatcher."}


@pytest.mark.parametrize("guid", ["not-a-uuid", "1234", "checkin"])
def test_malformed_guid_is_json_404(dispatcher_client, guid):
    response = dispatcher_client.post(heartbeat_url(guid))
    assert response.status_code == 404
    assert response.json() == {"detail": "No such dispatcher."}


def test_other_applications_dispatcher_is_403(dispatcher_client, oauth_client, register):
    dispatcher = register()
    _age(dispatcher, 3600)
    intruder = oauth_client("dispatchers", name="intruder")
    response = intruder.post(heartbeat_url(dispatcher.guid))
    assert response.status_code == 403
    assert "another client" in response.json()["detail"]
    dispatcher.refresh_from_db()
    assert dispatcher.status() == "offline"


def test_unauthenticated_is_401(api_client, register):
    dispatcher = register()
    assert api_client.post(heartbeat_url(dispatcher.guid)).status_code == 401


def test_wrong_scope_and_operator_tokens_are_403(oauth_client, staff_client, register):
    dispatcher = register()
    _age(dispatcher, 3600)
    assert oauth_client("tasks:write").post(heartbeat_url(dispatcher.guid)).status_code == 403
    assert staff_client.post(heartbeat_url(dispatcher.guid)).status_code == 403
    dispatcher.refresh_from_db()
    assert dispatcher.status() == "offline"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"running_tasks": "abc"}, "running_tasks"),
        ({"running_tasks": ["not-a-uuid"]}, "running_tasks"),
        ({"running_tasks": [123]}, "running_tasks"),
        ({"running_tasks": {"a": 1}}, "running_tasks"),
        ({"free_capacity": -1}, "free_capacity"),
        ({"free_capacity": "3"}, "free_capacity"),
        ({"free_capacity": 1.5}, "free_capacity"),
        ({"free_capacity": True}, "free_capacity"),
        ({"free_capacity": 10_001}, "free_capacity"),
        ({"running_task_guids": []}, "running_task_guids"),
    ],
)
def test_bad_heartbeat_body_is_400_and_does_not_stamp(dispatcher_client, register, body, field):
    dispatcher = register()
    _age(dispatcher, 3600)
    response = dispatcher_client.post(heartbeat_url(dispatcher.guid), body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    dispatcher.refresh_from_db()
    assert dispatcher.status() == "offline"


def test_too_many_running_tasks_is_400(dispatcher_client, register):
    dispatcher = register()
    body = {"running_tasks": [str(uuid.uuid4()) for _ in range(10_001)]}
    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_BODY_BYTES": 1_000_000}):
        response = dispatcher_client.post(heartbeat_url(dispatcher.guid), body, format="json")
    assert response.status_code == 400
    assert "running_tasks" in response.json()


def test_too_many_running_tasks_are_refused_by_their_count_before_any_guid_is_checked(
    dispatcher_client, register
):
    dispatcher = register()
    body = {"running_tasks": ["not-a-guid", *(str(uuid.uuid4()) for _ in range(10_000))]}
    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_BODY_BYTES": 1_000_000}):
        response = dispatcher_client.post(heartbeat_url(dispatcher.guid), body, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "running_tasks": ["Ensure this field has no more than 10000 elements."]
    }


def test_a_body_shorter_than_its_content_length_is_400_and_does_not_stamp(
    dispatcher_client, register
):
    # The client closed its side early: what arrived is not the request it announced.
    dispatcher = register()
    _age(dispatcher, 3600)
    body = b'{"free_capacity": 3}'
    response = dispatcher_client.generic(
        "POST",
        heartbeat_url(dispatcher.guid),
        body,
        content_type="application/json",
        CONTENT_LENGTH="100",
        **{"wsgi.input": io.BytesIO(body)},
    )
    assert response.status_code == 400
    assert response.json() == {
        "detail": "The request body ended after 20 of the 100 bytes its Content-Length announced."
    }
    dispatcher.refresh_from_db()
    assert (dispatcher.status(), dispatcher.reported_free_capacity) == ("offline", None)


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip", "GZIP"])
def test_a_body_in_a_content_coding_is_415_and_does_not_stamp(
    dispatcher_client, register, encoding
):
    # Even when the body is plain JSON: it claims a coding the API does not read.
    dispatcher = register()
    _age(dispatcher, 3600)
    response = dispatcher_client.post(
        heartbeat_url(dispatcher.guid),
        {"free_capacity": 3},
        format="json",
        HTTP_CONTENT_ENCODING=encoding,
    )
    assert response.status_code == 415
    assert response.json() == {
        "detail": f"Content-Encoding {encoding!r} is not supported; send the body uncompressed."
    }
    dispatcher.refresh_from_db()
    assert dispatcher.status() == "offline"


def test_identity_content_coding_is_accepted(dispatcher_client, register):
    dispatcher = register()
    response = dispatcher_client.post(
        heartbeat_url(dispatcher.guid), {}, format="json", HTTP_CONTENT_ENCODING="identity"
    )
    assert response.status_code == 200


def test_malformed_json_is_400(dispatcher_client, register):
    dispatcher = register()
    response = dispatcher_client.post(
        heartbeat_url(dispatcher.guid), b"{", content_type="application/json"
    )
    assert response.status_code == 400


def test_body_over_the_cap_is_413(dispatcher_client, register):
    dispatcher = register()
    body = json.dumps({"running_tasks": [str(uuid.uuid4())] * 100})
    with override_settings(KOHAKKU_CONTROLLER={"MAX_JSON_BODY_BYTES": 1000}):
        response = dispatcher_client.post(
            heartbeat_url(dispatcher.guid), body, content_type="application/json"
        )
    assert response.status_code == 413


def test_heartbeat_costs_two_queries(dispatcher_client, register, django_assert_num_queries):
    # The budget is three; it costs two: the token lookup and one UPDATE.
    for index in range(20):
        register(f"other-{index}")
    dispatcher = register()
    body = {"running_tasks": [str(uuid.uuid4()) for _ in range(50)], "free_capacity": 1}
    with django_assert_num_queries(2):
        response = dispatcher_client.post(heartbeat_url(dispatcher.guid), body, format="json")
    assert response.status_code == 200
    with django_assert_num_queries(2):
        response = dispatcher_client.post(heartbeat_url(dispatcher.guid))
    assert response.status_code == 200


def test_refused_heartbeats_cost_at_most_three_queries(
    dispatcher_client, oauth_client, register, django_assert_max_num_queries
):
    dispatcher = register()
    intruder = oauth_client("dispatchers", name="intruder")
    with django_assert_max_num_queries(3):
        assert intruder.post(heartbeat_url(dispatcher.guid)).status_code == 403
    with django_assert_max_num_queries(3):
        assert dispatcher_client.post(heartbeat_url(uuid.uuid4())).status_code == 404


def test_service_contract(dispatcher_client, oauth_client, register, django_assert_num_queries):
    dispatcher = register()
    _age(dispatcher, 3600)
    task = uuid.uuid4()
    with django_assert_num_queries(1):  # one conditional UPDATE, nothing read back
        returned = services.record_heartbeat(
            guid=str(dispatcher.guid),
            application=dispatcher_client.application,
            running_task_guids=[task],
            free_capacity=3,
        )
    assert returned is None
    stored = Dispatcher.objects.get(pk=dispatcher.pk)
    assert stored.last_heartbeat_at.tzinfo is not None
    assert timezone.now() - stored.last_heartbeat_at < timedelta(seconds=5)
    assert stored.lost_at is None
    assert stored.status() == "online"
    assert stored.reported_task_guids == [str(task)]
    assert stored.reported_free_capacity == 3
    assert stored.labels == {} and stored.backends == ["local"]  # untouched
    from rest_framework.exceptions import NotFound, PermissionDenied

    with pytest.raises(NotFound):
        services.record_heartbeat(guid=uuid.uuid4(), application=dispatcher_client.application)
    with pytest.raises(NotFound):
        services.record_heartbeat(guid="not-a-uuid", application=dispatcher_client.application)
    with pytest.raises(PermissionDenied):
        services.record_heartbeat(
            guid=dispatcher.guid, application=oauth_client("dispatchers").application
        )
    assert Dispatcher.objects.get(pk=dispatcher.pk).reported_free_capacity == 3


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_heartbeat_outside_a_transaction_stamps_the_row(dispatcher_client, register):
    """The heartbeat's own statement (on PostgreSQL, committed without waiting for the disk)."""
    dispatcher, other = register(), register("other")
    _age(dispatcher, 3600)
    _age(other, 3600)
    assert not connection.in_atomic_block
    services.record_heartbeat(
        guid=dispatcher.guid, application=dispatcher_client.application, free_capacity=2
    )
    stored = Dispatcher.objects.get(pk=dispatcher.pk)
    assert timezone.now() - stored.last_heartbeat_at < timedelta(seconds=5)
    assert stored.reported_free_capacity == 2
    untouched = Dispatcher.objects.get(pk=other.pk)
    assert timezone.now() - untouched.last_heartbeat_at > timedelta(seconds=3000)
    with pytest.raises(NotFound):
        services.record_heartbeat(guid=uuid.uuid4(), application=dispatcher_client.application)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_asynchronous_commit_does_not_outlive_the_heartbeat(dispatcher_client, register):
    """Statements after a heartbeat, on the same connection, commit synchronously again."""
    dispatcher = register()
    assert _synchronous_commit() == "on"
    services.record_heartbeat(guid=dispatcher.guid, application=dispatcher_client.application)
    assert _synchronous_commit() == "on"


@pytest.mark.postgres
def test_a_heartbeat_inside_a_transaction_leaves_its_commit_synchronous(
    dispatcher_client, register
):
    dispatcher = register()
    with transaction.atomic():
        services.record_heartbeat(guid=dispatcher.guid, application=dispatcher_client.application)
        assert _synchronous_commit() == "on"


def test_dispatcher_without_an_owner(dispatcher_client):
    """Checked in by the controller itself (application=None): only such callers may beat."""
    from rest_framework.exceptions import PermissionDenied

    from .conftest import checkin_body

    dispatcher = services.checkin(application=None, data=checkin_body("system")).dispatcher
    assert dispatcher.application_id is None
    services.record_heartbeat(guid=dispatcher.guid, application=None)
    assert Dispatcher.objects.get(pk=dispatcher.pk).last_heartbeat_at is not None
    with pytest.raises(PermissionDenied):
        services.record_heartbeat(guid=dispatcher.guid, application=dispatcher_client.application)
    assert dispatcher_client.post(heartbeat_url(dispatcher.guid)).status_code == 403


def test_a_database_outage_answers_503_and_writes_nothing(dispatcher_client, register):
    dispatcher = register()
    before = Dispatcher.objects.get(pk=dispatcher.pk).last_heartbeat_at

    def dropped(execute, sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    with connection.execute_wrapper(dropped):
        response = dispatcher_client.post(heartbeat_url(dispatcher.guid))
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json() == {"detail": "The database is unavailable; try again shortly."}
    assert Dispatcher.objects.get(pk=dispatcher.pk).last_heartbeat_at == before
    assert dispatcher_client.post(heartbeat_url(dispatcher.guid)).status_code == 200
