"""Duplicate deliveries racing each other: one claim, one task."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils.datastructures import CaseInsensitiveMapping
from rest_framework.test import APIClient

from kohakku_controller.exceptions import Conflict
from kohakku_controller.tasks.models import Task
from kohakku_controller.webhooks import services
from kohakku_controller.webhooks.models import Delivery, Verification
from kohakku_controller.workflows.models import Workflow
from tests.concurrency import run_all, run_together
from tests.webhooks.conftest import URL, as_body, github_headers, slack_headers

PAYLOAD = {"action": "opened", "number": 1, "repository": {"full_name": "org/repo"}}


def race(requests: list[tuple[bytes, dict[str, str]]]) -> list[tuple[int, dict]]:
    barrier = threading.Barrier(len(requests))
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def send(body: bytes, headers: dict[str, str]) -> None:
        client = APIClient()
        try:
            barrier.wait(timeout=10)
            response = client.generic(
                "POST", URL, body, content_type="application/json", headers=headers
            )
            with lock:
                results.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("sender", ["github", "slack"])
def test_same_delivery_from_several_threads_yields_one_task(webhook_secrets, make_workflow, sender):
    if sender == "github":
        make_workflow("triage-prs", input_template="{n: payload.number}")
        body = as_body(PAYLOAD)
        requests = [(body, github_headers(body, "pull_request", delivery="race-1"))] * 8
    else:
        make_workflow("slack-events", source="slack", event="event_callback")
        body = as_body({"type": "event_callback", "event_id": "EvRACE", "event": {}})
        requests = [(body, slack_headers(body))] * 8

    results = race(requests)

    assert [code for code, _ in results] == [200] * 8
    assert Task.objects.count() == 1
    task_guid = str(Task.objects.get().guid)
    assert {data["task_guid"] for _, data in results} == {task_guid}
    assert {data["routed_to"] for _, data in results} == {results[0][1]["routed_to"]}
    assert Delivery.objects.filter(status="routed").count() == 1
    assert Delivery.objects.filter(status="duplicate").count() == 7


@pytest.mark.django_db
def test_losing_the_claim_after_creating_the_task_rolls_the_task_back(
    webhook_secrets, make_workflow
):
    """The race loser's path, made deterministic: the claim is taken between the dedupe
    look-up and the insert. Its task must not survive, and it answers as a duplicate."""
    make_workflow("triage-prs")
    body = as_body(PAYLOAD)
    headers = github_headers(body, "pull_request", delivery="d-1", hook_id="7")
    winner = services.receive_webhook(headers=headers, body=body, content_type="application/json")
    assert Task.objects.count() == 1

    incoming = services._Incoming(
        headers=CaseInsensitiveMapping(headers),
        body=body,
        body_size=len(body),
        content_type="application/json",
        remote_addr=None,
        started=time.monotonic(),
    )
    context = services._Context(
        source="github",
        event="pull_request",
        external_id="d-1",
        verification=Verification.VERIFIED,
    )
    loser = services._route(incoming, context, PAYLOAD, claim="7:d-1")

    assert Task.objects.count() == 1
    assert loser.data["duplicate"] is True
    assert loser.data["task_guid"] == winner.data["task_guid"]
    assert loser.delivery.status == "duplicate"


def _routed_delivery(make_workflow: Any) -> Delivery:
    make_workflow("triage-prs")
    body = as_body(PAYLOAD)
    headers = github_headers(body, "pull_request", delivery="to-replay")
    services.receive_webhook(headers=headers, body=body, content_type="application/json")
    return Delivery.objects.get(status="routed")


@pytest.mark.django_db(transaction=True)
def test_replaying_a_delivery_deleted_since_it_was_read_answers_409(webhook_secrets, make_workflow):
    """A replay racing the prune, made deterministic: the original goes after the read."""
    original = _routed_delivery(make_workflow)
    Delivery.objects.filter(pk=original.pk).delete()

    with pytest.raises(Conflict):
        services.replay_delivery(original)

    assert Delivery.objects.count() == 0
    assert Task.objects.count() == 1  # the original's; the replay's task was rolled back


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_replays_of_one_delivery_each_record_a_replay_and_a_task(
    webhook_secrets, make_workflow, staff_client
):
    original = _routed_delivery(make_workflow)
    authorization = staff_client._credentials["HTTP_AUTHORIZATION"]

    def replay(_: int) -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=authorization)
        return client.post(f"/api/v1/webhooks/deliveries/{original.guid}/replay/").status_code

    codes = run_together(6, replay)

    assert codes == [201] * 6
    replays = Delivery.objects.filter(replay_of=original)
    assert replays.count() == 6
    assert len({replay.task_guid for replay in replays}) == 6
    assert Task.objects.count() == 7


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_of_a_delivery_pruned_meanwhile_is_still_answered(
    post_webhook, make_workflow, monkeypatch
):
    make_workflow("triage-prs", source="github", event="pull_request")
    body = as_body(PAYLOAD)
    headers = github_headers(body, "pull_request", delivery="d-pruned")
    first = post_webhook(body, headers).json()
    claimant = services._claimant

    def pruned_after_it_was_read(source: str, claim: str) -> Any:
        original = claimant(source, claim)
        Delivery.objects.filter(pk=original.pk).delete()  # a prune, between read and insert
        return original

    monkeypatch.setattr(services, "_claimant", pruned_after_it_was_read)
    second = post_webhook(body, headers)
    assert second.status_code == 200
    answer = second.json()
    assert (answer["duplicate"], answer["task_guid"]) == (True, first["task_guid"])
    duplicate = Delivery.objects.get(guid=answer["delivery_id"])
    assert (duplicate.status, duplicate.duplicate_of) == ("duplicate", None)
    assert Task.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_delivery_routed_while_its_workflow_is_deleted_is_recorded_unrouted(
    webhook_secrets, make_workflow
):
    workflow = make_workflow("triage-prs", input_template="{n: payload.number}")
    body = as_body(PAYLOAD)
    headers = github_headers(body, "pull_request", delivery="routed-while-deleted")
    deleting = threading.Event()

    def operator_deletes() -> None:
        # The delete commits a moment after the delivery has matched the workflow.
        with transaction.atomic():
            Workflow.objects.get(pk=workflow.pk).delete()
            deleting.set()
            time.sleep(1.0)

    def github_delivers() -> tuple[int, dict]:
        deleting.wait(10)
        client = APIClient(raise_request_exception=False)
        response = client.generic(
            "POST", URL, body, content_type="application/json", headers=headers
        )
        return response.status_code, response.json()

    deleted, (status_code, answer) = run_all([operator_deletes, github_delivers])
    assert deleted is None, deleted
    assert status_code == 200, answer
    assert (answer["routed_to"], answer["task_guid"]) == (None, None)
    delivery = Delivery.objects.get(external_id="routed-while-deleted")
    assert (delivery.status, delivery.workflow_id) == ("unrouted", None)
    assert not Task.objects.exists()
