"""Reference dispatcher: push latency and end-to-end task time on loopback.

Starts, in this process, the fake controller and store of the test suite and one reference
dispatcher, then sends signed pushes of a trivial skill and measures:

- push: signed ``POST /tasks/`` answered 202 (the controller's scheduler waits for this);
- end to end: push sent -> final ``completed`` callback received (download, hash check,
  extraction, process start, upload, two callbacks);
- repeated push: the same pushes again, answered 200 by an idle dispatcher (signature,
  validation and HTTP only). Pushes during the run compete for CPU with the skills.

The baseline is a bare ``ThreadingHTTPServer`` answering 202 to the same requests, so the
numbers show what the dispatcher adds on top of Python's HTTP stack. Peak memory is the
maximum resident set size of this process (and of the skill processes, reported apart).

Run from the repository root: ``.venv/bin/python benchmarks/dispatcher_tasks.py [N]``.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]

from dispatcher import Dispatcher  # noqa: E402
from kohakku_controller.signing import sign_request  # noqa: E402
from tests.dispatcher.conftest import fast_config, skill_zip  # noqa: E402
from tests.dispatcher.fakes import FakeController, FakeStore, task_body  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float], elapsed: float) -> None:
    print(
        f"{name:<28} n={len(latencies):<5} {len(latencies) / elapsed:8.1f}/s  "
        f"p50={statistics.median(latencies) * 1000:7.2f} ms  "
        f"p99={percentile(latencies, 0.99) * 1000:7.2f} ms"
    )


class _Accept(BaseHTTPRequestHandler):
    # The same socket settings as the dispatcher's handler, so only the work differs.
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"status": "accepted"}'
        self.send_response(202)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def time_pushes(client: httpx.Client, url: str, bodies: list[bytes], secret: str) -> list[float]:
    latencies = []
    for raw in bodies:
        headers = {"Content-Type": "application/json", **sign_request(secret, raw)}
        started = time.perf_counter()
        response = client.post(url, content=raw, headers=headers)
        latencies.append(time.perf_counter() - started)
        assert response.status_code in (200, 202), response.text
    return latencies


def main(count: int = 200) -> None:
    controller, store = FakeController(), FakeStore()
    controller.start()
    store.start()
    package = skill_zip("import json, sys; print(json.dumps(json.load(sys.stdin)))")
    with tempfile.TemporaryDirectory() as state_dir:
        config = fast_config(controller, Path(state_dir), capacity=count, heartbeat_interval=60)
        dispatcher = Dispatcher(config).start()
        secret = controller.secret_of("test-dispatcher")
        bodies = [
            json.dumps(task_body(controller, store, package, {"n": i})).encode()
            for i in range(count)
        ]
        guids = [json.loads(raw)["task_guid"] for raw in bodies]

        baseline = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
        threading.Thread(target=baseline.serve_forever, daemon=True).start()
        with httpx.Client() as client:
            started = time.perf_counter()
            base = time_pushes(
                client, f"http://127.0.0.1:{baseline.server_address[1]}/tasks/", bodies, secret
            )
            report("baseline http.server 202", base, time.perf_counter() - started)

            sent_at: dict[str, float] = {}
            started = time.perf_counter()
            latencies = []
            for guid, raw in zip(guids, bodies, strict=True):
                sent_at[guid] = time.perf_counter()
                latencies += time_pushes(client, dispatcher.endpoint_url + "/tasks/", [raw], secret)
            report("dispatcher push (202)", latencies, time.perf_counter() - started)

        done: dict[str, float] = {}
        while len(done) < count and time.perf_counter() - started < 300:
            for guid in guids:
                if guid not in done and any(
                    body["status"] == "completed" for body in controller.callbacks_for(guid)
                ):
                    done[guid] = time.perf_counter()
            time.sleep(0.01)
        end_to_end = [done[guid] - sent_at[guid] for guid in done]
        report("push -> completed callback", end_to_end, max(done.values()) - started)
        # Idle dispatcher: the same pushes again are answered 200 without running anything,
        # which isolates signature check, validation and HTTP from the skills' CPU use.
        with httpx.Client() as client:
            started = time.perf_counter()
            repeated = time_pushes(client, dispatcher.endpoint_url + "/tasks/", bodies, secret)
            report("dispatcher repeated push", repeated, time.perf_counter() - started)
        failed = count - len(done)
        if failed:
            print(f"!! {failed} tasks did not complete")
        baseline.shutdown()
        dispatcher.stop()
    controller.stop()
    store.stop()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: this process {own:.1f} MiB; largest skill process {children:.1f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
