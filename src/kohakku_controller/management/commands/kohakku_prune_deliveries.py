"""Delete webhook deliveries older than the retention period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kohakku_controller.conf import kohakku_settings
from kohakku_controller.webhooks.services import prune_deliveries

from ._arguments import MAX_DAYS, checked, float_range


class Command(BaseCommand):
    help = (
        "Delete webhook deliveries received more than --days ago "
        "(default: WEBHOOK_DELIVERY_RETENTION_DAYS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=float_range(0, MAX_DAYS),
            default=None,
            help=(
                f"Retention in days, 0 to {MAX_DAYS} (default: WEBHOOK_DELIVERY_RETENTION_DAYS)."
            ),
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args: Any, days: float | None, dry_run: bool, **options: Any) -> None:
        if days is None:
            name, days = (
                "WEBHOOK_DELIVERY_RETENTION_DAYS",
                kohakku_settings.WEBHOOK_DELIVERY_RETENTION_DAYS,
            )
        else:
            name = "--days"
        days = checked(name, days, float_range(0, MAX_DAYS))
        count = prune_deliveries(older_than=timedelta(days=days), dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(f"{verb} {count} deliveries older than {days:g} days.")
