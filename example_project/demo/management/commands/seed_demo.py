"""Seed the demo of ``make run``: credentials, the ``hello`` skill and its workflow.

Idempotent: running it again keeps the rows and refreshes the OAuth2 clients' secrets
(the old ones are stored hashed and cannot be shown again), uploads the demo skill's
package through the skills service (the same bytes are deduplicated into the existing
version) and updates the demo workflow in place. Writes the credentials to
``var/demo-credentials.json`` as well, for the dispatcher and the demo scripts.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from demo.skill_packages import demo_skill_package
from kohakku_controller.auth import SCOPES
from kohakku_controller.oauth import create_or_reset_client
from kohakku_controller.skills.models import Skill
from kohakku_controller.skills.services import create_skill, upload_package
from kohakku_controller.workflows.models import WebhookSource, Workflow
from kohakku_controller.workflows.services import save_workflow

OPERATOR = "demo-operator"
DISPATCHER_CLIENT_ID = "demo-dispatcher"
ORCHESTRATOR_CLIENT_ID = "demo-orchestrator"
DEMO_SKILL = "hello"
DEMO_WORKFLOW = "demo-hello"
DEMO_EVENT = "demo.hello"
# JMESPath over {source, event, headers, payload}: the payload's name becomes the input.
DEMO_INPUT_TEMPLATE = "{name: payload.name}"


def seed_demo_skill() -> tuple[Skill, int, bool]:
    """Create the ``hello`` skill if needed and upload its package.

    Returns the skill, the version number and whether the upload was deduplicated.
    """
    skill = Skill.objects.filter(slug=DEMO_SKILL).first() or create_skill(
        name=DEMO_SKILL, description="Demo skill: greets the name it is given."
    )
    package = ContentFile(demo_skill_package(DEMO_SKILL), name=f"{DEMO_SKILL}.zip")
    result = upload_package(skill, package)
    return skill, result.version.version_number, result.deduplicated


def seed_demo_workflow(skill: Skill) -> Workflow:
    """Create or update the workflow that routes custom event ``demo.hello`` to the skill."""
    workflow = Workflow.objects.filter(slug=DEMO_WORKFLOW).first() or Workflow()
    return save_workflow(
        workflow,
        name=DEMO_WORKFLOW,
        slug=DEMO_WORKFLOW,
        enabled=True,
        source=WebhookSource.CUSTOM,
        event=DEMO_EVENT,
        conditions=[],
        skill=skill,
        skill_version=None,
        input_template=DEMO_INPUT_TEMPLATE,
        backend="local",
        labels={},
        timeout_seconds=60,
    )


class Command(BaseCommand):
    help = (
        "Create the demo operator, its API token, the demo OAuth2 clients, the demo skill "
        "and the demo workflow."
    )

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
        skill, version, deduplicated = seed_demo_skill()
        workflow = seed_demo_workflow(skill)
        path = settings.VAR_DIR / "demo-credentials.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
        self.stdout.write(self.style.SUCCESS(f"Demo credentials (also in {path}):"))
        self.stdout.write(f"  operator login      {OPERATOR} / demo-operator-password  (admin)")
        self.stdout.write(f"  operator API token  Authorization: Token {token.key}")
        for label, client in (("dispatcher", dispatcher), ("orchestrator", orchestrator)):
            self.stdout.write(
                f"  {label} client   client_id={client.client_id} "
                f"client_secret={client.client_secret}"
            )
        self.stdout.write(
            f"  demo skill          {skill.slug} v{version}"
            + (" (already uploaded)" if deduplicated else " (uploaded)")
        )
        self.stdout.write(
            f"  demo workflow       {workflow.slug}: custom event {DEMO_EVENT!r} -> {skill.slug}"
        )
