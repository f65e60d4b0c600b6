"""Dependency probes for ``/health/`` and ``/ready/``.

Each probe runs in its own daemon thread with a deadline, so a dependency that hangs can
never hang the probe endpoint. Results name the check, never the host behind it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connections

from ..storage import get_cache, get_storage


def check_database() -> None:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


def check_cache() -> None:
    cache = get_cache()
    key = f"kohakku:ready:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("value written was not read back")
    cache.delete(key)


def check_storage() -> None:
    get_storage().exists(".kohakku-ready-probe")


LIVENESS_PROBES: dict[str, Callable[[], None]] = {"database": check_database}
READINESS_PROBES: dict[str, Callable[[], None]] = {
    "database": check_database,
    "cache": check_cache,
    "storage": check_storage,
}


@dataclass
class ProbeResult:
    name: str
    ok: bool
    latency_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "status": "ok" if self.ok else "error",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.error:
            data["error"] = self.error
        return data


class _ProbeThread(threading.Thread):
    def __init__(self, name: str, probe: Callable[[], None]) -> None:
        super().__init__(name=f"kohakku-probe-{name}", daemon=True)
        self.probe = probe
        self.error: BaseException | None = None
        self.elapsed: float | None = None

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self.probe()
        except BaseException as exc:  # report every failure, whatever raised it
            self.error = exc
        finally:
            self.elapsed = time.perf_counter() - started


def run_probes(probes: dict[str, Callable[[], None]], timeout: float) -> list[ProbeResult]:
    """Run every probe at once; each gets ``timeout`` seconds from the common start."""
    threads = {name: _ProbeThread(name, probe) for name, probe in probes.items()}
    started = time.perf_counter()
    for thread in threads.values():
        thread.start()
    results = []
    for name, thread in threads.items():
        thread.join(max(0.0, timeout - (time.perf_counter() - started)))
        if thread.is_alive() or thread.elapsed is None:
            results.append(ProbeResult(name, False, timeout * 1000, f"timed out after {timeout} s"))
        elif thread.error is not None:
            # The exception class says what failed without leaking hosts or credentials.
            results.append(
                ProbeResult(name, False, thread.elapsed * 1000, type(thread.error).__name__)
            )
        else:
            results.append(ProbeResult(name, True, thread.elapsed * 1000))
    return results
