"""The operators' dispatcher API: list and filters, retrieve, PATCH, DELETE, rotate-secret."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from kohakku_controller import signals
from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.dispatchers.secrets import current_signing_secret, valid_signing_secrets

from .conftest import CHECKIN_URL, LIST_URL, checkin_body, detail_url, heartbeat_url, rotate_url

pytestmark = pytest.mark.django_db

DISPATCHER_FIELDS = {
    "guid",
    "name",
    "slug",
    "status",
    "endpoint_url",
    "cloud",
    "backends",
    "labels",
    "heartbeat_interval_seconds",
    "capacity",
    "enabled",
    "draining",
    "version",
    "metadata",
    "application",
    "first_checkin_at",
    "last_checkin_at",
    "last_heartbeat_at",
    "lost_at",
    "reported_free_capacity",
    "reported_running_tasks",
    "busy_until",
    "previous_secret_valid_until",
}


@pytest.fixture
def fleet(register):
    """Five dispatchers, one per status plus a second cloud and backend mix."""
    now = timezone.now()
    rows = {
        "aws-gpu": register(
            "aws-gpu", cloud="aws", backends=["k8s", "local"], labels={"gpu": "a100", "zone": "eu"}
        ),
        "aws-cpu": register("aws-cpu", cloud="aws", backends=["k8s"], labels={"zone": "eu"}),
        "gcp-gpu": register(
            "gcp-gpu",
            cloud="gcp",
            backends=["local"],
            labels={"gpu": "h100", "kubernetes.io/arch": "arm64", "a__b": "c"},
        ),
        "old": register("old", cloud="local", backends=["local"], heartbeat_interval_seconds=10),
        "off": register("off", cloud="local", backends=["docker"]),
    }
    Dispatcher.objects.filter(name="old").update(last_heartbeat_at=now - timedelta(seconds=31))
    Dispatcher.objects.filter(name="aws-cpu").update(draining=True)
    Dispatcher.objects.filter(name="off").update(enabled=False)
    return rows


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["name"] for item in response.json()]


def test_list_is_a_bare_array_with_link_pagination(staff_client, fleet):
    response = staff_client.get(LIST_URL, {"page_size": 2})
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [item["name"] for item in body] == ["aws-cpu", "aws-gpu"]
    assert set(body[0]) == DISPATCHER_FIELDS
    assert response["X-Total-Count"] == "5"
    assert 'rel="next"' in response["Link"]
    assert names(staff_client.get(LIST_URL, {"page_size": 2, "page": 3})) == ["old"]


def test_representation(staff_client, fleet, dispatcher_client):
    gpu = fleet["aws-gpu"]
    body = staff_client.get(detail_url(gpu.guid)).json()
    assert body["guid"] == str(gpu.guid)
    assert body["status"] == "online"
    assert body["backends"] == ["k8s", "local"]
    assert body["labels"] == {"gpu": "a100", "zone": "eu"}
    assert body["application"] == {
        "client_id": dispatcher_client.application.client_id,
        "name": "dispatcher-client",
    }
    statuses = {item["name"]: item["status"] for item in staff_client.get(LIST_URL).json()}
    assert statuses == {
        "aws-cpu": "draining",
        "aws-gpu": "online",
        "gcp-gpu": "online",
        "off": "disabled",
        "old": "offline",
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "online"}, ["aws-gpu", "gcp-gpu"]),
        ({"status": "offline"}, ["old"]),
        ({"status": "draining"}, ["aws-cpu"]),
        ({"status": "disabled"}, ["off"]),
        ({"backend": "k8s"}, ["aws-cpu", "aws-gpu"]),
        ({"backend": "local"}, ["aws-gpu", "gcp-gpu", "old"]),
        ({"backend": "loc"}, []),
        ({"cloud": "aws"}, ["aws-cpu", "aws-gpu"]),
        ({"label": "gpu=a100"}, ["aws-gpu"]),
        ({"label": "zone=eu"}, ["aws-cpu", "aws-gpu"]),
        ({"label": ["zone=eu", "gpu=a100"]}, ["aws-gpu"]),
        ({"label": ["zone=eu", "gpu=h100"]}, []),
        ({"label": "gpu="}, []),
        ({"label": "kubernetes.io/arch=arm64"}, ["gcp-gpu"]),
        ({"label": "a__b=c"}, ["gcp-gpu"]),
        ({"label": "a=c"}, []),
        ({"search": "GPU"}, ["aws-gpu", "gcp-gpu"]),
        ({"status": "online", "cloud": "aws", "backend": "local"}, ["aws-gpu"]),
    ],
)
def test_filters(staff_client, fleet, params, expected):
    assert names(staff_client.get(LIST_URL, params)) == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "sleeping"}, "status"),
        ({"label": "gpu"}, "label"),
        ({"label": "bad key=x"}, "label"),
        ({"label": ["gpu=a100", "gpu=h100"]}, "label"),
        ({"label": "zone=eu\x00"}, "label"),  # PostgreSQL refuses NUL in jsonb: was a 500
        ({"backend": "BAD!"}, "backend"),  # no check-in accepts it: was an empty 200
        ({"backend": "local\n"}, "backend"),
    ],
)
def test_bad_filter_is_400_naming_it(staff_client, fleet, params, field):
    response = staff_client.get(LIST_URL, params)
    assert response.status_code == 400
    assert field in response.json()


def test_list_query_count_does_not_grow_with_rows(
    staff_client, register, django_assert_num_queries
):
    for index in range(3):
        register(f"d-{index}")
    with django_assert_num_queries(3):  # token, count, page
        assert len(staff_client.get(LIST_URL).json()) == 3
    for index in range(3, 40):
        register(f"d-{index}")
    with django_assert_num_queries(3):
        assert len(staff_client.get(LIST_URL).json()) == 40
    with django_assert_num_queries(3):  # the status is a condition of the same two queries
        assert len(staff_client.get(LIST_URL, {"status": "online"}).json()) == 40


def test_retrieve_unknown_or_malformed_guid_is_json_404(staff_client, fleet):
    for guid in (uuid.uuid4(), "nope"):
        response = staff_client.get(detail_url(guid))
        assert response.status_code == 404
        assert "detail" in response.json()


def test_secrets_never_appear_in_list_or_retrieve(staff_client, dispatcher_client):
    answer = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json").json()
    dispatcher = Dispatcher.objects.get()
    rotated = services.rotate_signing_secret(dispatcher)
    for response in (
        staff_client.get(LIST_URL),
        staff_client.get(detail_url(answer["dispatcher_guid"])),
    ):
        text = response.content.decode()
        assert answer["signing_secret"] not in text
        assert rotated not in text
        assert dispatcher.signing_secret_encrypted not in text
        assert dispatcher.previous_signing_secret_encrypted not in text
        assert "signing_secret" not in text


def test_secrets_never_appear_in_logs(dispatcher_client, staff_client, caplog):
    caplog.set_level(logging.DEBUG)
    answer = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json").json()
    rotated = dispatcher_client.post(
        CHECKIN_URL, checkin_body(rotate_secret=True), format="json"
    ).json()
    guid = answer["dispatcher_guid"]
    by_operator = staff_client.post(rotate_url(guid)).json()
    dispatcher_client.post(heartbeat_url(guid))
    services.mark_lost_dispatchers(timezone.now() + timedelta(days=1))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "rotated" in logged and "lost" in logged
    for secret in (
        answer["signing_secret"],
        rotated["signing_secret"],
        by_operator["signing_secret"],
    ):
        assert secret not in logged


# --- PATCH -----------------------------------------------------------------------------------


def test_patch_changes_operator_controls(staff_client, fleet):
    gpu = fleet["aws-gpu"]
    response = staff_client.patch(
        detail_url(gpu.guid), {"draining": True, "capacity": 16}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "draining"
    assert response.json()["capacity"] == 16
    gpu.refresh_from_db()
    assert (gpu.draining, gpu.capacity, gpu.enabled) == (True, 16, True)
    response = staff_client.patch(detail_url(gpu.guid), {"enabled": False}, format="json")
    assert response.json()["status"] == "disabled"
    response = staff_client.patch(
        detail_url(gpu.guid), {"enabled": True, "draining": False}, format="json"
    )
    assert response.json()["status"] == "online"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "renamed"}, "name"),
        ({"slug": "x"}, "slug"),
        ({"endpoint_url": "http://elsewhere"}, "endpoint_url"),
        ({"labels": {}}, "labels"),
        ({"status": "online"}, "status"),
        ({"enabled": "false"}, "enabled"),
        ({"draining": 1}, "draining"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": "8"}, "capacity"),
        ({"capacity": 10_001}, "capacity"),
    ],
)
def test_patch_refuses_other_fields_and_bad_types(staff_client, fleet, body, field):
    gpu = fleet["aws-gpu"]
    before = Dispatcher.objects.values().get(pk=gpu.pk)
    response = staff_client.patch(detail_url(gpu.guid), {"enabled": False, **body}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Dispatcher.objects.values().get(pk=gpu.pk) == before


def test_a_change_answers_the_row_as_it_left_it(staff_client, fleet, monkeypatch):
    # Another request disables the dispatcher after this PATCH read it and before it
    # writes: the answer shows both changes, not the row as this request first read it.
    gpu = fleet["aws-gpu"]
    change = services.set_dispatcher_controls

    def after_another_request(dispatcher, **changes):
        Dispatcher.objects.filter(pk=dispatcher.pk).update(enabled=False)
        return change(dispatcher, **changes)

    monkeypatch.setattr(services, "set_dispatcher_controls", after_another_request)
    response = staff_client.patch(detail_url(gpu.guid), {"capacity": 9}, format="json")
    assert response.status_code == 200
    answer = response.json()
    assert (answer["capacity"], answer["enabled"], answer["status"]) == (9, False, "disabled")


def test_put_is_not_allowed(staff_client, fleet):
    response = staff_client.put(detail_url(fleet["old"].guid), {"capacity": 2}, format="json")
    assert response.status_code == 405


# --- DELETE ---------------------------------------------------------------------------------


@pytest.fixture
def unfinished_tasks():
    """Stand-in for the tasks domain: a receiver that reports unfinished tasks."""
    calls = []
    counts = {"value": 0}

    def receiver(sender, dispatcher, force, **kwargs):
        calls.append((dispatcher.name, force))
        return counts["value"]

    def not_a_count(sender, **kwargs):
        return None

    signals.dispatcher_deleting.connect(receiver)
    signals.dispatcher_deleting.connect(not_a_count)
    yield counts, calls
    signals.dispatcher_deleting.disconnect(receiver)
    signals.dispatcher_deleting.disconnect(not_a_count)


def test_delete_without_unfinished_tasks(staff_client, fleet, unfinished_tasks):
    _counts, calls = unfinished_tasks
    response = staff_client.delete(detail_url(fleet["old"].guid))
    assert response.status_code == 204
    assert not Dispatcher.objects.filter(name="old").exists()
    assert calls == [("old", False)]


def test_delete_with_unfinished_tasks_is_409_unless_forced(staff_client, fleet, unfinished_tasks):
    counts, calls = unfinished_tasks
    counts["value"] = 3
    response = staff_client.delete(detail_url(fleet["old"].guid))
    assert response.status_code == 409
    assert "3 unfinished tasks" in response.json()["detail"]
    assert Dispatcher.objects.filter(name="old").exists()
    response = staff_client.delete(detail_url(fleet["old"].guid), QUERY_STRING="force=true")
    assert response.status_code == 204
    assert not Dispatcher.objects.filter(name="old").exists()
    assert calls == [("old", False), ("old", True)]


def test_delete_sums_the_receivers(fleet, unfinished_tasks):
    counts, _calls = unfinished_tasks
    counts["value"] = 1

    def another(sender, **kwargs):
        return 2

    signals.dispatcher_deleting.connect(another)
    try:
        from kohakku_controller.exceptions import Conflict

        with pytest.raises(Conflict, match="3 unfinished tasks"):
            services.delete_dispatcher(fleet["old"])
    finally:
        signals.dispatcher_deleting.disconnect(another)
    assert Dispatcher.objects.filter(name="old").exists()


@pytest.mark.parametrize("value", ["maybe", "2", "TRUE!"])
def test_delete_with_a_bad_force_value_is_400(staff_client, fleet, value):
    response = staff_client.delete(detail_url(fleet["old"].guid), QUERY_STRING=f"force={value}")
    assert response.status_code == 400
    assert "force" in response.json()
    assert Dispatcher.objects.filter(name="old").exists()


def test_delete_unknown_is_404(staff_client):
    assert staff_client.delete(detail_url(uuid.uuid4())).status_code == 404


# --- rotate-secret --------------------------------------------------------------------------


def test_rotate_secret_returns_the_new_secret_once(staff_client, dispatcher_client):
    old = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json").json()
    guid = old["dispatcher_guid"]
    response = staff_client.post(rotate_url(guid), {"grace_seconds": 120}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"dispatcher_guid", "signing_secret", "previous_secret_valid_until"}
    assert body["dispatcher_guid"] == guid
    assert response["Cache-Control"] == "no-store"
    dispatcher = Dispatcher.objects.get()
    assert current_signing_secret(dispatcher) == body["signing_secret"]
    assert valid_signing_secrets(dispatcher) == [body["signing_secret"], old["signing_secret"]]
    after_grace = dispatcher.previous_secret_valid_until + timedelta(seconds=1)
    assert valid_signing_secrets(dispatcher, after_grace) == [body["signing_secret"]]
    assert body["signing_secret"] not in staff_client.get(detail_url(guid)).content.decode()


def test_rotate_secret_with_zero_grace_drops_the_old_one(staff_client, register):
    dispatcher = register()
    body = staff_client.post(rotate_url(dispatcher.guid), {"grace_seconds": 0}, format="json")
    assert body.json()["previous_secret_valid_until"] is None
    dispatcher.refresh_from_db()
    assert valid_signing_secrets(dispatcher) == [body.json()["signing_secret"]]


def test_rotate_secret_default_grace_comes_from_settings(staff_client, register, settings):
    settings.KOHAKKU_CONTROLLER = {"SECRET_ROTATION_GRACE_SECONDS": 90}
    dispatcher = register()
    before = timezone.now()
    staff_client.post(rotate_url(dispatcher.guid))
    dispatcher.refresh_from_db()
    grace = dispatcher.previous_secret_valid_until - before
    assert timedelta(seconds=89) < grace <= timedelta(seconds=91)


def test_second_rotation_drops_the_oldest_secret(register):
    dispatcher = register()
    first = current_signing_secret(dispatcher)
    second = services.rotate_signing_secret(dispatcher)
    third = services.rotate_signing_secret(dispatcher)
    dispatcher.refresh_from_db()
    assert valid_signing_secrets(dispatcher) == [third, second]
    assert first not in valid_signing_secrets(dispatcher)


@pytest.mark.parametrize(
    "body", [{"grace_seconds": -1}, {"grace_seconds": "60"}, {"grace": 60}, {"grace_seconds": 1e9}]
)
def test_rotate_secret_bad_body_is_400(staff_client, register, body):
    dispatcher = register()
    before = dispatcher.signing_secret_encrypted
    response = staff_client.post(rotate_url(dispatcher.guid), body, format="json")
    assert response.status_code == 400
    assert set(response.json()) & {"grace_seconds", "grace"}
    dispatcher.refresh_from_db()
    assert dispatcher.signing_secret_encrypted == before


# --- who may use the operator API ------------------------------------------------------------


def test_oauth2_clients_are_refused_everywhere_but_checkin_and_heartbeat(oauth_client, fleet):
    client = oauth_client(
        "dispatchers",
        "tasks:read",
        "tasks:write",
        "skills:read",
        "skills:write",
        "workflows:read",
        "workflows:write",
    )
    guid = fleet["aws-gpu"].guid
    assert client.get(LIST_URL).status_code == 403
    assert client.get(detail_url(guid)).status_code == 403
    assert client.patch(detail_url(guid), {"enabled": False}, format="json").status_code == 403
    assert client.post(rotate_url(guid)).status_code == 403
    assert client.delete(detail_url(guid), QUERY_STRING="force=true").status_code == 403
    assert Dispatcher.objects.get(pk=fleet["aws-gpu"].pk).enabled


def test_unauthenticated_is_401(api_client, fleet):
    assert api_client.get(LIST_URL).status_code == 401
    assert api_client.delete(detail_url(fleet["old"].guid)).status_code == 401


def test_operators_need_model_permissions(token_client, fleet):
    guid = fleet["aws-gpu"].guid
    nobody = token_client("nobody")
    assert nobody.get(LIST_URL).status_code == 403
    viewer = token_client("viewer", perms=("kohakku_controller.view_dispatcher",))
    assert viewer.get(LIST_URL).status_code == 200
    assert viewer.get(detail_url(guid)).status_code == 200
    assert viewer.patch(detail_url(guid), {"draining": True}, format="json").status_code == 403
    assert viewer.post(rotate_url(guid)).status_code == 403
    assert viewer.delete(detail_url(guid)).status_code == 403
    changer = token_client("changer", perms=("kohakku_controller.change_dispatcher",))
    assert changer.patch(detail_url(guid), {"draining": True}, format="json").status_code == 200
    assert changer.post(rotate_url(guid)).status_code == 200
    assert changer.delete(detail_url(guid)).status_code == 403
    deleter = token_client("deleter", perms=("kohakku_controller.delete_dispatcher",))
    assert deleter.delete(detail_url(guid)).status_code == 204
