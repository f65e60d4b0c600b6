"""Delete finished tasks older than the retention period, with their events and results."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import CommandError

from kohakku_controller.tasks.retention import PruneReport, prune_tasks

from ._retention import RetentionCommand


class Command(RetentionCommand):
    help = (
        "Delete tasks that ended more than --days ago (default: TASK_RETENTION_DAYS), with "
        "their events and result files. Queued and running tasks are kept."
    )
    noun = "finished tasks"
    retention_setting = "TASK_RETENTION_DAYS"

    report: PruneReport

    def prune(self, older_than: timedelta, *, dry_run: bool) -> int:
        self.report = prune_tasks(older_than=older_than, dry_run=dry_run)
        return self.report.tasks

    def finish(self, *, dry_run: bool) -> None:
        if dry_run:
            return
        self.stdout.write(f"Deleted {self.report.result_files} result file(s).")
        failed = self.report.failed_files
        if failed:
            raise CommandError(
                f"{len(failed)} result file(s) could not be deleted; their tasks are kept for "
                f"the next run (see the log): {', '.join(failed[:10])}"
            )
