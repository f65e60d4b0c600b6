from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...auth import SCOPES
from ...oauth import create_or_reset_client


class Command(BaseCommand):
    help = (
        "Create an OAuth2 client-credentials application with controller scopes, or reset "
        "the secret of an existing one. Prints the client id and secret once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Application name, e.g. 'dispatcher-eu-1'.")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"Space- or comma-separated scopes from: {', '.join(SCOPES)}.",
        )
        parser.add_argument("--client-id", help="Use this client id instead of a random one.")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = options["scopes"].replace(",", " ").split()
        try:
            client = create_or_reset_client(options["name"], scopes, client_id=options["client_id"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"client_id={client.client_id}")
        self.stdout.write(f"client_secret={client.client_secret}")
        self.stdout.write(f"scopes={' '.join(scopes)}")
