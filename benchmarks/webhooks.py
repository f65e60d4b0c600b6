"""Webhook ingest benchmark: requests/s and p50/p99 latency, routed vs unrouted deliveries.

Starts the example project under gunicorn on loopback (2 workers x 4 threads, as
``make run`` does) against PostgreSQL on 127.0.0.1 (its own database, emptied first),
seeds one skill and six workflows (five that do not match first), then sends signed
GitHub ``pull_request`` deliveries with a 2 kB body:

* closed loop: ``--requests`` requests from ``--concurrency`` client threads, as fast as
  the server answers (throughput ceiling);
* open loop: ``--rate`` requests/s for ``--seconds`` s; latency is measured from each
  request's scheduled send time, so a slow server cannot hide queueing delay. The load
  generator's own lateness is printed beside it ("lag p99"); its threads and keep-alive
  clients are all started before anything is measured.

Each scenario runs beside the same measurement of the trivial endpoint ``GET /health/``
(one ``SELECT 1``), the ceiling of this stack on this machine. Peak memory is the sum of
the server processes' peak RSS (VmHWM). Bounded and self-contained; not part of the tests.

    .venv/bin/python benchmarks/webhooks.py
    .venv/bin/python benchmarks/webhooks.py --database-url sqlite
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
SECRET = "bench-github-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_postgres_database(url: str) -> None:
    """Create the benchmark's database afresh, so an older schema never gets in the way."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def prepare(env: dict[str, str]) -> None:
    """Migrate and seed in this process, with the same settings the server will use."""
    os.environ.update(env)
    sys.path[:0] = [str(EXAMPLE), str(ROOT)]
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from kohakku_controller.skills.models import Skill, SkillVersion
    from kohakku_controller.tasks.models import Task
    from kohakku_controller.webhooks.models import Delivery
    from kohakku_controller.workflows.models import Workflow

    Delivery.objects.all().delete()
    Workflow.objects.all().delete()
    Task.objects.all().delete()
    skill, _ = Skill.objects.get_or_create(name="bench", defaults={"slug": "bench"})
    SkillVersion.objects.get_or_create(
        skill=skill,
        version_number=1,
        defaults={"content_hash": "0" * 64, "size": 1, "storage_ref": "skills/bench/0.zip"},
    )
    # A few non-matching workflows first, so routing does real work.
    for index in range(5):
        Workflow.objects.create(
            name=f"Other {index}",
            slug=f"other-{index}",
            priority=index,
            source="github",
            event="pull_request",
            conditions=[f"payload.repository.full_name == 'org/other-{index}'"],
            skill=skill,
        )
    Workflow.objects.create(
        name="Triage",
        slug="triage",
        priority=100,
        source="github",
        event="pull_request",
        conditions=[
            "payload.repository.full_name == 'org/repo'",
            "contains(['opened', 'reopened'], payload.action)",
        ],
        input_template="{repo: payload.repository.full_name, number: payload.number}",
        skill=skill,
    )
    from django.db import connections

    connections.close_all()


def signed_delivery(action: str, index: int) -> tuple[bytes, dict[str, str]]:
    payload = {
        "action": action,
        "number": index,
        "repository": {"full_name": "org/repo"},
        "pull_request": {"title": f"PR {index}", "body": "x" * 2000},
    }
    body = json.dumps(payload).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "1",
        "X-Hub-Signature-256": f"sha256={digest}",
    }


class Load:
    """Keep-alive clients on threads started (and connected) before anything is measured.

    Creating an ``httpx.Client`` loads the CA bundle: tens of milliseconds of CPU. Done by
    each new pool thread during a measurement, it stalled the load generator itself at the
    start of every scenario, and those stalls showed up as the server's tail latency.
    """

    def __init__(self, base: str, *, closed_threads: int, open_threads: int = 64) -> None:
        self.base = base
        self.local = threading.local()
        self.errors = 0
        self.lags: list[float] = []
        self.closed_pool = self._started_pool(closed_threads)
        self.open_pool = self._started_pool(open_threads)

    def _started_pool(self, size: int) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(size)
        ready = threading.Barrier(size)

        def start_thread(_: int) -> None:
            self.client()
            ready.wait()  # every thread of the pool exists, with its client

        list(pool.map(start_thread, range(size)))
        return pool

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.base, timeout=30)
        return self.local.client

    def send(self, request: tuple[str, bytes | None, dict[str, str]]) -> None:
        path, body, headers = request
        client = self.client()
        response = (
            client.get(path) if body is None else client.post(path, content=body, headers=headers)
        )
        if response.status_code != 200:
            self.errors += 1
            if self.errors <= 3:
                print(f"  ! {response.status_code} {response.text[:200]}", file=sys.stderr)

    def closed_loop(self, requests: list) -> tuple[float, list[float]]:
        latencies: list[float] = []

        def one(request):
            started = time.perf_counter()
            self.send(request)
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        list(self.closed_pool.map(one, requests))
        return len(requests) / (time.perf_counter() - started), latencies

    def open_loop(self, requests: list, rate: float) -> tuple[float, list[float]]:
        latencies: list[float] = []
        self.lags = []

        def one(request, scheduled):
            self.lags.append(time.perf_counter() - scheduled)
            self.send(request)
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter() + 0.2
        futures = []
        for index, request in enumerate(requests):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.open_pool.submit(one, request, scheduled))
        for future in futures:
            future.result()
        return len(requests) / (time.perf_counter() - start), latencies

    def close(self) -> None:
        self.closed_pool.shutdown()
        self.open_pool.shutdown()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def peak_rss_mib(pid: int) -> float:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    total = 0
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/kohakku_bench_webhooks",
        help="PostgreSQL database (created if missing), or 'sqlite' for SQLite in a temp "
        "dir served by one worker thread (SQLite takes one writer at a time)",
    )
    parser.add_argument("--requests", type=int, default=600, help="closed-loop requests")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kohakku-bench-"))
    (workdir / "static").mkdir()
    env = {
        "KOHAKKU_VAR_DIR": str(workdir),
        "KOHAKKU_GITHUB_WEBHOOK_SECRET": SECRET,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DJANGO_CONN_MAX_AGE": "60",
        "DJANGO_DEBUG": "0",
    }
    sqlite = args.database_url == "sqlite"
    if not sqlite:
        ensure_postgres_database(args.database_url)
        env["DATABASE_URL"] = args.database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    prepare(env)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            f"--config={ROOT / 'benchmarks' / 'gunicorn_quiet.conf.py'}",
            "example_project.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            f"--workers={1 if sqlite else args.workers}",
            f"--threads={1 if sqlite else args.threads}",
            "--log-level=warning",
        ],
        cwd=EXAMPLE,
        env={**os.environ, **env, "PYTHONPATH": f"{EXAMPLE}:{ROOT}"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)

        load = Load(base, closed_threads=args.concurrency)
        load_at_start = os.getloadavg()[0]
        # Warm up every worker thread (imports, connections, compiled expressions).
        load.closed_loop([("/api/v1/webhooks/", *signed_delivery("opened", -i)) for i in range(40)])
        load.closed_loop([("/health/", None, {})] * 40)

        def deliveries(action: str, count: int) -> list:
            return [("/api/v1/webhooks/", *signed_delivery(action, i)) for i in range(count)]

        open_count = int(args.rate * args.seconds)
        scenarios = [
            ("trivial GET /health/", "closed", [("/health/", None, {})] * args.requests),
            ("routed delivery", "closed", deliveries("opened", args.requests)),
            ("unrouted delivery", "closed", deliveries("closed", args.requests)),
            ("trivial GET /health/", "open", [("/health/", None, {})] * open_count),
            ("routed delivery", "open", deliveries("opened", open_count)),
            ("unrouted delivery", "open", deliveries("closed", open_count)),
        ]
        shape = (
            "1 worker x 1 thread, SQLite"
            if sqlite
            else f"{args.workers} workers x {args.threads} threads, PostgreSQL"
        )
        print(f"webhook ingest benchmark: gunicorn {shape}, {os.cpu_count()} CPUs")
        # "client lag": how late the load generator itself sent (open loop), a part of p99.
        print(
            f"{'scenario':<24}{'load':<22}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'lag p99 ms':>12}"
        )
        for name, mode, requests in scenarios:
            errors_before = load.errors
            if mode == "closed":
                rate, latencies = load.closed_loop(requests)
                label = f"closed, {args.concurrency} clients"
            else:
                rate, latencies = load.open_loop(requests, args.rate)
                label = f"open, {args.rate:g} req/s"
            failed = load.errors - errors_before
            lag = f"{percentile(load.lags, 99):>12.1f}" if mode == "open" else f"{'-':>12}"
            print(
                f"{name:<24}{label:<22}{len(requests):>9}{rate:>9.1f}"
                f"{percentile(latencies, 50):>9.1f}{percentile(latencies, 99):>9.1f}{lag}"
                + (f"  ({failed} non-200)" if failed else "")
            )
        print(f"server peak RSS (master + workers): {peak_rss_mib(server.pid):.0f} MiB")
        print(
            "load average at start / end: "
            f"{load_at_start:.2f} / {os.getloadavg()[0]:.2f} "
            "(client and server share the machine's CPUs)"
        )
        load.close()
        return 1 if load.errors else 0
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
