"""Shared set-up for the benchmarks: a throw-away PostgreSQL database, stubs, statistics.

Needs PostgreSQL (``BENCH_DATABASE_URL``, default ``postgres://postgres@127.0.0.1:5432/postgres``
as the maintenance database); a database ``kohakku_bench_<pid>`` is created, migrated and
dropped at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PYTHONPATH = os.pathsep.join([str(HERE), str(ROOT / "example_project"), str(ROOT / "src")])


def setup_database() -> str:
    """Create and migrate a fresh database; configure Django for it; return its URL."""
    import psycopg

    base = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"kohakku_bench_{os.getpid()}"
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

    atexit.register(drop)
    os.environ["DATABASE_URL"] = url
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("KOHAKKU_VAR_DIR", tempfile.mkdtemp(prefix="kohakku-bench-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    for entry in reversed(PYTHONPATH.split(os.pathsep)):
        sys.path.insert(0, entry)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return url


def child_env() -> dict[str, str]:
    # Persistent database connections, as in production (see docs/scheduler.md).
    return {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "DJANGO_SETTINGS_MODULE": "bench_settings",
        "DJANGO_CONN_MAX_AGE": "60",
    }


def start_schedulers(count: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "kohakku_scheduler",
                "--poll-seconds=1",
                f"--name=bench-{n}",
            ],
            env=child_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for n in range(count)
    ]


def stop_processes(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


class StubDispatcher:
    """Accepts every push at once (202) and records when each arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                if self.path == "/tasks/":
                    guid = json.loads(raw)["task_guid"]
                    with stub.lock:
                        stub.arrivals.setdefault(guid, now)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def peak_memory_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest child, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def make_skill() -> Any:
    from kohakku_controller.skills.models import Skill, SkillVersion

    skill = Skill.objects.create(name="Bench", slug="bench")
    return SkillVersion.objects.create(
        skill=skill,
        version_number=1,
        content_hash="0" * 64,
        size=1,
        storage_ref="skills/bench/" + "0" * 64 + ".zip",
    )


def make_dispatcher(name: str, url: str, capacity: int = 1_000_000) -> tuple[Any, str]:
    from django.utils import timezone

    from kohakku_controller.dispatchers.models import Dispatcher
    from kohakku_controller.dispatchers.secrets import encrypt_secret, generate_signing_secret

    secret = generate_signing_secret()
    dispatcher = Dispatcher.objects.create(
        name=name,
        slug=name,
        endpoint_url=url,
        backends=["local"],
        capacity=capacity,
        heartbeat_interval_seconds=3600,
        signing_secret_encrypted=encrypt_secret(secret),
        last_heartbeat_at=timezone.now(),
    )
    return dispatcher, secret
