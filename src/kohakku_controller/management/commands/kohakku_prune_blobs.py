"""Delete stored skill packages that no version references, once they are old enough."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...conf import kohakku_settings
from ...skills.blobs import prune_unreferenced_blobs
from ._arguments import MAX_SECONDS, checked, int_range


class Command(BaseCommand):
    help = (
        "Delete blobs under skills/ in the controller's storage that no skill version "
        "references and that are older than the grace period (SKILL_BLOB_GRACE_SECONDS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace-seconds",
            type=int_range(0, MAX_SECONDS),
            default=None,
            help=(
                f"Keep unreferenced blobs younger than this many seconds, 0 to {MAX_SECONDS} "
                "(default: SKILL_BLOB_GRACE_SECONDS)."
            ),
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        grace = options["grace_seconds"]
        name = "--grace-seconds"
        if grace is None:
            name, grace = "SKILL_BLOB_GRACE_SECONDS", kohakku_settings.SKILL_BLOB_GRACE_SECONDS
        grace = checked(name, grace, int_range(0, MAX_SECONDS))
        report = prune_unreferenced_blobs(grace_seconds=grace, dry_run=options["dry_run"])
        verb = "would delete" if options["dry_run"] else "deleted"
        for name in report.deleted:
            self.stdout.write(f"{verb} {name}")
        self.stdout.write(
            f"{verb} {len(report.deleted)} blob(s); kept {report.referenced} referenced and "
            f"{report.too_young} within the grace period."
        )
