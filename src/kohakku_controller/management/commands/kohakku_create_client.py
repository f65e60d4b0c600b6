from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from oauth2_provider.models import get_application_model

from ...auth import SCOPES
from ...oauth import create_or_reset_client
from ._arguments import check_label


class Command(BaseCommand):
    help = (
        "Create an OAuth2 client-credentials application with controller scopes, or reset "
        "the secret and scopes of an existing one (same name, or same --client-id and name). "
        "Prints the client id and secret once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Application name, e.g. 'dispatcher-eu-1'.")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"Space- or comma-separated scopes from: {', '.join(SCOPES)}.",
        )
        parser.add_argument("--client-id", help="Use this client id instead of a random one.")
        parser.add_argument(
            "--rename",
            action="store_true",
            help=(
                "Allow --client-id to name an existing application with another name: rename "
                "it to NAME (its secret and scopes are replaced too)."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        application_model = get_application_model()
        name, client_id = options["name"], options["client_id"]
        problem = check_label(name, max_length=application_model._meta.get_field("name").max_length)
        if problem:
            raise CommandError(f"The application name {problem}.")
        if client_id is not None:
            problem = check_label(
                client_id, max_length=application_model._meta.get_field("client_id").max_length
            )
            if problem is None and any(char.isspace() for char in client_id):
                problem = "must not contain spaces"
            if problem:
                raise CommandError(f"--client-id {problem}.")
        scopes = str(options["scopes"]).replace(",", " ").split()
        if not scopes:
            raise CommandError(f"--scopes must name at least one scope from: {', '.join(SCOPES)}.")
        self.check_existing(application_model, name, client_id, rename=options["rename"])
        try:
            client = create_or_reset_client(name, scopes, client_id=client_id)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"client_id={client.client_id}")
        self.stdout.write(f"client_secret={client.client_secret}")
        self.stdout.write(f"scopes={' '.join(scopes)}")

    @staticmethod
    def check_existing(
        application_model: Any, name: str, client_id: str | None, *, rename: bool
    ) -> None:
        """Refuse to change an application the command was not clearly asked to change."""
        if client_id:
            existing = list(application_model.objects.filter(client_id=client_id))
            if existing and existing[0].name != name and not rename:
                raise CommandError(
                    f"--client-id {client_id!r} belongs to the application "
                    f"{existing[0].name!r}. Pass that name to reset its secret, or add "
                    f"--rename to rename it to {name!r}."
                )
        else:
            existing = list(application_model.objects.filter(name=name)[:2])
            if len(existing) > 1:
                raise CommandError(
                    f"More than one application is named {name!r}; pass --client-id to choose one."
                )
        for application in existing:
            if (
                application.client_type != application_model.CLIENT_CONFIDENTIAL
                or application.authorization_grant_type
                != application_model.GRANT_CLIENT_CREDENTIALS
            ):
                raise CommandError(
                    f"The application {application.name!r} (client id "
                    f"{application.client_id!r}) is not a confidential client-credentials "
                    "application; the command leaves it alone."
                )
