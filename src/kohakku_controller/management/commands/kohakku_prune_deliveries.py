"""Delete webhook deliveries older than the retention period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kohakku_controller.conf import kohakku_settings
from kohakku_controller.webhooks.services import prune_deliveries


class Command(BaseCommand):
    help = (
        "Delete webhook deliveries received more than --days ago "
        "(default: WEBHOOK_DELIVERY_RETENTION_DAYS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=None, help="Retention in days.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args: Any, days: float | None, dry_run: bool, **options: Any) -> None:
        if days is None:
            days = kohakku_settings.WEBHOOK_DELIVERY_RETENTION_DAYS
        if days is None or days < 0:
            raise CommandError("Retention must be zero or more days.")
        count = prune_deliveries(older_than=timedelta(days=days), dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(f"{verb} {count} deliveries older than {days:g} days.")
