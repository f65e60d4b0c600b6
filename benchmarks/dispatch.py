"""How fast tasks move from queued to pushed, with one and with three schedulers.

Run: ``.venv/bin/python benchmarks/dispatch.py [--tasks 2000] [--latency-tasks 200]``

It creates a throw-away PostgreSQL database, starts three fast stub dispatchers on loopback
(they accept every push at once) and ``kohakku_scheduler`` processes, then prints:

* the baseline: signed pushes/s straight from a thread pool to the stubs (the HTTP ceiling);
* for 1 and 3 schedulers: tasks/s from a committed batch of queued tasks to the last push;
* for 1 and 3 schedulers: creation-to-push latency p50/p99 for tasks created one at a time
  (each its own transaction, so each goes through the NOTIFY wake-up path);
* peak memory of this process and of the largest scheduler process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from _common import (
    StubDispatcher,
    make_dispatcher,
    make_skill,
    peak_memory_mb,
    percentile,
    setup_database,
    start_schedulers,
    stop_processes,
)


def baseline(stubs: list[StubDispatcher], secret: str, count: int) -> float:
    """Signed pushes/s with no database and no scheduler: the ceiling of the stubs + HTTP."""
    import httpx

    from kohakku_controller.signing import sign_request

    body = json.dumps({"task_guid": "0", "attempt": 1, "input": {"i": 0}, "pad": "x" * 900})
    client = httpx.Client(limits=httpx.Limits(max_connections=64))

    def push(n: int) -> None:
        payload = body.replace('"0"', f'"baseline-{n}"', 1).encode()
        headers = {"Content-Type": "application/json", **sign_request(secret, payload)}
        client.post(stubs[n % len(stubs)].url + "/tasks/", content=payload, headers=headers)

    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(push, range(count)))
    elapsed = time.perf_counter() - started
    client.close()
    return count / elapsed


def arrivals(stubs: list[StubDispatcher]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for stub in stubs:
        with stub.lock:
            merged.update(stub.arrivals)
    return merged


def wait_for_pushes(stubs: list[StubDispatcher], count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while len(arrivals(stubs)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(arrivals(stubs))} of {count} pushes arrived")
        time.sleep(0.02)


def reset(stubs: list[StubDispatcher]) -> None:
    from kohakku_controller.tasks.models import Task

    Task.objects.all().delete()
    for stub in stubs:
        with stub.lock:
            stub.arrivals.clear()


def run(schedulers: int, stubs: list[StubDispatcher], tasks: int, latency_tasks: int) -> dict:
    from django.db import transaction

    from kohakku_controller.tasks.models import Task
    from kohakku_controller.tasks.services import create_task

    reset(stubs)
    processes = start_schedulers(schedulers)
    try:
        time.sleep(3)  # let them start and go idle (LISTENing)
        with transaction.atomic():
            for n in range(tasks):
                create_task(skill="bench", input={"i": n})
        committed = time.time()
        wait_for_pushes(stubs, tasks)
        last = max(arrivals(stubs).values())
        throughput = tasks / (last - committed)
        assert Task.objects.filter(status="dispatched").count() == tasks

        reset(stubs)
        created: dict[str, float] = {}
        for n in range(latency_tasks):
            task = create_task(skill="bench", input={"latency": n})
            created[str(task.guid)] = task.created_at.timestamp()
            time.sleep(0.01)
        wait_for_pushes(stubs, latency_tasks)
        seen = arrivals(stubs)
        latencies = [(seen[guid] - at) * 1000 for guid, at in created.items()]
    finally:
        stop_processes(processes)
    return {
        "throughput": throughput,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "mean": statistics.fmean(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--latency-tasks", type=int, default=200)
    args = parser.parse_args()
    setup_database()
    make_skill()
    stubs = [StubDispatcher() for _ in range(3)]
    secret = ""
    for n, stub in enumerate(stubs):
        _, secret = make_dispatcher(f"stub-{n}", stub.url)
    ceiling = baseline(stubs, secret, args.tasks)
    for stub in stubs:
        stub.arrivals.clear()
    results = {n: run(n, stubs, args.tasks, args.latency_tasks) for n in (1, 3)}
    own, child = peak_memory_mb()
    print(
        f"dispatch benchmark: {args.tasks} tasks per throughput run, "
        f"{args.latency_tasks} for latency, 3 stub dispatchers on loopback"
    )
    print(f"  baseline  signed pushes straight to the stubs : {ceiling:8.0f} pushes/s")
    for n, result in results.items():
        print(
            f"  {n} scheduler{'s' if n > 1 else ' '}  queued -> pushed           "
            f": {result['throughput']:8.0f} tasks/s   creation->push p50 {result['p50']:6.1f} ms"
            f"  p99 {result['p99']:6.1f} ms"
        )
    print(f"  peak RSS: benchmark process {own:.0f} MiB, largest scheduler {child:.0f} MiB")
    for stub in stubs:
        stub.stop()


if __name__ == "__main__":
    main()
