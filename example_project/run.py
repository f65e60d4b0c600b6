"""Run the example controller stack in the foreground until Ctrl-C.

Started by ``make run`` after migrations and seeding. Each entry of ``PROCESSES`` is one
child process; when any of them exits, or on Ctrl-C / SIGTERM, all are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PORT = os.environ.get("PORT", "8000")

PROCESSES: dict[str, list[str]] = {
    "web": [str(BIN / "gunicorn"), "--config=gunicorn.conf.py"],
    "scheduler": [str(BIN / "python"), "manage.py", "kohakku_scheduler"],
}


def main() -> int:
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, command in PROCESSES.items():
        children[name] = subprocess.Popen(command, cwd=HERE)
        print(f"[run] started {name} (pid {children[name].pid})", flush=True)
    print(f"[run] controller on http://127.0.0.1:{PORT}/  (Ctrl-C stops everything)", flush=True)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"[run] {name} exited with {child.returncode}; stopping", flush=True)
                exit_code = child.returncode or 1
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
    print("[run] stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
