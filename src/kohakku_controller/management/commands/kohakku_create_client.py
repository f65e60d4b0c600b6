from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, connection, transaction
from oauth2_provider.models import get_application_model

from ...auth import SCOPES
from ...oauth import create_or_reset_client, validate_scopes
from ._arguments import Once, check_label, printable


class Command(BaseCommand):
    help = (
        "Create an OAuth2 client-credentials application with controller scopes, or reset "
        "the secret and scopes of an existing one (same name, or same --client-id and name), "
        "revoking the access tokens issued with its old secret; safe to re-run, and never "
        "leaves two applications with one name. Prints the client id and secret once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Application name, e.g. 'dispatcher-eu-1'.")
        parser.add_argument(
            "--scopes",
            required=True,
            action=Once,
            help=f"Space- or comma-separated scopes from: {', '.join(SCOPES)}.",
        )
        parser.add_argument(
            "--client-id", action=Once, help="Use this client id instead of a random one."
        )
        parser.add_argument(
            "--rename",
            action="store_true",
            help=(
                "Allow --client-id to name an existing application with another name: rename "
                "it to NAME (its secret and scopes are replaced too)."
            ),
        )
        parser.add_argument(
            "--change-client-id",
            action="store_true",
            help=(
                "Allow a new --client-id for the existing application NAME: change its client "
                "id (its secret and scopes are replaced too)."
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
        for flag in ("rename", "change_client_id"):
            if options[flag] and client_id is None:
                raise CommandError(f"--{flag.replace('_', '-')} needs --client-id.")
        scopes = str(options["scopes"]).replace(",", " ").split()
        if not scopes:
            raise CommandError(f"--scopes must name at least one scope from: {', '.join(SCOPES)}.")
        try:
            scopes = validate_scopes(scopes)
        except ValueError as exc:
            raise CommandError(printable(str(exc))) from None
        try:
            with transaction.atomic():
                self.wait_for_other_runs()
                application = self.check_existing(
                    application_model,
                    name,
                    client_id,
                    rename=options["rename"],
                    change_client_id=options["change_client_id"],
                )
                if application is not None and client_id and application.client_id != client_id:
                    application_model.objects.filter(pk=application.pk).update(client_id=client_id)
                client = create_or_reset_client(name, scopes, client_id=client_id)
        except OperationalError as exc:
            hint = ""
            if "locked" in str(exc):  # SQLite without a busy timeout, another process writing
                hint = (
                    " Run the command again; on SQLite, set the OPTIONS timeout and "
                    "transaction_mode of the install guide."
                )
            raise CommandError(
                f"The database could not make the change ({printable(str(exc))}); nothing "
                f"was changed.{hint}"
            ) from None
        # Printed once the transaction is committed: a secret shown is a secret that works.
        self.stdout.write(f"client_id={client.client_id}")
        self.stdout.write(f"client_secret={client.client_secret}")
        self.stdout.write(f"scopes={' '.join(scopes)}")

    @staticmethod
    def wait_for_other_runs() -> None:
        """Make concurrent runs take turns until the transaction ends, so that two of them
        cannot both find no application and both create one (names are not unique). SQLite
        runs writing transactions one at a time already."""
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext('kohakku_create_client'))")

    @staticmethod
    def check_existing(
        application_model: Any,
        name: str,
        client_id: str | None,
        *,
        rename: bool,
        change_client_id: bool,
    ) -> Any:
        """The application to reset (None: create one). Refuse to change an application the
        command was not clearly asked to change, or to leave two with the same name."""
        named = application_model.objects.filter(name=name)
        by_id = application_model.objects.filter(client_id=client_id).first() if client_id else None
        if by_id is not None:
            named = named.exclude(pk=by_id.pk)
        named = list(named[:2])
        if by_id is not None and by_id.name == name:
            application = by_id
        elif by_id is not None:
            if not rename:
                raise CommandError(
                    f"--client-id {client_id!r} belongs to the application {by_id.name!r}. "
                    f"Pass that name to reset its secret, or add --rename to rename it to "
                    f"{name!r}."
                )
            if named:
                raise CommandError(
                    f"Cannot rename the application {by_id.name!r} to {name!r}: that is the "
                    f"name of the application with client id {named[0].client_id!r}."
                )
            application = by_id
        elif len(named) > 1:
            raise CommandError(
                f"More than one application is named {name!r}; pass the --client-id of the "
                "one to reset."
            )
        elif named and client_id:
            if not change_client_id:
                raise CommandError(
                    f"The application {name!r} has the client id {named[0].client_id!r}, not "
                    f"{client_id!r}. Pass its client id (or none) to reset its secret, or add "
                    f"--change-client-id to change its client id to {client_id!r}."
                )
            application = named[0]
        else:
            application = named[0] if named else None
        if application is not None and (
            application.client_type != application_model.CLIENT_CONFIDENTIAL
            or application.authorization_grant_type != application_model.GRANT_CLIENT_CREDENTIALS
        ):
            raise CommandError(
                f"The application {application.name!r} (client id "
                f"{application.client_id!r}) is not a confidential client-credentials "
                "application; the command leaves it alone."
            )
        return application
