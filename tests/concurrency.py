"""Running requests at the same moment, for the race tests on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for ``i`` in ``range(count)``, each in its own thread, all released at
    the same moment; return what each returned, or the exception it raised. Each thread
    closes its own database connection."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except Exception as exc:  # reported through the results
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def run_all(work: list[Callable[[], Any]]) -> list[Any]:
    """Run each of ``work`` in its own thread, all released at the same moment; as
    :func:`run_together`."""
    return run_together(len(work), lambda index: work[index]())
