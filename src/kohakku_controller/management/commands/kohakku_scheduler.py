"""``manage.py kohakku_scheduler``: run the task scheduler (``--once`` for one pass)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from kohakku_controller.tasks.scheduler import Scheduler


class Command(BaseCommand):
    help = "Claim queued tasks and push them to dispatchers (any number of replicas may run)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Run a single pass and exit.")
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--poll-seconds", type=float, default=None)
        parser.add_argument("--concurrency", type=int, default=None, help="Pushes in flight.")
        parser.add_argument("--name", default=None, help="Name recorded on claims.")

    def handle(self, *args: Any, **options: Any) -> None:
        with Scheduler(
            name=options["name"],
            batch_size=options["batch_size"],
            push_concurrency=options["concurrency"],
        ) as scheduler:
            if options["once"]:
                scheduler.reconcile_on_startup()
                report = scheduler.run_pass()
                self.stdout.write(
                    f"claimed={report.claimed} pushed={report.pushed} "
                    f"push_failed={report.push_failed} unmatched={report.unmatched} "
                    f"released={report.released} timed_out={report.timed_out} "
                    f"lost_dispatchers={report.lost_dispatchers}"
                )
                return
            stop = threading.Event()

            def request_stop(*_: object) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)
            self.stdout.write(f"scheduler {scheduler.name} running")
            scheduler.run_forever(stop, poll_seconds=options["poll_seconds"])
            self.stdout.write("scheduler stopped")
