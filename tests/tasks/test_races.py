"""Requests that race over one task: cancel against the final callback, idempotent creation."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from kohakku_controller.exceptions import Conflict
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.services import cancel_task, create_task

from ..concurrency import run_all
from .conftest import post_callback, signed_headers

DONE = json.dumps({"status": "completed", "exit_code": 0}).encode()


def _client_like(staff_client: APIClient) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=staff_client._credentials["HTTP_AUTHORIZATION"])
    return client


@pytest.mark.django_db
def test_a_cancel_read_before_the_final_callback_answers_409(skill_version, dispatch):
    task, token = dispatch(create_task(skill="code-review"))
    stale = Task.objects.select_related("dispatcher", "skill_version__skill").get(pk=task.pk)
    headers = signed_headers(token, task.signing_secret, DONE)
    assert post_callback(APIClient(), task, DONE, headers).status_code == 200

    with pytest.raises(Conflict):
        cancel_task(stale)

    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.cancel_requested_at) == ("completed", None)
    assert not TaskEvent.objects.filter(task=task, kind="cancel_requested").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_cancel_racing_the_final_callback_never_loses_the_outcome(
    skill_version, dispatch, make_dispatcher, staff_client
):
    dispatcher = make_dispatcher()
    outcomes: Counter[tuple[int, int]] = Counter()
    for _ in range(10):
        task, token = dispatch(create_task(skill="code-review"), dispatcher)
        headers = signed_headers(token, task.signing_secret, DONE)
        cancel_url = f"/api/v1/tasks/{task.guid}/cancel/"
        cancelled, called_back = run_all(
            [
                lambda url=cancel_url: _client_like(staff_client).post(url).status_code,
                lambda task=task, headers=headers: (
                    post_callback(APIClient(), task, DONE, headers).status_code
                ),
            ]
        )
        outcomes[cancelled, called_back] += 1
        stored = Task.objects.get(pk=task.pk)
        assert stored.status == "completed"
        assert TaskEvent.objects.filter(task=task, kind="completed").count() == 1
        requested = TaskEvent.objects.filter(task=task, kind="cancel_requested").count()
        assert requested == (1 if cancelled == 202 else 0)
        assert (stored.cancel_requested_at is not None) == (cancelled == 202)
    assert set(outcomes) <= {(202, 200), (409, 200)}, outcomes


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_creations_with_one_idempotency_key_make_one_task(skill_version, staff_client):
    def create(body: dict[str, Any]) -> Callable[[], tuple[int, Any]]:
        def post() -> tuple[int, Any]:
            response = _client_like(staff_client).post(
                "/api/v1/tasks/", body, format="json", headers={"Idempotency-Key": "k-1"}
            )
            return response.status_code, response.json()

        return post

    same = {"skill": "code-review", "input": {"n": 1}}
    other = {"skill": "code-review", "input": {"n": 2}}
    results = run_all([create(same)] * 6 + [create(other)] * 2)

    assert all(isinstance(result, tuple) for result in results), results
    task = Task.objects.get()
    codes = Counter(code for code, _ in results)
    assert codes[201] == 1 and codes[200] + codes[201] + codes[409] == 8, codes
    answered = {body["guid"] for code, body in results if code in (200, 201)}
    assert answered == {str(task.guid)}
    winner = same if task.input == same["input"] else other
    assert codes[409] == (2 if winner is same else 6)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("filesystem_storage")
def test_concurrent_uploads_of_one_name_take_turns_under_one_key(skill_version, dispatch):
    from kohakku_controller.storage import get_storage

    task, token = dispatch(create_task(skill="code-review"))
    bodies = [f"result {index}".encode() * 1000 for index in range(4)]

    def upload(body: bytes) -> Callable[[], Any]:
        return lambda: APIClient().generic(
            "PUT",
            f"/api/v1/tasks/{task.guid}/result/upload/",
            body,
            content_type="application/octet-stream",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )

    answers = run_all([upload(body) for body in bodies])
    assert [answer.status_code for answer in answers] == [201] * len(bodies)
    key = f"results/{task.guid}/output.json"
    assert {answer.json()["result_key"] for answer in answers} == {key}
    _, files = get_storage().listdir(f"results/{task.guid}")
    assert files == ["output.json"]  # no copy saved under another name
    with get_storage().open(key) as handle:
        assert handle.read() in bodies
