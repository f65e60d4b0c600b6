"""Pushes, runs and callbacks of the reference dispatcher against the fake controller."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest

from demo.skill_packages import demo_skill_package
from kohakku_controller.signing import sign_request
from tests.dispatcher.conftest import skill_md, skill_zip
from tests.dispatcher.fakes import push, task_body, wait_for

ECHO = """
import json, os, sys
data = json.load(sys.stdin)
print(json.dumps({"echo": data, "guid": os.environ["KOHAKKU_TASK_GUID"],
                  "home": os.environ["HOME"], "env": sorted(os.environ)}))
"""


def secret(controller) -> str:
    return controller.secret_of("test-dispatcher")


def statuses(controller, task_guid: str) -> list[str]:
    return [body["status"] for body in controller.callbacks_for(task_guid)]


def pid_is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            state = next(line for line in handle if line.startswith("State:"))
    except FileNotFoundError:
        return True
    return "Z" in state.split()[1]  # a zombie has been killed already


def test_final_callback_reports_the_result_key_the_push_names(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip(ECHO, top="echo-skill"), {"name": "Ada"})
    body["result"]["key"] = f"results/{body['task_guid']}/output.json"

    assert push(dispatcher.endpoint_url, body, secret(controller)).status_code == 202

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "completed"
    assert final["result_key"] == f"results/{body['task_guid']}/output.json"


def test_push_whose_result_key_is_outside_its_prefix_is_refused(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip(ECHO, top="echo-skill"), {})
    body["result"]["key"] = "results/another-task/output.json"

    response = push(dispatcher.endpoint_url, body, secret(controller))

    assert response.status_code == 400
    assert "result.key" in response.json()


def test_skill_that_succeeds_uploads_its_result_and_completes(controller, store, dispatcher):
    body = task_body(
        controller,
        store,
        skill_zip(ECHO, top="echo-skill"),
        {"name": "Ada"},
        result_headers={"Authorization": "Bearer upload-token"},
    )
    response = push(dispatcher.endpoint_url, body, secret(controller))

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "task_guid": body["task_guid"]}
    final = controller.final_callback(body["task_guid"])
    assert statuses(controller, body["task_guid"]) == ["running", "completed"]
    assert final["exit_code"] == 0
    assert final["error_message"] == ""
    assert final["result_key"] == f"results/{body['task_guid']}/result.json"
    upload = store.uploads[f"{body['task_guid']}/result.json"]
    result = upload.json()
    assert result["echo"] == {"name": "Ada"}
    assert result["guid"] == body["task_guid"]
    # A clean environment: only these variables reach the skill.
    assert set(result["env"]) - {"LC_CTYPE", "PWD", "SHLVL", "_"} == {
        "HOME", "KOHAKKU_TASK_GUID", "LANG", "PATH"
    }  # fmt: skip
    assert not Path(result["home"]).exists()  # the private directory is removed afterwards
    assert final["result_metadata"]["sha256"] == hashlib.sha256(upload.body).hexdigest()
    assert final["result_metadata"]["size_bytes"] == len(upload.body)
    # Exactly the headers the push named, and the callback's own credentials only there.
    assert upload.headers["authorization"] == "Bearer upload-token"
    callback = controller.callbacks[-1]
    assert callback.headers["authorization"] == f"Bearer {body['callback_token']}"


def test_upload_carries_no_authorization_when_the_push_gives_none(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('[1, 2]')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    assert controller.final_callback(body["task_guid"])["status"] == "completed"
    upload = store.uploads[f"{body['task_guid']}/result.json"]
    assert "authorization" not in upload.headers
    assert upload.json() == [1, 2]


def test_the_demo_skill_greets(controller, store, dispatcher):
    body = task_body(controller, store, demo_skill_package("hello"), {"name": "Ada"})
    push(dispatcher.endpoint_url, body, secret(controller))

    assert controller.final_callback(body["task_guid"])["status"] == "completed"
    result = store.uploads[f"{body['task_guid']}/result.json"].json()
    assert result["greeting"] == "Hello, Ada!"


@pytest.mark.parametrize(
    ("headers_secret", "timestamp", "reason"),
    [
        ("wrong-secret", None, "mismatch"),
        (None, int(time.time()) - 3600, "expired"),
    ],
)
def test_push_with_a_bad_signature_is_refused(
    controller, store, dispatcher, headers_secret, timestamp, reason
):
    body = task_body(controller, store, skill_zip("print('{}')"))
    response = push(
        dispatcher.endpoint_url, body, headers_secret or secret(controller), timestamp=timestamp
    )

    assert response.status_code == 401
    assert response.json()["reason"] == reason
    time.sleep(0.2)
    assert controller.callbacks_for(body["task_guid"]) == []
    assert store.downloads == 0


def test_push_without_signature_headers_is_refused(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('{}')"))
    response = httpx.post(dispatcher.endpoint_url + "/tasks/", json=body)

    assert response.status_code == 401
    assert response.json()["reason"] == "missing"


def test_body_changed_after_signing_is_refused(controller, store, dispatcher):

    body = task_body(controller, store, skill_zip("print('{}')"))
    raw = json.dumps(body).encode()
    headers = sign_request(secret(controller), raw)
    tampered = raw.replace(b'"timeout_seconds": 30', b'"timeout_seconds": 31')
    response = httpx.post(dispatcher.endpoint_url + "/tasks/", content=tampered, headers=headers)

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{not json", "non_field_errors"),
        (b"[1, 2]", "non_field_errors"),
        (b'{"task_guid": "not-a-uuid"}', "task_guid"),
    ],
)
def test_malformed_push_is_a_400_naming_the_field(controller, dispatcher, payload, field):
    response = push(dispatcher.endpoint_url, payload, secret(controller))

    assert response.status_code == 400
    assert field in response.json()


def test_push_with_a_missing_field_names_it(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('{}')"))
    del body["callback_token"]
    response = push(dispatcher.endpoint_url, body, secret(controller))

    assert response.status_code == 400
    assert response.json() == {"callback_token": ["must be a non-empty string"]}


def test_push_for_an_unsupported_backend_is_refused(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('{}')"))
    body["backend"] = "k8s"
    response = push(dispatcher.endpoint_url, body, secret(controller))

    assert response.status_code == 400
    assert "backend" in response.json()


def test_oversize_push_is_a_413(controller, make_dispatcher):
    dispatcher = make_dispatcher(max_push_bytes=1000)
    response = push(dispatcher.endpoint_url, b"{" + b" " * 2000 + b"}", secret(controller))

    assert response.status_code == 413


def test_repeated_push_is_answered_without_running_twice(controller, store, dispatcher, tmp_path):
    marker = tmp_path / "runs.txt"
    script = f"""
    import time
    with open({str(marker)!r}, "a") as handle:
        handle.write("run\\n")
    time.sleep(0.3)
    print("{{}}")
    """
    body = task_body(controller, store, skill_zip(script))

    first = push(dispatcher.endpoint_url, body, secret(controller))
    again = push(dispatcher.endpoint_url, body, secret(controller))
    controller.final_callback(body["task_guid"])
    after_end = push(dispatcher.endpoint_url, body, secret(controller))

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert after_end.status_code == 200
    assert after_end.json()["state"] == "completed"
    time.sleep(0.2)
    assert marker.read_text() == "run\n"
    assert statuses(controller, body["task_guid"]) == ["running", "completed"]


def test_idempotency_key_must_match_the_body(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('{}')"))
    response = push(
        dispatcher.endpoint_url, body, secret(controller), idempotency_key=f"{uuid.uuid4()}:1"
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()


def test_at_capacity_the_dispatcher_answers_429(controller, store, make_dispatcher):
    dispatcher = make_dispatcher(capacity=1)
    first = task_body(controller, store, skill_zip("import time; time.sleep(30)"))
    second = task_body(controller, store, skill_zip("print('{}')"))

    assert push(dispatcher.endpoint_url, first, secret(controller)).status_code == 202
    response = push(dispatcher.endpoint_url, second, secret(controller))

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert controller.callbacks_for(second["task_guid"]) == []


def test_package_with_the_wrong_hash_fails_without_running(controller, store, dispatcher, tmp_path):
    marker = tmp_path / "ran"
    script = f"open({str(marker)!r}, 'w').close(); print('{{}}')"
    body = task_body(controller, store, skill_zip(script), content_hash="0" * 64)
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert "package hash mismatch" in final["error_message"]
    assert "0" * 64 in final["error_message"]
    assert not marker.exists()


def test_package_download_is_retried_after_errors_that_may_pass(controller, store, dispatcher):
    store.download_failures = [503, 502, 429]
    body = task_body(controller, store, skill_zip("print('{}')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    assert controller.final_callback(body["task_guid"])["status"] == "completed"
    assert store.download_attempts == 4


def test_package_download_gives_up_after_its_attempts(controller, store, make_dispatcher):
    dispatcher = make_dispatcher(download_attempts=2)
    store.download_failures = [503] * 5
    body = task_body(controller, store, skill_zip("print('{}')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "package download failed with HTTP 503"
    assert store.download_attempts == 2


def test_package_download_refused_for_good_is_not_retried(controller, store, dispatcher):
    store.download_failures = [403]
    body = task_body(controller, store, skill_zip("print('{}')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "package download failed with HTTP 403"
    assert store.download_attempts == 1


def test_non_zero_exit_fails_with_the_exit_code_and_stderr_tail(controller, store, dispatcher):
    script = """
    import sys
    sys.stderr.write("x" * 1000 + "\\nboom: the last words\\n")
    sys.exit(3)
    """
    body = task_body(controller, store, skill_zip(script))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["exit_code"] == 3
    assert final["error_message"].startswith("exited with code 3")
    assert final["error_message"].endswith("boom: the last words")
    # Only the tail (stderr_tail_bytes=200) is kept.
    assert len(final["error_message"]) < 300


def test_non_json_stdout_fails_with_a_clear_error(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('hello, not json')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["exit_code"] == 0
    assert final["error_message"].startswith("stdout is not valid JSON")
    assert store.uploads == {}


def test_oversize_stdout_fails_and_stops_the_skill(controller, store, dispatcher):
    script = """
    import sys, time
    while True:
        sys.stdout.write("[" * 65536)
        sys.stdout.flush()
    """
    body = task_body(controller, store, skill_zip(script))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "output is larger than the 65536 byte limit"
    assert store.uploads == {}


def test_missing_entrypoint_fails_with_the_reason(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('{}')", entrypoint=None))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "SKILL.md declares no metadata.entrypoint"


def test_entrypoint_that_cannot_start_fails(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip(entrypoint="./no-such-program"))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"].startswith("entrypoint could not start")


def test_timeout_fails_after_killing_the_process_group(controller, store, dispatcher, tmp_path):
    pid_file = tmp_path / "child.pid"
    script = f"""
    import subprocess, time
    child = subprocess.Popen(["sleep", "60"])
    with open({str(pid_file)!r}, "w") as handle:
        handle.write(str(child.pid))
    time.sleep(60)
    """
    body = task_body(controller, store, skill_zip(script), timeout_seconds=1)
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "timed out after 1 s"
    assert final["exit_code"] is None
    wait_for(lambda: pid_is_gone(int(pid_file.read_text())), 5, "the grandchild to die")


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(controller, store, dispatcher):
    script = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
    """
    body = task_body(controller, store, skill_zip(script), timeout_seconds=0.5)
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "timed out after 0.5 s"


def test_cancel_stops_a_running_task(controller, store, dispatcher, tmp_path):
    pid_file = tmp_path / "skill.pid"
    script = f"""
    import os, time
    with open({str(pid_file)!r}, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(60)
    """
    body = task_body(controller, store, skill_zip(script))
    push(dispatcher.endpoint_url, body, secret(controller))
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the skill to start")

    cancel_path = f"/tasks/{body['task_guid']}/cancel/"
    response = push(dispatcher.endpoint_url, b"", secret(controller), path=cancel_path)

    assert response.status_code == 202
    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "cancelled"
    assert statuses(controller, body["task_guid"]) == ["running", "cancelled"]
    assert pid_is_gone(int(pid_file.read_text()))
    again = push(dispatcher.endpoint_url, b"", secret(controller), path=cancel_path)
    assert again.status_code == 200
    assert again.json()["state"] == "cancelled"


def test_cancel_needs_a_signature_and_answers_200_for_an_unknown_task(controller, dispatcher):
    guid = str(uuid.uuid4())
    path = f"/tasks/{guid}/cancel/"
    assert httpx.post(dispatcher.endpoint_url + path, content=b"").status_code == 401

    response = push(dispatcher.endpoint_url, b"", secret(controller), path=path)

    # The contract: 2xx for a task the dispatcher does not know, or the controller retries.
    assert response.status_code == 200
    assert response.json() == {
        "status": "unknown",
        "task_guid": guid,
        "detail": "no such task on this dispatcher; nothing to cancel",
    }


def test_callbacks_are_retried_while_the_controller_is_down(controller, store, dispatcher):
    body = task_body(controller, store, skill_zip("print('{\"ok\": true}')"))
    controller.stop()

    response = push(dispatcher.endpoint_url, body, secret(controller))
    assert response.status_code == 202
    # The skill runs and uploads to the store; only the callbacks wait for the controller.
    wait_for(lambda: f"{body['task_guid']}/result.json" in store.uploads, what="upload")
    time.sleep(0.5)  # several retry rounds against a closed port
    assert body["task_guid"] in dispatcher.tasks.running_task_guids()

    controller.start()

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "completed"
    assert statuses(controller, body["task_guid"]) == ["running", "completed"]
    wait_for(lambda: dispatcher.tasks.running_task_guids() == [], what="task to be reported")


def test_callbacks_are_retried_on_server_errors(controller, store, dispatcher):
    controller.callback_answers["completed"] = 503
    body = task_body(controller, store, skill_zip("print('{}')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    wait_for(
        lambda: sum(c.body["status"] == "completed" for c in controller.callback_attempts) >= 3,
        what="three refused deliveries",
    )
    controller.callback_answers.clear()

    assert controller.final_callback(body["task_guid"])["status"] == "completed"


def test_definitive_refusal_stops_the_retries(controller, store, dispatcher):
    controller.callback_answers["completed"] = 409
    body = task_body(controller, store, skill_zip("print('{}')"))
    push(dispatcher.endpoint_url, body, secret(controller))

    wait_for(lambda: dispatcher.tasks.running_task_guids() == [], what="the task to be dropped")
    time.sleep(0.5)
    attempts = [c for c in controller.callback_attempts if c.body["status"] == "completed"]
    assert len(attempts) == 1


def test_refused_running_callback_stops_the_task(controller, store, dispatcher):
    controller.callback_answers["running"] = 409
    body = task_body(controller, store, skill_zip("import time; time.sleep(60)"))
    push(dispatcher.endpoint_url, body, secret(controller))

    wait_for(
        lambda: any(c.body["status"] == "cancelled" for c in controller.callback_attempts),
        what="the task to be stopped",
    )


def _zip_with(entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("SKILL.md", skill_md("python3 run.py"))
        archive.writestr("run.py", "print('{}')")
        for name, content, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, content)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("../../escaped.txt", b"pwned", 0o100644)], "escapes the package root"),
        ([("/tmp/absolute.txt", b"pwned", 0o100644)], "is an absolute path"),
        ([("dir\\evil.txt", b"pwned", 0o100644)], "has an invalid name"),
        ([("link", b"/etc/passwd", 0o120777)], "is a link or special file"),
        ([("a.txt", b"1", 0o100644), ("A.TXT", b"2", 0o100644)], "is duplicated"),
        ([(".", b"1", 0o100644)], "package entry '.' has an invalid name"),
        (
            [("a", b"1", 0o100644), ("a/b", b"2", 0o100644)],
            "package entry 'a/b' clashes with another entry",
        ),
        (
            [("a/b", b"1", 0o100644), ("a", b"2", 0o100644)],
            "package entry 'a' clashes with another entry",
        ),
    ],
)
def test_hostile_package_is_refused(controller, store, dispatcher, tmp_path, entries, reason):
    body = task_body(controller, store, _zip_with(entries))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert reason in final["error_message"]
    # A package error, not a dispatcher error, and no local path leaks to the controller.
    assert not final["error_message"].startswith("dispatcher error")
    assert "kohakku-task-" not in final["error_message"]
    assert not Path("/tmp/absolute.txt").exists()
    assert not any(
        (parent / "escaped.txt").exists() for parent in (Path("/tmp"), Path(os.sep), tmp_path)
    )


def test_package_bomb_is_refused_while_extracting(controller, store, make_dispatcher):
    dispatcher = make_dispatcher(max_extracted_bytes=100_000)
    # 10 MB of zeros compresses to ~10 KB: the size is only known by decompressing.
    body = task_body(controller, store, _zip_with([("zeros.bin", b"\0" * 10_000_000, 0o100644)]))
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"] == "package expands to more than 100000 bytes"


def test_package_that_is_not_a_zip_fails(controller, store, dispatcher):
    body = task_body(controller, store, b"this is not a zip file")
    push(dispatcher.endpoint_url, body, secret(controller))

    final = controller.final_callback(body["task_guid"])
    assert final["status"] == "failed"
    assert final["error_message"].startswith("package is not a valid zip file")


@pytest.mark.parametrize("length", ["abc", "-5", "1_0"])
def test_bad_content_length_is_a_400(dispatcher, length):
    host, port = dispatcher.server.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            f"POST /tasks/ HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        answer = sock.recv(4096)

    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert b"Content-Length" in answer


def test_unknown_paths_are_404_and_health_shows_no_secret(controller, dispatcher):
    assert (
        push(dispatcher.endpoint_url, b"{}", secret(controller), path="/nope/").status_code == 404
    )
    health = httpx.get(dispatcher.endpoint_url + "/health/")

    assert health.status_code == 200
    assert health.json()["dispatcher_guid"] == controller.checkin_answers[0]["dispatcher_guid"]
    assert secret(controller) not in health.text


def test_newer_attempt_supersedes_the_running_one(controller, store, dispatcher, tmp_path):
    pid_file = tmp_path / "attempt1.pid"
    slow = f"""
    import os, time
    with open({str(pid_file)!r}, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(60)
    """
    first = task_body(controller, store, skill_zip(slow))
    assert push(dispatcher.endpoint_url, first, secret(controller)).status_code == 202
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="attempt 1 to start")

    second = task_body(
        controller, store, skill_zip("print('2')"), task_guid=first["task_guid"], attempt=2
    )
    assert push(dispatcher.endpoint_url, second, secret(controller)).status_code == 202
    stale = push(dispatcher.endpoint_url, first, secret(controller))

    final = controller.final_callback(first["task_guid"])
    assert final["status"] == "completed"
    assert store.uploads[f"{first['task_guid']}/result.json"].body.strip() == b"2"
    assert stale.status_code == 200
    wait_for(lambda: pid_is_gone(int(pid_file.read_text())), 5, "attempt 1 to be killed")
    time.sleep(0.3)
    assert "cancelled" not in statuses(controller, first["task_guid"])


def test_older_attempt_is_refused_while_a_newer_one_runs(controller, store, dispatcher):
    guid = str(uuid.uuid4())
    newer = task_body(
        controller, store, skill_zip("import time; time.sleep(60)"), task_guid=guid, attempt=3
    )
    older = task_body(controller, store, skill_zip("print('{}')"), task_guid=guid, attempt=2)
    assert push(dispatcher.endpoint_url, newer, secret(controller)).status_code == 202

    response = push(dispatcher.endpoint_url, older, secret(controller))

    assert response.status_code == 409
    assert response.json()["task_guid"] == guid
