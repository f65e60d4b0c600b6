"""Run the example stack in the foreground until Ctrl-C: controller, scheduler, dispatcher.

Started by ``make run`` after migrations and seeding. The controller (gunicorn) and the
scheduler start first; the reference dispatcher starts once the controller answers its
health probe, with the demo client credentials from ``var/demo-credentials.json``. When
any process exits, or on Ctrl-C / SIGTERM, all are stopped.

Without ``KOHAKKU_CUSTOM_WEBHOOK_SECRET`` the demo secret is generated once into
``var/demo-webhook-secret`` and given to the controller, so that ``make demo`` can sign.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from demo.local import SECRET_ENV, demo_credentials, demo_webhook_secret, var_dir

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PORT = os.environ.get("PORT", "").strip() or "8000"
CONTROLLER_URL = f"http://127.0.0.1:{PORT}"
# Seconds to wait for the controller before giving up.
STARTUP_TIMEOUT = 60.0

SERVER_PROCESSES: dict[str, list[str]] = {
    "web": [str(BIN / "gunicorn"), "--config=gunicorn.conf.py"],
    "scheduler": [str(BIN / "python"), "manage.py", "kohakku_scheduler"],
}
DISPATCHER_COMMAND = [str(BIN / "python"), "-m", "dispatcher"]


def dispatcher_environment(base: dict[str, str]) -> dict[str, str]:
    """The reference dispatcher's settings; ``KOHAKKU_DISPATCHER_*`` already set win."""
    client = demo_credentials()["dispatcher_client"]
    defaults = {
        "KOHAKKU_DISPATCHER_CONTROLLER": CONTROLLER_URL,
        "KOHAKKU_DISPATCHER_CLIENT_ID": client["client_id"],
        "KOHAKKU_DISPATCHER_CLIENT_SECRET": client["client_secret"],
        "KOHAKKU_DISPATCHER_NAME": "demo-dispatcher",
        # Port 0: any free port; the dispatcher tells the controller which one at check-in.
        "KOHAKKU_DISPATCHER_LISTEN": "127.0.0.1:0",
        "KOHAKKU_DISPATCHER_STATE_DIR": str(var_dir() / "dispatcher"),
        "KOHAKKU_DISPATCHER_HEARTBEAT_INTERVAL": "10",
    }
    return {**defaults, **base}


def controller_answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    environment = dict(os.environ)
    environment[SECRET_ENV] = demo_webhook_secret(create=True)

    def start(name: str, command: list[str], env: dict[str, str]) -> None:
        children[name] = subprocess.Popen(command, cwd=HERE, env=env)
        print(f"[run] started {name} (pid {children[name].pid})", flush=True)

    def check_children() -> int:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"[run] {name} exited with {child.returncode}; stopping", flush=True)
                return child.returncode or 1
        return 0

    for name, command in SERVER_PROCESSES.items():
        start(name, command, environment)
    exit_code = 0
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not stopping and not controller_answers(CONTROLLER_URL):
        if exit_code := check_children():
            stopping = True
        elif time.monotonic() > deadline:
            print(f"[run] the controller did not answer on {CONTROLLER_URL}", flush=True)
            exit_code, stopping = 1, True
        else:
            time.sleep(0.2)
    if not stopping:
        start("dispatcher", DISPATCHER_COMMAND, dispatcher_environment(environment))
        print(
            f"[run] controller on {CONTROLLER_URL}/  (Ctrl-C stops everything)\n"
            "[run] try the demo in another terminal:  make demo"
            + (f" PORT={PORT}" if PORT != "8000" else "")
            + "\n[run]   (a signed custom webhook 'demo.hello' -> the 'hello' skill -> its result)",
            flush=True,
        )
    while not stopping:
        if exit_code := check_children():
            stopping = True
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    print("[run] stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
