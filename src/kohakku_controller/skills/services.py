"""Skill services (stand-in: the skills registry owns the full module)."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError

from ..storage import get_storage, storage_is_remote
from .models import Skill, SkillVersion


def resolve_version(
    skill_slug: str, version: int | None, *, allow_yanked: bool = False
) -> SkillVersion:
    """The requested version of a skill, or its latest non-yanked one."""
    skill = Skill.objects.filter(slug=skill_slug).first()
    if skill is None:
        raise ValidationError({"skill": [f"No skill with slug {skill_slug!r}."]})
    if version is None:
        found = SkillVersion.objects.latest_for(skill)
        if found is None:
            raise ValidationError({"version": [f"Skill {skill_slug!r} has no usable version."]})
        found.skill = skill
        return found
    found = SkillVersion.objects.filter(skill=skill, version_number=version).first()
    if found is None:
        raise ValidationError({"version": [f"Skill {skill_slug!r} has no version {version}."]})
    if found.yanked and not allow_yanked:
        raise ValidationError({"version": [f"Version {version} of {skill_slug!r} is yanked."]})
    found.skill = skill
    return found


def package_download_url(
    version: SkillVersion, *, base_url: str, expires_seconds: int | None = None
) -> str:
    """A short-lived URL the dispatcher downloads the package from."""
    storage = get_storage()
    if storage_is_remote(storage):
        return storage.url(version.storage_ref, expire=expires_seconds or 900)
    slug = version.skill.slug
    return f"{base_url.rstrip('/')}/api/v1/skills/{slug}/download/?version={version.version_number}"
