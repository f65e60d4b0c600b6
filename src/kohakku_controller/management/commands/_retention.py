"""The shape of the retention commands: delete what is older than ``--days``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kohakku_controller.conf import kohakku_settings

from ._arguments import MAX_DAYS, checked, float_range


class RetentionCommand(BaseCommand):
    """Deletes ``noun`` older than ``--days`` (default: the setting ``retention_setting``)."""

    #: The plural the command deletes, as its output names it ("deliveries").
    noun: str
    #: The controller setting that holds the default retention in days.
    retention_setting: str

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=float_range(0, MAX_DAYS),
            default=None,
            help=f"Retention in days, 0 to {MAX_DAYS} (default: {self.retention_setting}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args: Any, days: float | None, dry_run: bool, **options: Any) -> None:
        if days is None:
            name, days = self.retention_setting, getattr(kohakku_settings, self.retention_setting)
        else:
            name = "--days"
        days = checked(name, days, float_range(0, MAX_DAYS))
        count = self.prune(timedelta(days=days), dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(f"{verb} {count} {self.noun} older than {days:g} days.")
        self.finish(dry_run=dry_run)

    def prune(self, older_than: timedelta, *, dry_run: bool) -> int:
        """Delete (or with ``dry_run`` count) what is older than ``older_than``."""
        raise NotImplementedError

    def finish(self, *, dry_run: bool) -> None:
        """Report more after the count (raise ``CommandError`` for a partial failure)."""
