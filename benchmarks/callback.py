"""Callback throughput and latency beside the ceiling of a trivial endpoint, same server.

Run: ``.venv/bin/python benchmarks/callback.py [--requests 1500] [--rounds 3]``

It creates a throw-away PostgreSQL database, claims ``--requests`` x ``--rounds`` tasks for a
dispatcher (so each has a callback token), serves the controller with gunicorn on loopback,
then sends:

1. ``GET /trivial/`` (a plain Django view: the floor of this server and client);
2. ``POST /trivial/api/`` with the callback's body (the controller's stack doing nothing: a
   DRF view, its JSON parser and renderer; the stack's own ceiling, as the heartbeat
   benchmark's authenticated no-op is for the heartbeat);
3. one signed ``completed`` callback per task (token lookup, HMAC check, conditional
   update, event insert).

The three alternate over ``--rounds`` rounds; it prints the median requests/s and the
p50/p99 latency of each, the callback's ratio to both ceilings, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from _common import (
    ROOT,
    child_env,
    make_dispatcher,
    make_skill,
    peak_memory_mb,
    percentile,
    setup_database,
    stop_processes,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, workers: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "gunicorn") if (ROOT / ".venv").exists() else "gunicorn",
            "example_project.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            f"--workers={workers}",
            # As the example project serves: threads overlap the callback's database waits.
            "--worker-class=gthread",
            "--threads=4",
            "--no-control-socket",
            "--log-level=warning",
        ],
        env=child_env(),
        cwd=ROOT,
    )
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/trivial/", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_processes([process])
    raise SystemExit("the server did not start")


def load(requests: list, concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    """Send every (method, url, body, headers_fn) request; return rate, latencies, codes."""
    import httpx

    client = httpx.Client(limits=httpx.Limits(max_connections=concurrency * 2), timeout=30)
    codes: dict[int, int] = {}

    def send(request) -> float:
        method, url, body, headers_fn = request
        headers = headers_fn(body) if headers_fn else {}
        started = time.perf_counter()
        response = client.request(method, url, content=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        codes[response.status_code] = codes.get(response.status_code, 0) + 1
        return elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(send, requests))
    rate = len(requests) / (time.perf_counter() - started)
    client.close()
    return rate, latencies, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="per endpoint and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three endpoints")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_database()

    from django.db import transaction
    from django.utils import timezone

    from kohakku_controller.signing import sign_request
    from kohakku_controller.tasks.scheduler import Scheduler
    from kohakku_controller.tasks.services import create_task

    total = args.requests * args.rounds
    make_skill()
    _, secret = make_dispatcher("bench", "http://127.0.0.1:9")
    with transaction.atomic():
        for n in range(total):
            create_task(skill="bench", input={"n": n})
    claims = []
    with Scheduler(name="bench-claimer", batch_size=500) as scheduler:
        while len(claims) < total:
            batch, _ = scheduler.claim_and_assign(timezone.now())
            claims += batch

    body = json.dumps({"status": "completed", "exit_code": 0, "result_metadata": {}}).encode()

    def json_headers(raw: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    def signer(token: str):
        def headers(raw: bytes) -> dict[str, str]:
            return {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                **sign_request(secret, raw),
            }

        return headers

    port = free_port()
    server = start_server(port, args.workers)
    base = f"http://127.0.0.1:{port}"
    plain = [("GET", f"{base}/trivial/", b"", None)] * args.requests
    stack = [("POST", f"{base}/trivial/api/", body, json_headers)] * args.requests
    callbacks = [
        ("POST", f"{base}/api/v1/tasks/{c.task.guid}/callback/", body, signer(c.callback_token))
        for c in claims
    ]
    names = ("plain Django view", "controller's stack", "callback")
    results: dict[str, list[tuple[float, list[float], dict[int, int]]]] = {n: [] for n in names}
    try:
        load(plain[:100] + stack[:100], args.concurrency)  # warm up the workers
        # Rounds alternate the endpoints, so a machine that speeds up or slows down during
        # the run weighs on all three alike.
        for number in range(args.rounds):
            own = callbacks[number * args.requests : (number + 1) * args.requests]
            for name, requests in zip(names, (plain, stack, own), strict=True):
                results[name].append(load(requests, args.concurrency))
    finally:
        stop_processes([server])
    own_rss, child_rss = peak_memory_mb()
    print(
        f"callback benchmark: {args.rounds} rounds x {args.requests} requests per endpoint, "
        f"concurrency {args.concurrency}, gunicorn {args.workers} workers x 4 threads, PostgreSQL"
    )
    paths = {
        "plain Django view": "GET /trivial/",
        "controller's stack": "POST /trivial/api/",
        "callback": "POST …/callback/",
    }
    rates = {}
    for name in names:
        runs = results[name]
        rates[name] = statistics.median(rate for rate, _, _ in runs)
        latencies = [value for _, run_latencies, _ in runs for value in run_latencies]
        codes: dict[int, int] = {}
        for _, _, run_codes in runs:
            for code, count in run_codes.items():
                codes[code] = codes.get(code, 0) + count
        each = ", ".join(f"{rate:.0f}" for rate, _, _ in runs)
        print(
            f"  {name:<19} {paths[name]:<20}: {rates[name]:6.0f} req/s (rounds: {each})  "
            f"p50 {percentile(latencies, 50):6.1f} ms  p99 {percentile(latencies, 99):6.1f} ms  "
            f"{codes}"
        )
        if name == "callback" and codes != {200: total}:
            sys.exit("some callbacks were not answered 200")
    for name in names[:2]:
        print(f"  callback / {name:<19}: {rates['callback'] / rates[name]:6.0%}")
    print(f"  peak RSS: benchmark process {own_rss:.0f} MiB, largest child {child_rss:.0f} MiB")


if __name__ == "__main__":
    main()
