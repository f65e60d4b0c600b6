"""Heartbeat throughput and latency under the production server, on PostgreSQL.

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432, user postgres)::

    .venv/bin/python benchmarks/heartbeat.py

What it does, and undoes:

1. creates a throw-away PostgreSQL database and migrates it;
2. registers many simulated dispatchers (``--dispatchers``) owned by a few OAuth2 clients,
   each with an access token carrying the ``dispatchers`` scope;
3. starts the example project under gunicorn (gthread workers, persistent database
   connections, as in production) on a free loopback port;
4. drives it with a load generator (Python threads, one keep-alive connection each):
   rounds of ``POST /bench/ping/`` (a trivial authenticated endpoint: same middleware,
   OAuth2 token lookup, permission, parser and renderer, nothing else; the stack's own
   ceiling) alternating with rounds of heartbeats from randomly chosen dispatchers;
5. prints requests/s, p50/p99 latency, server CPU per request (gunicorn workers plus their
   PostgreSQL backends and the WAL writer), peak memory, the heartbeat/ceiling ratio, and
   the CPU that 10,000 dispatchers beating every 60 s use (sent open loop at that rate,
   after a bare Django view and the ceiling endpoint at the same rate), and the same again
   with a scheduler running beside them, as in production, its own CPU shown apart;
6. calls the same three endpoints in a separate process on Django's WSGI handler, without
   any server, and prints their CPU per request hot (back to back) and paced at the
   fleet's rate: what the code costs, and what this machine adds when a process wakes for
   each request;
7. stops gunicorn and drops the database, also on Ctrl-C or failure.

Timing depends on the machine; the ratio is what to compare between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SETTINGS_MODULE = "benchmarks.heartbeat_settings"
QUIET_GUNICORN_CONFIG = ROOT / "benchmarks" / "gunicorn_quiet.conf.py"
HEARTBEAT_TARGET_RATIO = 0.60
FLEET_SIZE, FLEET_INTERVAL = 10_000, 60


# --- database and server ----------------------------------------------------------------------


def admin_connection(server_url: str) -> Any:
    import psycopg

    return psycopg.connect(server_url, autocommit=True)


def environment(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "DJANGO_CONN_MAX_AGE": "600",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE), env.get("PYTHONPATH", "")]),
        }
    )
    env.pop("REDIS_URL", None)  # the heartbeat does not touch the cache
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health/")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not start serving in time")


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


def peak_rss_mib(pids: list[int]) -> float:
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


def backend_pids(admin: Any, database: str) -> list[int]:
    """The benchmark database's backends, and the WAL writer that flushes what they commit.

    A heartbeat commits without waiting for the disk, which hands the flush to the WAL
    writer; counting that process keeps the comparison with synchronous statements fair.
    """
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s OR backend_type = 'walwriter'",
        (database,),
    ).fetchall()
    return [row[0] for row in rows]


# --- seeding (runs in a child process with Django set up) -------------------------------------


def seed(dispatchers: int, clients: int) -> None:
    """Create ``clients`` OAuth2 clients with tokens and ``dispatchers`` dispatchers."""
    import secrets
    from datetime import timedelta

    import django

    django.setup()
    from django.utils import timezone
    from oauth2_provider.models import get_access_token_model, get_application_model

    from kohakku_controller.dispatchers.models import Dispatcher
    from kohakku_controller.dispatchers.secrets import encrypt_secret, generate_signing_secret

    application_model = get_application_model()
    token_model = get_access_token_model()
    now = timezone.now()
    tokens = []
    for index in range(clients):
        application = application_model.objects.create(
            name=f"bench-dispatchers-{index}",
            client_type=application_model.CLIENT_CONFIDENTIAL,
            authorization_grant_type=application_model.GRANT_CLIENT_CREDENTIALS,
            client_secret=secrets.token_urlsafe(24),
            hash_client_secret=False,
        )
        token = token_model.objects.create(
            application=application,
            token=secrets.token_urlsafe(32),
            expires=now + timedelta(hours=6),
            scope="dispatchers",
        )
        tokens.append((application.pk, token.token))
    ciphertext = encrypt_secret(generate_signing_secret())
    rows = [
        Dispatcher(
            name=f"bench-{index:06d}",
            slug=f"bench-{index:06d}",
            endpoint_url=f"http://10.0.{index // 250}.{index % 250}:8080",
            cloud="bench",
            backends=["local"],
            labels={"pool": f"p{index % 8}"},
            heartbeat_interval_seconds=60,
            application_id=tokens[index % clients][0],
            signing_secret_encrypted=ciphertext,
            last_heartbeat_at=now,
        )
        for index in range(dispatchers)
    ]
    Dispatcher.objects.bulk_create(rows, batch_size=1000)
    pairs = [
        (str(guid), tokens[index % clients][1])
        for index, guid in enumerate(
            Dispatcher.objects.order_by("name").values_list("guid", flat=True)
        )
    ]
    json.dump(pairs, sys.stdout)


# --- load generation ---------------------------------------------------------------------------


@dataclass
class Round:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    web_cpu_seconds: float
    db_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def web_ms_per_request(self) -> float:
        return 1000 * self.web_cpu_seconds / self.requests

    @property
    def db_ms_per_request(self) -> float:
        return 1000 * self.db_cpu_seconds / self.requests

    @property
    def cpu_ms_per_request(self) -> float:
        return self.web_ms_per_request + self.db_ms_per_request


def drive(
    port: int,
    requests: int,
    concurrency: int,
    make_request: Any,
    rate: float | None = None,
    reconnect: bool = False,
) -> tuple[float, list[float], int]:
    """Send ``requests`` requests from ``concurrency`` threads; return wall time and latencies.

    Without ``rate`` every thread sends as fast as answers come (closed loop, saturation).
    With ``rate`` request ``i`` is sent at ``start + i / rate`` (open loop, a steady fleet).
    With ``reconnect`` each request opens its own connection, as a client that calls once a
    minute does when nothing in front of the server keeps connections alive.
    """
    counter = iter(range(requests))
    started = [0.0]
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    start_gate = threading.Barrier(concurrency + 1)

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local: list[float] = []
        failed = 0
        rng = random.Random()
        start_gate.wait()
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            if rate is not None:
                delay = started[0] + index / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            path, body, headers = make_request(rng)
            began = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                if reconnect or response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            local.append((time.perf_counter() - began) * 1000)
            failed += not ok
        connection.close()
        with lock:
            latencies.extend(local)
            errors[0] += failed

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    started[0] = began = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, latencies, errors[0]


# --- in-process cost ------------------------------------------------------------------------

IN_PROCESS_HOT, IN_PROCESS_PACED = 2000, 1000


def in_process_costs(guid: str, token: str) -> dict[str, tuple[float, float]]:
    """CPU ms per request of each endpoint called on the WSGI handler, hot and paced."""
    import io

    import django

    django.setup()
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    body = json.dumps({"running_tasks": [], "free_capacity": 3}).encode()
    paths = {
        "plain view": "/bench/plain/",
        "ping (ceiling)": "/bench/ping/",
        "heartbeat": f"/api/v1/dispatchers/{guid}/heartbeat/",
    }

    def call(path: str) -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http",
        }
        statuses: list[str] = []
        response = application(environ, lambda status, headers: statuses.append(status))
        b"".join(response)
        response.close()
        if not statuses[0].startswith("200"):
            raise RuntimeError(f"{path} answered {statuses[0]}")

    def cpu_ms(path: str, count: int, pause: float) -> float:
        used = 0.0
        for _ in range(count):
            time.sleep(pause)
            began = time.process_time()
            call(path)
            used += time.process_time() - began
        return 1000 * used / count

    costs = {}
    for name, path in paths.items():
        cpu_ms(path, 200, 0)  # warm-up: connection, caches, code paths
        hot = cpu_ms(path, IN_PROCESS_HOT, 0)
        costs[name] = (hot, cpu_ms(path, IN_PROCESS_PACED, FLEET_INTERVAL / FLEET_SIZE))
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--dispatchers", type=int, default=FLEET_SIZE, help="dispatchers registered"
    )
    parser.add_argument("--clients", type=int, default=20, help="OAuth2 clients owning them")
    parser.add_argument("--requests", type=int, default=3000, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per endpoint")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--worker-class",
        default="gthread",
        choices=["gthread", "sync"],
        help="gunicorn worker class (sync: one request per connection, no threads)",
    )
    parser.add_argument(
        "--fleet-seconds", type=float, default=15, help="length of the steady-fleet phase"
    )
    parser.add_argument(
        "--fleet-reconnect",
        action="store_true",
        help="open a new connection for every request of the steady-fleet phase",
    )
    parser.add_argument("--seed-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-process-only", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.seed_only:
        seed(args.dispatchers, args.clients)
        return 0
    if args.in_process_only:
        print(json.dumps(in_process_costs(*args.in_process_only)))
        return 0

    database = f"kohakku_bench_heartbeat_{os.getpid()}"
    base, _, _ = args.server.rpartition("/")
    database_url = f"{base}/{database}"
    env = environment(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="kohakku-bench-"))
    env["KOHAKKU_VAR_DIR"] = str(workdir)
    admin = admin_connection(args.server)
    server: subprocess.Popen[bytes] | None = None

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    admin.execute(f'CREATE DATABASE "{database}"')
    try:
        print(f"database {database}: migrating and registering {args.dispatchers} dispatchers")
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            env=env,
            cwd=EXAMPLE,
            check=True,
        )
        seeded = subprocess.run(
            [sys.executable, __file__, "--seed-only",
             "--dispatchers", str(args.dispatchers), "--clients", str(args.clients)],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        pairs = json.loads(seeded.stdout)

        port = free_port()
        command = [
            str(BIN / "gunicorn"),
            f"--config={QUIET_GUNICORN_CONFIG}",
            "example_project.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            f"--workers={args.workers}",
            f"--worker-class={args.worker_class}",
            f"--threads={args.threads}",
            "--keep-alive=30",
            "--backlog=256",
            "--log-level=warning",
        ]
        server = subprocess.Popen(command, env=env, cwd=EXAMPLE)
        wait_until_serving(port, server)

        body = json.dumps({"running_tasks": [], "free_capacity": 3}).encode()

        def heartbeat_request(rng: random.Random) -> tuple[str, bytes, dict[str, str]]:
            guid, token = rng.choice(pairs)
            return f"/api/v1/dispatchers/{guid}/heartbeat/", body, _headers(token)

        def ping_request(rng: random.Random) -> tuple[str, bytes, dict[str, str]]:
            _guid, token = rng.choice(pairs)
            return "/bench/ping/", body, _headers(token)

        def plain_request(rng: random.Random) -> tuple[str, bytes, dict[str, str]]:
            return "/bench/plain/", body, _headers("unused")

        def _headers(token: str) -> dict[str, str]:
            return {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
            }

        # Warm-up: every worker thread opens its database connection, code paths get hot.
        for make in (ping_request, heartbeat_request):
            drive(port, args.concurrency * 20, args.concurrency, make)

        rounds: list[Round] = []
        for _ in range(args.rounds):
            for name, make in (("ping (ceiling)", ping_request), ("heartbeat", heartbeat_request)):
                workers, backends = children_of(server.pid), backend_pids(admin, database)
                web_before, db_before = cpu_seconds(workers), cpu_seconds(backends)
                seconds, latencies, errors = drive(port, args.requests, args.concurrency, make)
                web_used = cpu_seconds(workers) - web_before
                db_used = cpu_seconds(backends) - db_before
                rounds.append(
                    Round(name, args.requests, seconds, latencies, errors, web_used, db_used)
                )

        # A steady fleet: 10,000 dispatchers beating every 60 s, open loop; first a bare
        # Django view and the ceiling endpoint at the same rate: the stack's own cost there.
        fleet_rate = FLEET_SIZE / FLEET_INTERVAL
        count = int(fleet_rate * args.fleet_seconds)
        fleet: dict[str, Round] = {}
        phases = (
            ("plain view", plain_request),
            ("ping (ceiling)", ping_request),
            ("heartbeat", heartbeat_request),
        )

        def fleet_round(name: str, make: Any, beside: list[int]) -> tuple[Round, float]:
            """A steady-fleet round; also the cores the ``beside`` processes used meanwhile."""
            workers, backends = children_of(server.pid), backend_pids(admin, database)
            web_before, db_before = cpu_seconds(workers), cpu_seconds(backends)
            beside_before = cpu_seconds(beside)
            seconds, latencies, errors = drive(
                port, count, args.concurrency, make, rate=fleet_rate, reconnect=args.fleet_reconnect
            )
            web_used = cpu_seconds(workers) - web_before
            db_used = cpu_seconds(backends) - db_before
            beside_cores = (cpu_seconds(beside) - beside_before) / seconds
            return Round(name, count, seconds, latencies, errors, web_used, db_used), beside_cores

        for name, make in phases:
            fleet[name], _ = fleet_round(name, make, [])
        with scheduler_beside(env) as scheduler:
            fleet_with_scheduler = fleet_round("heartbeat", heartbeat_request, [scheduler.pid])
        worker_peak = peak_rss_mib(children_of(server.pid))
        measured = subprocess.run(
            [sys.executable, __file__, "--in-process-only", *pairs[0]],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        in_process = json.loads(measured.stdout.strip().splitlines()[-1])
        report(args, rounds, fleet, worker_peak, pairs, admin, in_process, fleet_with_scheduler)
        failed = sum(
            round_.errors for round_ in [*rounds, *fleet.values(), fleet_with_scheduler[0]]
        )
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            stop(server)
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"cleaned up: gunicorn stopped, database {database} dropped")


@contextlib.contextmanager
def scheduler_beside(env: dict[str, str]) -> Any:
    """A scheduler running as in production, every dispatcher online and nothing queued:
    what a registered fleet costs it."""
    # Every dispatcher online, as in a steady fleet: none is found lost during the phase.
    with admin_connection(env["DATABASE_URL"]) as bench:
        bench.execute("UPDATE kohakku_controller_dispatcher SET last_heartbeat_at = now()")
    scheduler = subprocess.Popen(
        [sys.executable, "manage.py", "kohakku_scheduler"],
        env=env,
        cwd=EXAMPLE,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)  # started, reconciled, past its first passes
        if scheduler.poll() is not None:
            raise RuntimeError(f"the scheduler exited with {scheduler.returncode}")
        yield scheduler
    finally:
        stop(scheduler)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s; nothing if it has exited."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def report(
    args: argparse.Namespace,
    rounds: list[Round],
    fleet: dict[str, Round],
    worker_peak: float,
    pairs: list[Any],
    admin: Any,
    in_process: dict[str, list[float]],
    fleet_with_scheduler: tuple[Round, float],
) -> None:
    stamped = admin.execute("SELECT 1").fetchone()  # admin connection still healthy
    assert stamped == (1,)
    print()
    print(
        f"gunicorn gthread {args.workers} workers x {args.threads} threads, PostgreSQL, "
        f"{len(pairs)} dispatchers / {args.clients} OAuth2 clients, "
        f"{args.concurrency} keep-alive client threads, {args.rounds} x {args.requests} "
        f"requests per endpoint, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'endpoint':<16}{'round':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'web cpu ms':>12}{'db cpu ms':>11}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    by_name: dict[str, list[Round]] = {}
    for round_ in rounds:
        by_name.setdefault(round_.name, []).append(round_)
        number = len(by_name[round_.name])
        print(
            f"{round_.name:<16}{number:>6}{round_.rate:>10.0f}{round_.percentile(0.5):>9.2f}"
            f"{round_.percentile(0.99):>9.2f}{round_.web_ms_per_request:>12.2f}"
            f"{round_.db_ms_per_request:>11.2f}{round_.errors:>8}"
        )
    summary = {}
    for name, group in by_name.items():
        latencies = [value for round_ in group for value in round_.latencies_ms]
        latencies.sort()
        summary[name] = {
            "rate": statistics.median(round_.rate for round_ in group),
            "p50": latencies[len(latencies) // 2],
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "web": statistics.median(round_.web_ms_per_request for round_ in group),
            "db": statistics.median(round_.db_ms_per_request for round_ in group),
            "cpu": statistics.median(round_.cpu_ms_per_request for round_ in group),
        }
    print("-" * len(header))
    for name, values in summary.items():
        print(
            f"{name:<16}{'median':>6}{values['rate']:>10.0f}{values['p50']:>9.2f}"
            f"{values['p99']:>9.2f}{values['web']:>12.2f}{values['db']:>11.2f}"
        )
    ceiling, heartbeat = summary["ping (ceiling)"], summary["heartbeat"]
    ratio = heartbeat["rate"] / ceiling["rate"]
    verdict = "meets" if ratio >= HEARTBEAT_TARGET_RATIO else "BELOW"
    print()
    print(
        f"heartbeat / ceiling throughput ratio: {ratio:.2f} "
        f"({verdict} the {HEARTBEAT_TARGET_RATIO:.0%} target)"
    )
    print(
        f"steady fleet: {FLEET_SIZE:,} dispatchers every {FLEET_INTERVAL} s, sent at "
        f"{FLEET_SIZE / FLEET_INTERVAL:.0f}/s for {fleet['heartbeat'].seconds:.0f} s, "
        + ("a new connection per request" if args.fleet_reconnect else "keep-alive connections")
    )
    cores = {
        name: (run.web_cpu_seconds + run.db_cpu_seconds) / run.seconds
        for name, run in fleet.items()
    }
    for name, run in fleet.items():
        print(
            f"  {name:<15} {run.rate:.0f} req/s, p50 {run.percentile(0.5):.2f} ms, "
            f"p99 {run.percentile(0.99):.2f} ms, {run.errors} errors; "
            f"CPU {cores[name]:.2f} of one core "
            f"(web workers {run.web_cpu_seconds / run.seconds:.2f}, PostgreSQL "
            f"{run.db_cpu_seconds / run.seconds:.2f}; {run.cpu_ms_per_request:.2f} ms per request)"
        )
    print(
        f"  of the heartbeat's {cores['heartbeat']:.2f} cores: the server and Django "
        f"{cores['plain view']:.2f}, authentication and DRF "
        f"{cores['ping (ceiling)'] - cores['plain view']:.2f}, the heartbeat's own work "
        f"{cores['heartbeat'] - cores['ping (ceiling)']:.2f}"
    )
    beside, scheduler_cores = fleet_with_scheduler
    served = (beside.web_cpu_seconds + beside.db_cpu_seconds) / beside.seconds
    print(
        f"  with a scheduler running (nothing queued): {beside.rate:.0f} req/s, {beside.errors} "
        f"errors; CPU {served + scheduler_cores:.2f} of one core (web workers and PostgreSQL "
        f"{served:.2f}, the scheduler process {scheduler_cores:.3f})"
    )
    print(
        f"in-process, no server ({IN_PROCESS_HOT} calls back to back, then {IN_PROCESS_PACED} "
        f"at {FLEET_SIZE / FLEET_INTERVAL:.0f}/s): CPU ms per request, hot / paced"
    )
    for name, (hot, paced) in in_process.items():
        print(
            f"  {name:<15} {hot:.2f} / {paced:.2f} (paced costs {paced / hot:.1f}x; served at "
            f"the fleet's rate, web workers only: {fleet[name].web_ms_per_request:.2f})"
        )
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: gunicorn worker {worker_peak:.0f} MiB, load generator {own_peak:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
