"""Stand-in for the tasks domain's services (issue 5): only ``create_task``.

Same signature as the real function; the real one replaces this file at merge time.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError

from ..skills.models import Skill, SkillVersion
from .models import Task


def create_task(
    *,
    skill: str,
    version: int | None = None,
    input: dict | None = None,
    backend: str = "local",
    labels: dict | None = None,
    priority: int = 0,
    timeout_seconds: int | None = None,
    max_attempts: int | None = None,
    origin: str = "api",
    origin_ref: str = "",
    idempotency_key: str | None = None,
    created_by: Any = None,
) -> Task:
    """Queue one run of ``skill`` (the latest non-yanked version unless ``version`` is given)."""
    skill_row = Skill.objects.active().filter(slug=skill).first()
    if skill_row is None:
        raise ValidationError({"skill": [f"No skill with slug {skill!r}."]})
    versions = SkillVersion.objects.filter(skill=skill_row)
    if version is None:
        skill_version = versions.installable().order_by("-version_number").first()
        if skill_version is None:
            raise ValidationError({"skill": [f"Skill {skill!r} has no installable version."]})
    else:
        skill_version = versions.filter(version_number=version).first()
        if skill_version is None:
            raise ValidationError({"version": [f"Skill {skill!r} has no version {version}."]})
    return Task.objects.create(
        skill_version=skill_version,
        input=input or {},
        backend=backend,
        labels=labels or {},
        priority=priority,
        timeout_seconds=timeout_seconds,
        max_attempts=max_attempts,
        origin=origin,
        origin_ref=origin_ref,
        idempotency_key=idempotency_key,
        created_by=created_by,
    )
