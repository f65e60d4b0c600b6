"""Seed the demo credentials of ``make run``: an operator token and a dispatcher client.

Idempotent: running it again keeps the rows and refreshes the dispatcher client's secret
(the old one is stored hashed and cannot be shown again). Writes what it prints to
``var/demo-credentials.json`` as well, for the demo scripts.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from kohakku_controller.auth import SCOPES
from kohakku_controller.oauth import create_or_reset_client

OPERATOR = "demo-operator"
DISPATCHER_CLIENT_ID = "demo-dispatcher"
ORCHESTRATOR_CLIENT_ID = "demo-orchestrator"


class Command(BaseCommand):
    help = "Create the demo operator, its API token and the demo OAuth2 clients."

    def handle(self, *args: Any, **options: Any) -> None:
        user, created = get_user_model().objects.get_or_create(
            username=OPERATOR, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password("demo-operator-password")
            user.save(update_fields=["password"])
        token, _ = Token.objects.get_or_create(user=user)
        dispatcher = create_or_reset_client(
            "Demo dispatcher", ["dispatchers"], client_id=DISPATCHER_CLIENT_ID
        )
        orchestrator = create_or_reset_client(
            "Demo orchestrator",
            [scope for scope in SCOPES if scope != "dispatchers"],
            client_id=ORCHESTRATOR_CLIENT_ID,
        )
        credentials = {
            "operator": {
                "username": OPERATOR,
                "password": "demo-operator-password",
                "token": token.key,
            },
            "dispatcher_client": {
                "client_id": dispatcher.client_id,
                "client_secret": dispatcher.client_secret,
            },
            "orchestrator_client": {
                "client_id": orchestrator.client_id,
                "client_secret": orchestrator.client_secret,
            },
        }
        path = settings.VAR_DIR / "demo-credentials.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
        self.stdout.write(
            self.style.SUCCESS("Demo credentials (also in var/demo-credentials.json):")
        )
        self.stdout.write(f"  operator login      {OPERATOR} / demo-operator-password  (admin)")
        self.stdout.write(f"  operator API token  Authorization: Token {token.key}")
        for label, client in (("dispatcher", dispatcher), ("orchestrator", orchestrator)):
            self.stdout.write(
                f"  {label} client   client_id={client.client_id} "
                f"client_secret={client.client_secret}"
            )
