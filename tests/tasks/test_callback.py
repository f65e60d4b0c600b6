"""The dispatcher callback: authentication, every bad input, transitions, replays, races."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from kohakku_controller import signals
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.dispatchers.secrets import encrypt_secret, generate_signing_secret
from kohakku_controller.dispatchers.services import rotate_signing_secret
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.services import create_task

from .conftest import callback, post_callback, signed_headers

pytestmark = pytest.mark.django_db

DONE = {
    "status": "completed",
    "exit_code": 0,
    "result_key": "",
    "result_metadata": {"lines": 3},
    "error_message": "",
}


@pytest.fixture
def running(skill_version, dispatch):
    task = create_task(skill="code-review")
    return dispatch(task)


def events_of(task):
    return list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))


def test_seed_body_completes_the_task(api_client, running):
    task, token = running
    body = {**DONE, "result_key": f"results/{task.guid}/output.json"}
    response = callback(api_client, task, token, body)
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "task_guid": str(task.guid),
        "task_status": "completed",
        "changed": True,
    }
    task.refresh_from_db()
    assert task.status == "completed"
    assert task.exit_code == 0
    assert task.result_key == f"results/{task.guid}/output.json"
    assert task.result_metadata == {"lines": 3}
    assert task.finished_at is not None
    assert events_of(task) == ["created", "dispatched", "completed"]


def test_running_then_failed(api_client, running):
    task, token = running
    assert callback(api_client, task, token, {"status": "running"}).json()["changed"] is True
    again = callback(api_client, task, token, {"status": "running"})
    assert again.status_code == 200 and again.json()["changed"] is False
    failed = callback(
        api_client, task, token, {"status": "failed", "exit_code": 2, "error_message": "boom"}
    )
    assert failed.status_code == 200
    task.refresh_from_db()
    assert (task.status, task.exit_code, task.error_message) == ("failed", 2, "boom")
    assert task.started_at is not None
    assert events_of(task) == ["created", "dispatched", "started", "failed"]
    late_running = callback(api_client, task, token, {"status": "running"})
    assert late_running.status_code == 409


def test_signals_sent_after_commit(api_client, running, django_capture_on_commit_callbacks):
    task, token = running
    seen = []

    def started(sender, task, **kwargs):
        seen.append(("started", task.status))

    def finished(sender, task, **kwargs):
        seen.append(("finished", task.status))

    signals.task_started.connect(started)
    signals.task_finished.connect(finished)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            callback(api_client, task, token, {"status": "running"})
        with django_capture_on_commit_callbacks(execute=True):
            callback(api_client, task, token, DONE)
        with django_capture_on_commit_callbacks(execute=True):
            callback(api_client, task, token, DONE)  # repeat: no second signal
    finally:
        signals.task_started.disconnect(started)
        signals.task_finished.disconnect(finished)
    assert seen == [("started", "running"), ("finished", "completed")]


def test_same_final_state_repeated_is_200_and_changes_nothing(api_client, running):
    task, token = running
    callback(api_client, task, token, DONE)
    task.refresh_from_db()
    before = (task.updated_at, task.finished_at, task.result_metadata)
    repeat = callback(api_client, task, token, {**DONE, "result_metadata": {"other": 1}})
    assert repeat.status_code == 200
    assert repeat.json()["changed"] is False
    task.refresh_from_db()
    assert (task.updated_at, task.finished_at, task.result_metadata) == before
    assert events_of(task).count("completed") == 1


def test_different_final_state_after_end_is_409(api_client, running):
    task, token = running
    callback(api_client, task, token, DONE)
    response = callback(api_client, task, token, {"status": "failed", "error_message": "x"})
    assert response.status_code == 409
    task.refresh_from_db()
    assert task.status == "completed"
    assert events_of(task).count("failed") == 0


def test_missing_token_is_401(api_client, running):
    task, _ = running
    body = json.dumps(DONE).encode()
    headers = signed_headers("x", task.dispatcher.secret, body)
    del headers["HTTP_AUTHORIZATION"]
    response = post_callback(api_client, task, body, headers)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response
    assert Task.objects.get(pk=task.pk).status == "dispatched"


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Token abc", "Bearer ", "Basic Zm9v"])
def test_wrong_token_is_401(api_client, running, authorization):
    task, token = running
    response = callback(api_client, task, token, DONE, HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 401
    assert Task.objects.get(pk=task.pk).status == "dispatched"


def test_token_of_another_task_is_401(api_client, skill_version, dispatch, make_dispatcher):
    first = create_task(skill="code-review")
    second = create_task(skill="code-review")
    dispatcher = make_dispatcher()
    dispatch(first, dispatcher)
    first = Task.objects.select_related("dispatcher").get(pk=first.pk)
    # Both were claimed by the same pass; fetch the second's token by claiming afresh.
    _, token_b = _claim_single(second, dispatcher)
    first.signing_secret = dispatcher.secret
    response = callback(api_client, first, token_b, DONE)
    assert response.status_code == 401
    assert Task.objects.get(pk=first.pk).status == "dispatched"


def _claim_single(task, dispatcher):
    from kohakku_controller.tasks.models import hash_callback_token

    token = "token-for-" + str(task.guid)
    Task.objects.filter(pk=task.pk).update(
        status="dispatched",
        dispatcher=dispatcher,
        attempt=1,
        callback_token_hash=hash_callback_token(token),
    )
    task = Task.objects.select_related("dispatcher").get(pk=task.pk)
    task.dispatcher.secret = dispatcher.secret
    task.signing_secret = dispatcher.secret
    return task, token


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.pop("HTTP_X_KOHAKKU_SIGNATURE"),
        lambda h: h.pop("HTTP_X_KOHAKKU_TIMESTAMP"),
        lambda h: h.update(HTTP_X_KOHAKKU_SIGNATURE="sha256=" + "0" * 64),
        lambda h: h.update(HTTP_X_KOHAKKU_SIGNATURE="md5=abc"),
        lambda h: h.update(HTTP_X_KOHAKKU_TIMESTAMP="soon"),
    ],
    ids=["no-signature", "no-timestamp", "wrong-signature", "bad-prefix", "bad-timestamp"],
)
def test_bad_or_missing_signature_is_401(api_client, running, mutate):
    task, token = running
    body = json.dumps(DONE).encode()
    headers = signed_headers(token, task.dispatcher.secret, body)
    mutate(headers)
    response = post_callback(api_client, task, body, headers)
    assert response.status_code == 401
    assert Task.objects.get(pk=task.pk).status == "dispatched"


def test_signature_with_another_dispatchers_secret_is_401(api_client, running):
    task, token = running
    response = callback(api_client, task, token, DONE, secret=generate_signing_secret())
    assert response.status_code == 401


def test_body_changed_after_signing_is_401(api_client, running):
    task, token = running
    body = json.dumps(DONE).encode()
    headers = signed_headers(token, task.dispatcher.secret, body)
    tampered = json.dumps({**DONE, "exit_code": 1}).encode()
    response = post_callback(api_client, task, tampered, headers)
    assert response.status_code == 401


# Ahead by a minute more than the window: the request may take a while to reach the check
# (the exact edge, at a pinned clock, is in test_signing.py).
@pytest.mark.parametrize("skew", [-301, 360, -3600])
def test_timestamp_outside_window_is_401(api_client, running, skew):
    task, token = running
    response = callback(api_client, task, token, DONE, timestamp=int(time.time()) + skew)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_previous_secret_accepted_during_rotation_grace(api_client, running):
    task, token = running
    old = task.dispatcher.secret
    new = generate_signing_secret()
    type(task.dispatcher).objects.filter(pk=task.dispatcher.pk).update(
        signing_secret_encrypted=encrypt_secret(new),
        previous_signing_secret_encrypted=encrypt_secret(old),
        previous_secret_valid_until=timezone.now() + timedelta(hours=1),
    )
    assert callback(api_client, task, token, {"status": "running"}, secret=old).status_code == 200
    assert callback(api_client, task, token, DONE, secret=new).status_code == 200


def test_previous_secret_rejected_after_grace(api_client, running):
    task, token = running
    old = task.dispatcher.secret
    type(task.dispatcher).objects.filter(pk=task.dispatcher.pk).update(
        signing_secret_encrypted=encrypt_secret(generate_signing_secret()),
        previous_signing_secret_encrypted=encrypt_secret(old),
        previous_secret_valid_until=timezone.now() - timedelta(seconds=1),
    )
    assert callback(api_client, task, token, DONE, secret=old).status_code == 401


def test_replay_after_window_is_401(api_client, running):
    """A captured request replayed once its timestamp has left the window is refused."""
    task, token = running
    body = json.dumps({"status": "running"}).encode()
    headers = signed_headers(token, task.dispatcher.secret, body, timestamp=int(time.time()) - 400)
    response = post_callback(api_client, task, body, headers)
    assert response.status_code == 401
    assert Task.objects.get(pk=task.pk).status == "dispatched"


def test_replay_inside_window_of_applied_final_state_is_harmless(api_client, running):
    """Inside the window a replay of an applied final callback is a repeat: 200, no change."""
    task, token = running
    body = json.dumps(DONE).encode()
    headers = signed_headers(token, task.dispatcher.secret, body)
    first = post_callback(api_client, task, body, headers)
    replay = post_callback(api_client, task, body, headers)
    assert first.status_code == replay.status_code == 200
    assert replay.json()["changed"] is False
    assert events_of(task).count("completed") == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"status": "queued"}, "status"),
        ({"status": "timed_out"}, "status"),
        ({}, "status"),
        ({"status": "completed", "exit_code": "0"}, "exit_code"),
        ({"status": "completed", "exit_code": 1.5}, "exit_code"),
        ({"status": "completed", "exit_code": 2**40}, "exit_code"),
        ({"status": "completed", "result_metadata": []}, "result_metadata"),
        ({"status": "completed", "error_message": 5}, "error_message"),
        ({"status": "completed", "result_key": 7}, "result_key"),
        ({"status": "completed", "result_key": []}, "result_key"),
        ({"status": "completed", "result_key": {}}, "result_key"),
        ({"status": "completed", "result_key": False}, "result_key"),
        ({"status": "completed", "result_key": 0}, "result_key"),
        ({"status": "completed", "extra": True}, "extra"),
    ],
)
def test_unknown_status_or_wrong_types_is_400(api_client, running, payload, field):
    task, token = running
    response = callback(api_client, task, token, payload)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Task.objects.get(pk=task.pk).status == "dispatched"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"completed"', b"NaN", b""])
def test_malformed_body_is_400(api_client, running, raw):
    task, token = running
    response = callback(api_client, task, token, None, raw=raw)
    assert response.status_code == 400
    assert Task.objects.get(pk=task.pk).status == "dispatched"


@pytest.mark.parametrize(
    "key",
    [
        "results/other/output.json",
        "results/{guid}",
        "results/{guid}/",
        "results/{guid}/../x/out.json",
        "results/{guid}/a//b",
        "results/{guid}/a\\b",
        "results/{guid}/" + "n" * 256,
        "/results/{guid}/out.json",
        "skills/x.zip",
    ],
)
def test_result_key_outside_prefix_is_400(api_client, running, key):
    task, token = running
    response = callback(api_client, task, token, {**DONE, "result_key": key.format(guid=task.guid)})
    assert response.status_code == 400
    assert "result_key" in response.json()


def test_oversize_body_is_413(api_client, running, settings):
    task, token = running
    payload = {**DONE, "result_metadata": {"blob": "x" * 70_000}}
    response = callback(api_client, task, token, payload)
    assert response.status_code == 413
    assert Task.objects.get(pk=task.pk).status == "dispatched"


def test_body_shorter_than_its_content_length_is_400_and_changes_nothing(api_client, running):
    # Even signed over what arrived: the request announced more than that.
    task, token = running
    body = json.dumps(DONE).encode()
    headers = {
        **signed_headers(token, task.signing_secret, body),
        "CONTENT_LENGTH": str(len(body) + 50),
        "wsgi.input": io.BytesIO(body),
    }
    response = post_callback(api_client, task, body, headers)
    assert response.status_code == 400
    assert "ended after" in response.json()["detail"]
    assert Task.objects.get(pk=task.pk).status == "dispatched"


def test_metadata_and_error_caps_are_400(api_client, running, settings):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "RESULT_METADATA_MAX_BYTES": 50,
        "ERROR_MESSAGE_MAX_CHARS": 10,
    }
    task, token = running
    big_meta = callback(api_client, task, token, {**DONE, "result_metadata": {"a": "x" * 60}})
    assert big_meta.status_code == 400 and "result_metadata" in big_meta.json()
    long_error = callback(api_client, task, token, {"status": "failed", "error_message": "e" * 11})
    assert long_error.status_code == 400 and "error_message" in long_error.json()


def test_unknown_task_is_404(api_client, running):
    task, token = running
    task.guid = "00000000-0000-0000-0000-000000000000"
    assert callback(api_client, task, token, DONE).status_code == 404


def test_callback_for_timed_out_task_is_409(api_client, running):
    task, token = running
    Task.objects.filter(pk=task.pk).update(status="timed_out")
    assert callback(api_client, task, token, DONE).status_code == 409


def test_token_of_an_earlier_attempt_is_401(api_client, running):
    from kohakku_controller.tasks.services import release_task

    task, token = running
    assert release_task(task, kind="requeued", reason="test") == "queued"
    response = callback(api_client, task, token, DONE)
    assert response.status_code == 401


def test_callback_answers_json_whatever_the_client_accepts(api_client, running):
    task, token = running
    response = callback(api_client, task, token, DONE, HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["task_status"] == "completed"


def test_callback_query_budget(api_client, running, django_assert_num_queries):
    task, token = running
    # The task with its dispatcher (one prepared statement); then on PostgreSQL one statement
    # (conditional update, event and NOTIFY), elsewhere savepoint, conditional update, event
    # and release (in autocommit, outside the test's transaction: BEGIN ... COMMIT).
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 5):
        response = callback(api_client, task, token, DONE)
    assert response.status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_identical_final_callbacks_race_to_one_transition(skill_version, dispatch):
    task = create_task(skill="code-review")
    task, token = dispatch(task)
    body = json.dumps(DONE).encode()
    headers = signed_headers(token, task.dispatcher.secret, body)
    barrier = threading.Barrier(20)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def send() -> None:
        from django.db import connection as thread_connection

        client = APIClient()
        barrier.wait()
        try:
            response = post_callback(client, task, body, headers)
            with lock:
                results.append((response.status_code, response.json().get("changed")))
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [code for code, _ in results] == [200] * 20
    assert sum(1 for _, changed in results if changed) == 1
    assert TaskEvent.objects.filter(task=task, kind="completed").count() == 1
    assert Task.objects.get(pk=task.pk).status == "completed"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_retries_of_an_applied_final_callback_after_the_deadline_are_unchanged(
    skill_version, dispatch
):
    task, token = dispatch(create_task(skill="code-review"))
    body = json.dumps(DONE).encode()
    first = post_callback(APIClient(), task, body, signed_headers(token, task.signing_secret, body))
    assert first.status_code == 200 and first.json()["changed"] is True
    Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=2))
    barrier = threading.Barrier(20)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def retry() -> None:
        from django.db import connection as thread_connection

        client = APIClient()
        headers = signed_headers(token, task.signing_secret, body)
        barrier.wait()
        try:
            response = post_callback(client, task, body, headers)
            with lock:
                results.append((response.status_code, response.json().get("changed")))
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=retry) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(200, False)] * 20
    assert Task.objects.get(pk=task.pk).status == "completed"
    assert events_of(task) == ["created", "dispatched", "completed"]


@pytest.mark.parametrize("status", ["running", "failed", "completed"])
def test_callback_after_the_deadline_times_the_task_out(api_client, running, status):
    # The dispatcher's own timer starts after the controller's deadline: its report can
    # arrive before the scheduler's next pass, and must not decide the outcome.
    task, token = running
    Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    body = {"status": status, "exit_code": None, "error_message": "timed out after 1 s"}

    response = callback(api_client, task, token, body)

    assert response.status_code == 409, response.content
    assert "timed_out" in response.json()["detail"]
    task.refresh_from_db()
    assert task.status == "timed_out"
    assert task.error_message == f"ran longer than its timeout of {task.timeout_seconds} s"
    assert task.finished_at is not None
    assert events_of(task) == ["created", "dispatched", "timed_out"]
    assert callback(api_client, task, token, body).status_code == 409
    assert events_of(task) == ["created", "dispatched", "timed_out"]


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_final_callback_repeated_after_the_deadline_is_200_unchanged(api_client, running, status):
    # The dispatcher lost the answer to its final callback and retries (freshly signed)
    # once the deadline has passed: the task had ended before it, so this is a repeat.
    task, token = running
    body = {**DONE, "status": status}
    first = callback(api_client, task, token, body)
    assert first.status_code == 200 and first.json()["changed"] is True
    Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=2))

    retry = callback(api_client, task, token, body)

    assert retry.status_code == 200, retry.content
    assert retry.json() == {
        "status": "ok",
        "task_guid": str(task.guid),
        "task_status": status,
        "changed": False,
    }
    assert Task.objects.get(pk=task.pk).status == status
    assert events_of(task) == ["created", "dispatched", status]


def test_other_callbacks_after_the_deadline_of_an_ended_task_are_409_and_change_nothing(
    api_client, running
):
    task, token = running
    assert callback(api_client, task, token, DONE).status_code == 200
    Task.objects.filter(pk=task.pk).update(deadline_at=timezone.now() - timedelta(seconds=2))
    for status in ("failed", "running"):
        response = callback(api_client, task, token, {"status": status})
        assert response.status_code == 409, response.content
        assert "completed" in response.json()["detail"]
    assert Task.objects.get(pk=task.pk).status == "completed"
    assert events_of(task) == ["created", "dispatched", "completed"]


def test_text_no_column_can_hold_is_400_and_changes_nothing(api_client, running):
    task, token = running
    raw = b'{"status": "completed", "result_metadata": {"log": "a\\u0000b"}}'
    response = callback(api_client, task, token, None, raw=raw)
    assert response.status_code == 400
    assert response.json() == {
        "result_metadata": [
            "The string at result_metadata.log contains a NUL character (\\u0000), "
            "which text cannot hold."
        ]
    }
    assert Task.objects.get(pk=task.pk).status == "dispatched"


def test_number_too_large_for_json_is_400_and_changes_nothing(api_client, running):
    task, token = running
    raw = b'{"status": "completed", "result_metadata": {"ratio": 1e400}}'
    response = callback(api_client, task, token, None, raw=raw)
    assert response.status_code == 400
    assert response.json() == {"detail": "JSON parse error - the number 1e400 is too large"}
    assert Task.objects.get(pk=task.pk).status == "dispatched"


# --- the key that encrypts signing secrets changed ----------------------------------------


@pytest.fixture
def new_encryption_key(settings):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "SECRET_ENCRYPTION_KEY": "a-new-key-" + "x" * 40,
    }


def test_a_secret_the_new_key_cannot_read_gets_401_naming_the_recovery(
    api_client, running, new_encryption_key
):
    task, token = running
    response = callback(api_client, task, token, DONE)
    assert response.status_code == 401, response.content
    assert "unreadable_secret" in response.json()["detail"]
    assert "rotate_secret" in response.json()["detail"]
    task.refresh_from_db()
    assert task.status == "dispatched"


def test_an_unreadable_secret_is_logged_once_not_on_every_callback(
    api_client, running, new_encryption_key, caplog
):
    task, token = running
    with caplog.at_level("WARNING", logger="kohakku_controller.dispatchers.secrets"):
        for _ in range(3):
            assert callback(api_client, task, token, DONE).status_code == 401
    warnings = [r for r in caplog.records if "cannot be decrypted" in r.getMessage()]
    assert len(warnings) == 1
    assert str(task.dispatcher.guid) in warnings[0].getMessage()


def test_after_a_key_change_a_rotation_restores_callbacks(api_client, running, new_encryption_key):
    task, token = running
    new_secret = rotate_signing_secret(task.dispatcher)  # with the default grace
    task.dispatcher.refresh_from_db()
    assert task.dispatcher.previous_signing_secret_encrypted == ""  # unreadable: not kept
    response = callback(api_client, task, token, DONE, secret=new_secret)
    assert response.status_code == 200, response.content
    task.refresh_from_db()
    assert task.status == "completed"


def test_a_previous_secret_the_key_cannot_read_is_ignored(api_client, running):
    task, token = running
    # As a rotation made before this release stored it, under a key since replaced.
    Dispatcher.objects.filter(pk=task.dispatcher.pk).update(
        previous_signing_secret_encrypted="gAAAAA-not-readable-with-any-key",
        previous_secret_valid_until=timezone.now() + timedelta(hours=1),
    )
    response = callback(api_client, task, token, DONE)
    assert response.status_code == 200, response.content


def test_a_callback_for_a_task_deleted_while_it_is_applied_is_404(api_client, running, monkeypatch):
    from kohakku_controller.tasks import services

    task, token = running
    validate = services._validate_callback_payload

    def pruned_meanwhile(*args, **kwargs):
        Task.objects.filter(pk=task.pk).delete()  # as retention would, in between
        return validate(*args, **kwargs)

    # After authentication, before the conditional update (on every database).
    monkeypatch.setattr(services, "_validate_callback_payload", pruned_meanwhile)
    response = callback(api_client, task, token, DONE)
    assert response.status_code == 404, response.content
    assert response.json() == {"detail": "No such task."}
