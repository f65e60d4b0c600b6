"""Delete webhook deliveries older than the retention period."""

from __future__ import annotations

from datetime import timedelta

from kohakku_controller.webhooks.services import prune_deliveries

from ._retention import RetentionCommand


class Command(RetentionCommand):
    help = (
        "Delete webhook deliveries received more than --days ago "
        "(default: WEBHOOK_DELIVERY_RETENTION_DAYS)."
    )
    noun = "deliveries"
    retention_setting = "WEBHOOK_DELIVERY_RETENTION_DAYS"

    def prune(self, older_than: timedelta, *, dry_run: bool) -> int:
        return prune_deliveries(older_than=older_than, dry_run=dry_run)
