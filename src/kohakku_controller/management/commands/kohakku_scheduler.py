"""``manage.py kohakku_scheduler``: run the task scheduler (``--once`` for one pass)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from kohakku_controller.conf import kohakku_settings
from kohakku_controller.tasks.scheduler import Scheduler

from ._arguments import checked, float_range, int_range, label

MAX_BATCH_SIZE = 10_000
MAX_CONCURRENCY = 1_000
# Below this a scheduler with nothing to do would poll the database in a busy loop.
MIN_POLL_SECONDS = 0.1
MAX_POLL_SECONDS = 86_400.0
MAX_NAME_LENGTH = 200  # Task.claimed_by

#: The tuning options: flag, what it parses to, and its help.
OPTIONS = [
    (
        "--batch-size",
        int_range(1, MAX_BATCH_SIZE),
        f"Tasks claimed per pass, 1 to {MAX_BATCH_SIZE} (default: SCHEDULER_BATCH_SIZE).",
    ),
    (
        "--poll-seconds",
        float_range(MIN_POLL_SECONDS, MAX_POLL_SECONDS),
        f"Longest wait between passes, {MIN_POLL_SECONDS:g} to {MAX_POLL_SECONDS:g} "
        "(default: SCHEDULER_POLL_SECONDS).",
    ),
    (
        "--concurrency",
        int_range(1, MAX_CONCURRENCY),
        f"Pushes in flight, 1 to {MAX_CONCURRENCY} (default: SCHEDULER_PUSH_CONCURRENCY).",
    ),
    (
        "--name",
        label(MAX_NAME_LENGTH),
        "Name recorded on claims (default: host:pid:random).",
    ),
]


class Command(BaseCommand):
    help = "Claim queued tasks and push them to dispatchers (any number of replicas may run)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Run a single pass and exit.")
        for flag, parse, help_text in OPTIONS:
            parser.add_argument(flag, type=parse, default=None, help=help_text)

    def handle(self, *args: Any, **options: Any) -> None:
        # Options passed to call_command() as keywords bypass the argparse types.
        for flag, parse, _ in OPTIONS:
            key = flag.removeprefix("--").replace("-", "_")
            if options.get(key) is not None:
                options[key] = checked(flag, options[key], parse)
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
                    f"push_failed={report.push_failed} push_deferred={report.push_deferred} "
                    f"unmatched={report.unmatched} "
                    f"released={report.released} timed_out={report.timed_out} "
                    f"lost_dispatchers={report.lost_dispatchers}"
                )
                return
            stop = threading.Event()

            def request_stop(*_: object) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)
            # Dispatchers call back, upload and download at this address: a wrong one shows
            # only as tasks that never report, so it is said at start.
            self.stdout.write(
                f"scheduler {scheduler.name} running; dispatchers are told to reach the "
                f"controller at {kohakku_settings.PUBLIC_BASE_URL}"
            )
            scheduler.run_forever(stop, poll_seconds=options["poll_seconds"])
            self.stdout.write("scheduler stopped")
