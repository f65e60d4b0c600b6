"""The dispatcher as a real process (``python -m dispatcher``), and its configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from demo.skill_packages import demo_skill_package
from dispatcher.config import config_from_args
from tests.dispatcher.conftest import SKILL_PATH
from tests.dispatcher.fakes import CLIENT_ID, CLIENT_SECRET, free_port, push, task_body, wait_for

EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "example_project"


def test_dispatcher_process_runs_the_demo_skill_and_stops_on_sigterm(controller, store, tmp_path):
    port = free_port()
    env = {
        "PATH": SKILL_PATH,
        "HOME": str(tmp_path),
        "KOHAKKU_DISPATCHER_CLIENT_SECRET": CLIENT_SECRET,
        "KOHAKKU_DISPATCHER_HEARTBEAT_INTERVAL": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "--controller",
            controller.url,
            "--client-id",
            CLIENT_ID,
            "--name",
            "process-1",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=EXAMPLE_PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: controller.heartbeats, what="the process to check in and heartbeat")
        assert controller.checkins[0]["endpoint_url"] == f"http://127.0.0.1:{port}"
        body = task_body(controller, store, demo_skill_package("hello"), {"name": "Grace"})
        response = push(f"http://127.0.0.1:{port}", body, controller.secret_of("process-1"))
        assert response.status_code == 202
        assert controller.final_callback(body["task_guid"])["status"] == "completed"
        result = store.uploads[f"{body['task_guid']}/result.json"].json()
        assert result["greeting"] == "Hello, Grace!"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output.decode()
    assert b"stopped" in output
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["signing_secret"] == controller.secret_of("process-1")


def test_missing_credentials_are_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "--controller", "http://127.0.0.1:9"],
        cwd=EXAMPLE_PROJECT,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"--client-id" in result.stderr


def test_flags_win_over_environment_variables():
    environ = {
        "KOHAKKU_DISPATCHER_CONTROLLER": "http://env:8000/",
        "KOHAKKU_DISPATCHER_CLIENT_ID": "env-id",
        "KOHAKKU_DISPATCHER_CLIENT_SECRET": "env-secret",
        "KOHAKKU_DISPATCHER_NAME": "env-name",
        "KOHAKKU_DISPATCHER_CAPACITY": "7",
        "KOHAKKU_DISPATCHER_LISTEN": "10.0.0.5:9000",
        "KOHAKKU_DISPATCHER_LABEL": "gpu=a100,zone=b",
        "KOHAKKU_DISPATCHER_REQUEST_DEADLINE": "12.5",
        "KOHAKKU_DISPATCHER_SECRET_RECOVERY_INTERVAL": "0",
    }
    config, level = config_from_args(["--name", "flag-name", "--kill-grace", "2.5"], environ)

    assert config.controller_url == "http://env:8000"
    assert config.name == "flag-name"
    assert config.capacity == 7
    assert config.kill_grace == 2.5
    assert config.request_deadline == 12.5
    assert config.secret_recovery_interval == 0
    assert (config.listen_host, config.listen_port) == ("10.0.0.5", 9000)
    assert config.labels == {"gpu": "a100", "zone": "b"}
    assert level == "INFO"


@pytest.mark.parametrize(
    "argv",
    [
        ["--capacity", "many"],
        ["--listen", "no-port"],
        ["--label", "novalue"],
        ["--request-deadline", "0"],
        ["--secret-recovery-interval", "-1"],
        ["--secret-recovery-interval", "nan"],
    ],
)
def test_bad_flags_are_usage_errors(argv):
    environ = {
        "KOHAKKU_DISPATCHER_CONTROLLER": "http://c",
        "KOHAKKU_DISPATCHER_CLIENT_ID": "i",
        "KOHAKKU_DISPATCHER_CLIENT_SECRET": "s",
        "KOHAKKU_DISPATCHER_NAME": "n",
    }
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv, environ)
    assert exc.value.code == 2


def test_demo_skill_declares_name_description_and_entrypoint():
    text = (EXAMPLE_PROJECT / "demo" / "skills" / "hello" / "SKILL.md").read_text()
    front = yaml.safe_load(text.split("---")[1])

    assert front["name"] == "hello"
    assert front["description"]
    assert front["metadata"]["entrypoint"] == "python3 hello.py"
