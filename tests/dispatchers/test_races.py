"""Concurrency on PostgreSQL: racing check-ins, loss detection and rotations, with threads."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.exceptions import NotFound
from rest_framework.test import APIClient

from kohakku_controller import signals
from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.dispatchers.secrets import valid_signing_secrets

from ..concurrency import run_together
from .conftest import CHECKIN_URL, checkin_body, detail_url, rotate_url

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_twenty_concurrent_checkins_of_one_name_make_one_dispatcher(dispatcher_client):
    authorization = dispatcher_client._credentials["HTTP_AUTHORIZATION"]

    def check_in(index: int) -> tuple[int, dict[str, Any]]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=authorization)
        response = client.post(CHECKIN_URL, checkin_body(capacity=index + 1), format="json")
        return response.status_code, response.json()

    results = run_together(20, check_in)
    assert all(isinstance(result, tuple) for result in results), results
    actions = Counter(body["action"] for _, body in results)
    assert actions == {"created": 1, "updated": 19}
    assert Counter(code for code, _ in results) == {201: 1, 200: 19}
    assert Dispatcher.objects.count() == 1
    dispatcher = Dispatcher.objects.get()
    assert {body["dispatcher_guid"] for _, body in results} == {str(dispatcher.guid)}
    secrets = [body["signing_secret"] for _, body in results if "signing_secret" in body]
    assert len(secrets) == 1
    assert valid_signing_secrets(dispatcher) == secrets


def test_concurrent_checkins_of_names_with_one_slug_get_distinct_slugs(dispatcher_client):
    names = ["gpu box", "GPU box", "gpu-box", "Gpu Box", "GPU-BOX", "gpu box!", "gpu box?",
             "gpu box.", "!gpu box", "gpu  box"]  # fmt: skip

    def check_in(index: int) -> services.CheckinResult:
        return services.checkin(
            application=dispatcher_client.application, data=checkin_body(names[index])
        )

    results = run_together(len(names), check_in)
    assert all(isinstance(result, services.CheckinResult) for result in results), results
    assert all(result.action == "created" for result in results)
    slugs = sorted(Dispatcher.objects.values_list("slug", flat=True))
    assert len(slugs) == len(set(slugs)) == len(names)
    assert all(slug.startswith("gpu-box") for slug in slugs)


def test_concurrent_loss_detection_records_each_outage_once(register):
    for index in range(10):
        register(f"d-{index}", heartbeat_interval_seconds=10)
    later = timezone.now() + timedelta(minutes=1)
    signalled = []
    lock = threading.Lock()

    def receiver(sender, dispatcher, **kwargs):
        with lock:
            signalled.append(dispatcher.name)

    signals.dispatcher_lost.connect(receiver)
    try:
        results = run_together(4, lambda _index: services.mark_lost_dispatchers(later))
    finally:
        signals.dispatcher_lost.disconnect(receiver)
    assert all(isinstance(result, list) for result in results), results
    marked = [dispatcher.name for result in results for dispatcher in result]
    assert sorted(marked) == sorted(f"d-{index}" for index in range(10))
    assert sorted(signalled) == sorted(marked)
    assert set(Dispatcher.objects.values_list("lost_at", flat=True)) == {later}


def test_concurrent_rotations_all_succeed_and_keep_one_previous(register):
    dispatcher = register()

    def rotate(_index: int) -> str:
        return services.rotate_signing_secret(Dispatcher.objects.get(pk=dispatcher.pk))

    results = run_together(8, rotate)
    assert all(isinstance(result, str) for result in results), results
    dispatcher.refresh_from_db()
    current, previous = valid_signing_secrets(dispatcher)
    assert current in results and previous in results and current != previous


def test_heartbeats_racing_a_checkin_update_all_land(dispatcher_client, register):
    dispatcher = register()
    application = dispatcher_client.application

    def work(index: int) -> Any:
        if index == 0:
            return services.checkin(application=application, data=checkin_body(capacity=7))
        return services.record_heartbeat(
            guid=dispatcher.guid, application=application, free_capacity=index
        )

    results = run_together(10, work)
    assert not [result for result in results if isinstance(result, Exception)], results
    dispatcher.refresh_from_db()
    assert dispatcher.capacity == 7
    assert dispatcher.status() == "online"


def _operator_requests(staff_client: APIClient, requests: list[tuple[str, str, Any]]) -> list[Any]:
    """Send ``(method, url, body)`` requests as staff, all at once; their status codes."""
    authorization = staff_client._credentials["HTTP_AUTHORIZATION"]

    def send(index: int) -> int:
        method, url, body = requests[index]
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=authorization)
        return getattr(client, method)(url, body, format="json").status_code

    return run_together(len(requests), send)


def test_operator_changes_racing_a_delete_answer_404_never_500(register, staff_client):
    for _ in range(5):
        guid = register().guid
        codes = _operator_requests(
            staff_client,
            [
                ("delete", detail_url(guid), None),
                ("patch", detail_url(guid), {"draining": True}),
                ("patch", detail_url(guid), {"capacity": 9}),
                ("post", rotate_url(guid), {}),
            ],
        )
        assert codes[0] == 204, codes
        assert set(codes[1:]) <= {200, 404}, codes
        assert not Dispatcher.objects.filter(guid=guid).exists()


def test_a_change_or_rotation_of_a_dispatcher_deleted_since_it_was_read_is_404(register):
    stale = register()
    services.delete_dispatcher(Dispatcher.objects.get(pk=stale.pk))
    with pytest.raises(NotFound):
        services.set_dispatcher_controls(stale, enabled=False)
    with pytest.raises(NotFound):
        services.rotate_signing_secret(stale)
    assert not Dispatcher.objects.filter(pk=stale.pk).exists()


def test_heartbeats_racing_a_rotation_all_land(dispatcher_client, register):
    dispatcher = register()
    before = valid_signing_secrets(dispatcher)

    def work(index: int) -> Any:
        if index == 0:
            return services.rotate_signing_secret(Dispatcher.objects.get(pk=dispatcher.pk))
        return services.record_heartbeat(
            guid=dispatcher.guid, application=dispatcher_client.application, free_capacity=3
        )

    results = run_together(10, work)
    assert not [result for result in results if isinstance(result, Exception)], results
    dispatcher.refresh_from_db()
    assert valid_signing_secrets(dispatcher) == [results[0], *before]
    assert dispatcher.reported_free_capacity == 3
    assert dispatcher.status() == "online"


def test_a_client_deleted_while_its_dispatcher_registers_is_a_409_not_a_500(
    dispatcher_client, monkeypatch
):
    # The new row's reference to the client is checked when the check-in commits; a client
    # deleted (committed) in between makes that commit fail. Nothing is written either way.
    application = dispatcher_client.application
    create = services._create

    def while_the_client_is_deleted(*args: Any, **kwargs: Any) -> Any:
        created = create(*args, **kwargs)
        (deleted,) = run_together(
            1, lambda _: type(application).objects.filter(pk=application.pk).delete()
        )
        assert not isinstance(deleted, Exception), deleted
        return created

    monkeypatch.setattr(services, "_create", while_the_client_is_deleted)
    response = dispatcher_client.post(CHECKIN_URL, checkin_body(), format="json")
    assert response.status_code == 409, response.content
    assert "concurrent" in response.json()["detail"]
    assert not Dispatcher.objects.exists()
