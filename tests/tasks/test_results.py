"""Results: where the push tells the dispatcher to put them, upload, and download."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from django.utils import timezone

from kohakku_controller.storage import get_storage, storage_is_remote
from kohakku_controller.tasks import services
from kohakku_controller.tasks.models import Task
from kohakku_controller.tasks.scheduler import build_push_body
from kohakku_controller.tasks.services import create_task

from .conftest import callback

pytestmark = pytest.mark.django_db

# The controller's own upload endpoint serves filesystem storage; S3 gets presigned PUTs.
filesystem_only = pytest.mark.usefixtures("filesystem_storage")


@pytest.fixture
def running(skill_version, dispatch):
    return dispatch(create_task(skill="code-review"))


def upload(client, task, token, data: bytes, name: str | None = None, **headers):
    url = f"/api/v1/tasks/{task.guid}/result/upload/" + (
        f"?name={name}" if name is not None else ""
    )
    return client.generic(
        "PUT",
        url,
        data,
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        **headers,
    )


def test_push_result_target_matches_storage(running, settings):
    task, token = running
    result = build_push_body(task, token)["result"]
    assert result["key_prefix"] == f"results/{task.guid}/"
    assert result["key"] == f"results/{task.guid}/output.json"
    assert result["method"] == "PUT"
    if storage_is_remote():
        assert f"results/{task.guid}/output.json" in result["upload_url"]
        assert "Signature" in result["upload_url"] or "X-Amz-Signature" in result["upload_url"]
        assert result["headers"] == {}
    else:
        assert result["upload_url"].endswith(f"/api/v1/tasks/{task.guid}/result/upload/")
        assert result["headers"] == {"Authorization": f"Bearer {token}"}


@filesystem_only
def test_upload_then_complete_then_download(api_client, staff_client, running):
    task, token = running
    response = upload(api_client, task, token, b'{"ok": true}')
    assert response.status_code == 201, response.content
    assert response.json()["result_key"] == f"results/{task.guid}/output.json"
    assert response.json()["size"] == 12
    done = callback(
        api_client,
        task,
        token,
        {"status": "completed", "result_key": response.json()["result_key"]},
    )
    assert done.status_code == 200
    download = staff_client.get(f"/api/v1/tasks/{task.guid}/result/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b'{"ok": true}'
    assert download["Content-Type"] == "application/json"
    assert download["Content-Disposition"] == 'attachment; filename="output.json"'


@pytest.mark.parametrize("name", ["report.html", "page.svg", "x.xhtml", "script.js", "noext"])
def test_a_result_that_a_browser_would_render_is_served_as_a_download(
    api_client, staff_client, running, name
):
    task, token = running
    key = f"results/{task.guid}/{name}"
    if not storage_is_remote():
        assert (
            upload(api_client, task, token, b"<script>alert(1)</script>", name).status_code == 201
        )
    done = callback(api_client, task, token, {"status": "completed", "result_key": key})
    assert done.status_code == 200
    download = staff_client.get(f"/api/v1/tasks/{task.guid}/result/")
    if storage_is_remote():
        assert download.status_code == 302
        query = parse_qs(urlsplit(download["Location"]).query)
        assert query["response-content-type"] == ["application/octet-stream"]
        assert query["response-content-disposition"] == [f'attachment; filename="{name}"']
    else:
        assert download.status_code == 200
        assert download["Content-Type"] == "application/octet-stream"
        assert download["Content-Disposition"] == f'attachment; filename="{name}"'
        assert download["Content-Security-Policy"] == "sandbox"


@filesystem_only
def test_retried_upload_replaces_the_first(api_client, running):
    task, token = running
    upload(api_client, task, token, b"first")
    second = upload(api_client, task, token, b"second!")
    assert second.status_code == 201
    with get_storage().open(second.json()["result_key"]) as handle:
        assert handle.read() == b"second!"


@filesystem_only
def test_upload_named_file(api_client, running):
    task, token = running
    response = upload(api_client, task, token, b"log", name="logs/run.txt")
    assert response.status_code == 201
    assert response.json()["result_key"] == f"results/{task.guid}/logs/run.txt"


@pytest.mark.parametrize(
    "name",
    ["../escape", "a/../../b", "a\\b", "", "a" * 256, "\u00e9" * 128,
     "/".join(["\u65e5" * 85] * 5)],  # 255 bytes a part, 429 characters, 1279 bytes
    ids=["dot-dot", "dot-dot-inside", "backslash", "empty", "part-over-255", "part-over-255-bytes",
         "key-over-1024-bytes"],
)  # fmt: skip
def test_upload_rejects_bad_names(api_client, running, name):
    task, token = running
    response = upload(api_client, task, token, b"x", name=quote(name))
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["name"]


@filesystem_only
@pytest.mark.parametrize(
    ("first", "second"), [("x", "x/y"), ("d/e", "d")], ids=["file-then-folder", "folder-then-file"]
)
def test_a_name_that_clashes_with_a_stored_result_is_409_and_keeps_it(
    api_client, running, first, second
):
    task, token = running
    assert upload(api_client, task, token, b"first", name=first).status_code == 201
    response = upload(api_client, task, token, b"second", name=second)
    assert response.status_code == 409, response.content
    assert "clashes with another result" in response.json()["name"][0]
    with get_storage().open(f"results/{task.guid}/{first}") as handle:
        assert handle.read() == b"first"


def test_upload_needs_the_task_token(api_client, running):
    task, _ = running
    assert upload(api_client, task, "wrong", b"x").status_code == 401
    response = api_client.generic("PUT", f"/api/v1/tasks/{task.guid}/result/upload/", b"x")
    assert response.status_code == 401


def test_upload_over_cap_is_413(api_client, running, settings):
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "RESULT_MAX_BYTES": 10}
    task, token = running
    response = upload(api_client, task, token, b"x" * 11)
    assert response.status_code == 413
    assert not get_storage().exists(f"results/{task.guid}/output.json")


@filesystem_only
def test_upload_shorter_than_its_content_length_is_400_and_stores_nothing(api_client, running):
    # The dispatcher's connection ended early: what arrived is not its result.
    task, token = running
    data = b'{"partial": '
    response = upload(
        api_client, task, token, data, CONTENT_LENGTH="1000", **{"wsgi.input": io.BytesIO(data)}
    )
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "The request body ended after 12 of the 1000 bytes its Content-Length announced."
    )
    assert not get_storage().exists(f"results/{task.guid}/output.json")


def test_upload_after_task_ended_is_409(api_client, running):
    task, token = running
    Task.objects.filter(pk=task.pk).update(status="completed", finished_at=timezone.now())
    assert upload(api_client, task, token, b"x").status_code == 409


@filesystem_only
def test_upload_whose_task_ends_while_its_body_arrives_is_409(api_client, running, monkeypatch):
    task, token = running
    assert upload(api_client, task, token, b"the real result").status_code == 201
    store_result = services.store_result

    def final_callback_lands_first(*args, **kwargs):
        ended = callback(api_client, task, token, {"status": "completed", "exit_code": 0})
        assert ended.status_code == 200
        return store_result(*args, **kwargs)

    monkeypatch.setattr(services, "store_result", final_callback_lands_first)
    late = upload(api_client, task, token, b"written after the end")
    assert late.status_code == 409
    assert "completed" in late.json()["detail"]
    with get_storage().open(f"results/{task.guid}/output.json") as handle:
        assert handle.read() == b"the real result"


def test_result_404_without_result(staff_client, running):
    task, _ = running
    assert staff_client.get(f"/api/v1/tasks/{task.guid}/result/").status_code == 404


@filesystem_only
def test_a_result_key_naming_a_folder_of_results_is_404(api_client, staff_client, running):
    task, token = running
    assert upload(api_client, task, token, b"log", name="logs/run.txt").status_code == 201
    done = {"status": "completed", "exit_code": 0, "result_key": f"results/{task.guid}/logs"}
    assert callback(api_client, task, token, done).status_code == 200
    response = staff_client.get(f"/api/v1/tasks/{task.guid}/result/")
    assert response.status_code == 404, response.content
    assert response.json()["detail"] == "The result object is missing from storage."


def test_result_needs_read_scope(oauth_client, running):
    task, _ = running
    client = oauth_client("skills:read")
    assert client.get(f"/api/v1/tasks/{task.guid}/result/").status_code == 403


@pytest.mark.usefixtures("s3_storage")
def test_result_through_presigned_put_on_s3(api_client, staff_client, running):
    assert storage_is_remote()
    task, token = running
    target = build_push_body(task, token)["result"]
    put = httpx.put(target["upload_url"], content=b'{"answer": 42}', headers=target["headers"])
    assert put.status_code == 200, put.text
    done = callback(api_client, task, token, {"status": "completed", "result_key": target["key"]})
    assert done.status_code == 200
    response = staff_client.get(f"/api/v1/tasks/{task.guid}/result/")
    assert response.status_code == 302
    fetched = httpx.get(response["Location"])
    assert fetched.status_code == 200
    assert fetched.content == b'{"answer": 42}'


def taken_back_and_dispatched_again(dispatch, task):
    """Attempt 1 is taken back (its dispatcher seemed lost); attempt 2 is claimed."""
    dispatcher = task.dispatcher
    assert services.release_task(task, kind="requeued", reason="taken back") == "queued"
    return dispatch(Task.objects.get(pk=task.pk), dispatcher)


def test_each_later_attempt_is_told_its_own_result_key(running, dispatch):
    first, first_token = running
    first_target = build_push_body(first, first_token)["result"]
    second, second_token = taken_back_and_dispatched_again(dispatch, first)
    assert second.attempt == 2
    target = build_push_body(second, second_token)["result"]
    assert first_target["key"] == f"results/{first.guid}/output.json"
    assert target["key"] == f"results/{second.guid}/attempt-2/output.json"
    assert target["key_prefix"] == first_target["key_prefix"]
    if not storage_is_remote():
        assert target["upload_url"].endswith("/result/upload/?name=attempt-2%2Foutput.json")


@filesystem_only
def test_a_later_attempt_uploads_to_its_own_key_through_the_upload_url(
    api_client, running, dispatch
):
    second, token = taken_back_and_dispatched_again(dispatch, running[0])
    target = build_push_body(second, token)["result"]
    path = target["upload_url"].split("://", 1)[1].split("/", 1)[1]
    response = api_client.generic(
        "PUT", f"/{path}", b"attempt 2", "application/octet-stream", **{
            "HTTP_AUTHORIZATION": target["headers"]["Authorization"]
        },
    )  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["result_key"] == target["key"]


def given_back_and_dispatched_again(dispatch, task):
    """The push of attempt 1 is refused for lack of room, which gives the attempt number
    back; the task is claimed again, as attempt 1 once more."""
    dispatcher = task.dispatcher
    given_back = services.release_task(
        task, kind="push_deferred", reason="full", count_attempt=False
    )
    assert given_back == "queued"
    return dispatch(Task.objects.get(pk=task.pk), dispatcher)


def test_a_claim_that_reuses_an_attempt_number_is_told_its_own_result_key(running, dispatch):
    first, first_token = running
    refused = build_push_body(first, first_token)["result"]
    again, token = given_back_and_dispatched_again(dispatch, first)
    assert (again.attempt, again.claims) == (1, 2)
    target = build_push_body(again, token)["result"]
    assert refused["key"] == f"results/{first.guid}/output.json"
    assert target["key"] == f"results/{first.guid}/attempt-1/claim-2/output.json"
    if not storage_is_remote():
        assert target["upload_url"].endswith("?name=attempt-1%2Fclaim-2%2Foutput.json")


@pytest.mark.usefixtures("s3_storage")
@pytest.mark.parametrize(
    "claimed_again", [taken_back_and_dispatched_again, given_back_and_dispatched_again]
)
def test_an_earlier_claim_cannot_replace_the_result_of_the_one_that_completed(
    api_client, staff_client, running, dispatch, claimed_again
):
    first, first_token = running
    stale_target = build_push_body(first, first_token)["result"]
    again, token = claimed_again(dispatch, first)
    target = build_push_body(again, token)["result"]
    assert httpx.put(target["upload_url"], content=b"the run").status_code == 200
    done = callback(api_client, again, token, {"status": "completed", "result_key": target["key"]})
    assert done.status_code == 200
    # The earlier claim's dispatcher (still running it, or having refused the push) kept its
    # presigned URL, which cannot be revoked.
    assert httpx.put(stale_target["upload_url"], content=b"stale").status_code == 200
    response = staff_client.get(f"/api/v1/tasks/{again.guid}/result/")
    assert httpx.get(response["Location"]).content == b"the run"


@pytest.mark.parametrize(
    ("key", "served_as"),
    [
        ("out.json", "application/json"),
        ("log.txt", "text/plain"),
        ("out.gz", "application/gzip"),
        ("out.tar.gz", "application/gzip"),
        ("out.tgz", "application/gzip"),
        ("out.tar.bz2", "application/octet-stream"),
        ("page.html", "application/octet-stream"),
        ("page.html.gz", "application/gzip"),
        ("image.svg", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_a_result_is_typed_from_its_name_among_passive_types_only(key, served_as):
    from kohakku_controller.tasks.views import result_content_type

    assert result_content_type(f"results/x/{key}") == served_as


@filesystem_only
@pytest.mark.parametrize("accept", ["text/html", "application/xml"])
def test_the_upload_answers_json_whatever_the_dispatcher_accepts(api_client, running, accept):
    task, token = running
    response = upload(api_client, task, token, b"x", HTTP_ACCEPT=accept)
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"
    assert response.json()["result_key"] == f"results/{task.guid}/output.json"
