"""Check-in, the stored signing secret, heartbeats and token refresh."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from dispatcher import Dispatcher
from dispatcher.controller import ControllerError
from tests.dispatcher.conftest import fast_config, skill_zip
from tests.dispatcher.fakes import push, task_body, wait_for

SLEEPER = """
import time
time.sleep(30)
"""


def test_checkin_sends_the_documented_body_and_stores_the_secret_owner_only(
    controller, make_dispatcher, tmp_path
):
    dispatcher = make_dispatcher(labels={"zone": "a"}, capacity=3)

    assert len(controller.checkins) == 1
    body = controller.checkins[0]
    assert body == {
        "name": "test-dispatcher",
        "endpoint_url": dispatcher.endpoint_url,
        "cloud": "local",
        "backends": ["local"],
        "labels": {"zone": "a"},
        "heartbeat_interval_seconds": 1,
        "capacity": 3,
    }
    state_file = tmp_path / "state" / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.parent.stat().st_mode) == 0o700
    stored = json.loads(state_file.read_text())
    assert stored["signing_secret"] == controller.secret_of("test-dispatcher")
    assert stored["dispatcher_guid"] == controller.checkin_answers[0]["dispatcher_guid"]


def test_restart_keeps_the_secret_without_rotating(controller, store, make_dispatcher):
    first = make_dispatcher()
    secret = controller.secret_of("test-dispatcher")
    first.stop()

    second = make_dispatcher()

    assert [answer["action"] for answer in controller.checkin_answers] == ["created", "updated"]
    assert "rotate_secret" not in controller.checkins[1]
    assert controller.secret_of("test-dispatcher") == secret
    body = task_body(controller, store, skill_zip("print('{}')"))
    assert push(second.endpoint_url, body, secret).status_code == 202


def test_lost_state_file_makes_the_dispatcher_ask_for_a_new_secret(
    controller, store, make_dispatcher, tmp_path
):
    first = make_dispatcher()
    old_secret = controller.secret_of("test-dispatcher")
    first.stop()
    (tmp_path / "state" / "state.json").unlink()

    second = make_dispatcher()

    assert controller.checkins[-1].get("rotate_secret") is True
    new_secret = controller.secret_of("test-dispatcher")
    assert new_secret != old_secret
    stored = json.loads((tmp_path / "state" / "state.json").read_text())
    assert stored["signing_secret"] == new_secret
    body = task_body(controller, store, skill_zip("print('{}')"))
    assert push(second.endpoint_url, body, new_secret).status_code == 202
    assert push(second.endpoint_url, body, old_secret).status_code == 401


def test_state_file_of_another_controller_is_not_trusted(
    controller, make_dispatcher, tmp_path: Path
):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(
        json.dumps(
            {
                "controller_url": "http://elsewhere.invalid",
                "name": "test-dispatcher",
                "dispatcher_guid": "x",
                "signing_secret": "not-for-this-controller",
            }
        )
    )
    make_dispatcher()
    # Created fresh here, so the controller returned the secret on creation.
    stored = json.loads((state_dir / "state.json").read_text())
    assert stored["signing_secret"] == controller.secret_of("test-dispatcher")
    assert stored["controller_url"] == controller.url


def test_heartbeats_report_running_tasks_and_free_capacity(controller, store, make_dispatcher):
    dispatcher = make_dispatcher(capacity=3)
    body = task_body(controller, store, skill_zip(SLEEPER))
    assert (
        push(dispatcher.endpoint_url, body, controller.secret_of("test-dispatcher")).status_code
        == 202
    )

    beat = wait_for(
        lambda: next(
            (b for b in controller.heartbeats if b["running_tasks"] == [body["task_guid"]]), None
        ),
        what="a heartbeat listing the task",
    )
    assert beat["guid"] == controller.checkin_answers[0]["dispatcher_guid"]
    assert beat["free_capacity"] == 2

    push(
        dispatcher.endpoint_url,
        b"{}",
        controller.secret_of("test-dispatcher"),
        path=f"/tasks/{body['task_guid']}/cancel/",
    )
    controller.final_callback(body["task_guid"])
    count = len(controller.heartbeats)
    idle = wait_for(
        lambda: next((b for b in controller.heartbeats[count:] if b["running_tasks"] == []), None),
        what="a heartbeat after the task ended",
    )
    assert idle["free_capacity"] == 3


def test_expired_token_is_fetched_again(controller, make_dispatcher):
    make_dispatcher()
    wait_for(lambda: controller.heartbeats, what="first heartbeat")
    assert controller.token_requests == 1

    controller.expire_tokens()
    count = len(controller.heartbeats)

    wait_for(lambda: len(controller.heartbeats) > count, what="heartbeat with a new token")
    assert controller.token_requests == 2


def test_dispatcher_forgotten_by_the_controller_checks_in_again(controller, make_dispatcher):
    make_dispatcher()
    wait_for(lambda: controller.heartbeats, what="first heartbeat")
    with controller.lock:
        controller.dispatchers.clear()

    wait_for(lambda: len(controller.checkins) == 2, what="second check-in")
    new_guid = controller.checkin_answers[-1]["dispatcher_guid"]
    wait_for(
        lambda: any(b["guid"] == new_guid for b in controller.heartbeats),
        what="heartbeat under the new guid",
    )


def test_wrong_client_credentials_stop_the_start(controller, tmp_path):
    dispatcher = Dispatcher(
        fast_config(controller, tmp_path / "state", client_secret="wrong-secret")
    )
    with pytest.raises(ControllerError) as exc:
        dispatcher.start()
    dispatcher.stop()

    assert exc.value.status_code == 401
    assert controller.checkins == []


def test_start_waits_for_a_controller_that_is_not_up_yet(controller, tmp_path):
    controller.stop()
    dispatcher = Dispatcher(fast_config(controller, tmp_path / "state"))
    starter = threading.Thread(target=dispatcher.start)
    starter.start()
    try:
        wait_for(lambda: dispatcher.server is not None, what="the dispatcher to bind")
        assert controller.checkins == []
        controller.start()
        starter.join(timeout=10)
        assert not starter.is_alive()
        assert len(controller.checkins) == 1
    finally:
        dispatcher.stop()


# -- a secret rotated by an operator ---------------------------------------------------------


def operator_rotates(controller, name: str = "test-dispatcher") -> str:
    """What ``POST dispatchers/{guid}/rotate-secret/`` does: the controller signs with a
    secret the dispatcher has not been given."""
    with controller.lock:
        controller.dispatchers[name].secret = secret = "operator-" + "0" * 24
    return secret


def rotating_checkins(controller) -> list[dict]:
    with controller.lock:
        return [body for body in controller.checkins if body.get("rotate_secret") is True]


def test_pushes_signed_with_an_operator_rotated_secret_make_the_dispatcher_rotate_its_own(
    controller, store, make_dispatcher, tmp_path
):
    dispatcher = make_dispatcher()
    leaked = controller.secret_of("test-dispatcher")
    operator_secret = operator_rotates(controller)
    body = task_body(controller, store, skill_zip("print('{}')"))

    refused = push(dispatcher.endpoint_url, body, operator_secret)

    assert refused.status_code == 401
    assert refused.json()["reason"] == "mismatch"
    wait_for(lambda: rotating_checkins(controller), what="a check-in asking for a new secret")
    new_secret = wait_for(
        lambda: (
            dispatcher.state.signing_secret
            if dispatcher.state.signing_secret == controller.secret_of("test-dispatcher")
            else None
        ),
        what="the new secret taken up",
    )
    assert new_secret not in (leaked, operator_secret)
    stored = json.loads((tmp_path / "state" / "state.json").read_text())
    assert stored["signing_secret"] == new_secret
    # The secret the operator rotated away from no longer passes; the new one does.
    assert push(dispatcher.endpoint_url, body, leaked).status_code == 401
    assert push(dispatcher.endpoint_url, body, new_secret).status_code == 202
    controller.final_callback(body["task_guid"])


def test_a_newer_secret_written_into_the_state_file_is_taken_up_without_rotating(
    controller, store, make_dispatcher, tmp_path
):
    dispatcher = make_dispatcher()
    operator_secret = operator_rotates(controller)
    state_file = tmp_path / "state" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "signing_secret": operator_secret}))
    body = task_body(controller, store, skill_zip("print('{}')"))

    assert push(dispatcher.endpoint_url, body, operator_secret).status_code == 401
    wait_for(
        lambda: dispatcher.state.signing_secret == operator_secret,
        what="the state file's secret taken up",
    )

    assert push(dispatcher.endpoint_url, body, operator_secret).status_code == 202
    assert rotating_checkins(controller) == []
    controller.final_callback(body["task_guid"])


def test_secret_recovery_happens_at_most_once_per_interval(controller, store, make_dispatcher):
    dispatcher = make_dispatcher(secret_recovery_interval=300)
    body = task_body(controller, store, skill_zip("print('{}')"))

    assert push(dispatcher.endpoint_url, body, "forged-1").status_code == 401
    wait_for(lambda: rotating_checkins(controller), what="the first recovery")
    assert push(dispatcher.endpoint_url, body, "forged-2").status_code == 401
    assert push(dispatcher.endpoint_url, body, "forged-3").status_code == 401
    # A recovery starts before the refusal is answered: had these started one, its
    # check-in would reach the (local) controller well within this wait.
    threading.Event().wait(1.0)

    assert len(rotating_checkins(controller)) == 1


@pytest.mark.parametrize(
    ("interval", "timestamp"),
    [(0, None), (300, 1)],
    ids=["recovery-turned-off", "stale-signature"],
)
def test_no_recovery_when_turned_off_or_for_signatures_that_are_not_a_mismatch(
    controller, store, make_dispatcher, interval, timestamp
):
    dispatcher = make_dispatcher(secret_recovery_interval=interval)
    body = task_body(controller, store, skill_zip("print('{}')"))
    secret = "forged" if timestamp is None else controller.secret_of("test-dispatcher")

    assert push(dispatcher.endpoint_url, body, secret, timestamp=timestamp).status_code == 401
    threading.Event().wait(1.0)

    assert rotating_checkins(controller) == []
    assert dispatcher.state.signing_secret == controller.secret_of("test-dispatcher")
