"""Factories for skills and workflows, shared with the webhooks tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from kohakku_controller.skills.models import Skill, SkillVersion
from kohakku_controller.workflows.models import Workflow


@pytest.fixture
def make_skill(db: Any) -> Callable[..., Skill]:
    """A skill with ``versions`` installable versions (1..n) and ``yanked`` yanked ones."""

    def make(name: str = "triage", *, versions: int = 1, yanked: tuple[int, ...] = ()) -> Skill:
        skill = Skill.objects.create(name=name, slug=name, last_version_number=versions)
        for number in range(1, versions + 1):
            digest = hashlib.sha256(f"{name}-{number}".encode()).hexdigest()
            SkillVersion.objects.create(
                skill=skill,
                version_number=number,
                content_hash=digest,
                size=10,
                storage_ref=f"skills/{name}/{digest}.zip",
                yanked=number in yanked,
            )
        return skill

    return make


@pytest.fixture
def make_workflow(make_skill: Callable[..., Skill]) -> Callable[..., Workflow]:
    def make(slug: str = "triage-prs", *, skill: Skill | None = None, **fields: Any) -> Workflow:
        if skill is None:
            skill = Skill.objects.filter(slug="triage").first() or make_skill("triage")
        defaults: dict[str, Any] = {
            "name": slug.replace("-", " ").title(),
            "source": "github",
            "event": "pull_request",
            "conditions": [],
            "input_template": "payload",
        }
        defaults.update(fields)
        return Workflow.objects.create(slug=slug, skill=skill, **defaults)

    return make
