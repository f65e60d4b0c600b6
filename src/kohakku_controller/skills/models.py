"""The skills registry: named skills with immutable, content-addressed package versions."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class SkillQuerySet(models.QuerySet):
    def active(self):
        """Skills that are not archived."""
        return self.filter(archived=False)


class Skill(models.Model):
    """A named skill. Its slug comes from the name and never changes."""

    guid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=64, unique=True, editable=False)
    category = models.CharField(max_length=32, default="tool")
    description = models.TextField(blank=True, default="", max_length=4096)
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Highest version number ever issued; numbers are never reused, even if a row goes.
    last_version_number = models.PositiveIntegerField(default=0, editable=False)

    objects = SkillQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class SkillVersionQuerySet(models.QuerySet):
    def installable(self):
        """Versions that ``latest`` may pick: not yanked."""
        return self.filter(yanked=False)

    def latest_for(self, skill):
        """The highest-numbered version of ``skill`` that is not yanked, or ``None``."""
        return self.filter(skill=skill).installable().order_by("-version_number").first()


class SkillVersion(models.Model):
    """One immutable package of a skill, identified by its sha256."""

    skill = models.ForeignKey(Skill, on_delete=models.PROTECT, related_name="versions")
    version_number = models.PositiveIntegerField(editable=False)
    content_hash = models.CharField(max_length=64, editable=False, help_text=_("sha256, hex"))
    size = models.BigIntegerField(editable=False)
    storage_ref = models.CharField(max_length=255, editable=False)
    # Front matter of SKILL.md, as parsed.
    manifest = models.JSONField(default=dict, blank=True, editable=False)
    entrypoint = models.CharField(max_length=1024, blank=True, default="", editable=False)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    yanked = models.BooleanField(default=False)
    yank_reason = models.CharField(max_length=500, blank=True, default="")
    yanked_at = models.DateTimeField(null=True, blank=True)
    unyank_reason = models.CharField(max_length=500, blank=True, default="")
    unyanked_at = models.DateTimeField(null=True, blank=True)

    objects = SkillVersionQuerySet.as_manager()

    class Meta:
        ordering = ["skill", "-version_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["skill", "version_number"], name="kohakku_skillversion_unique_number"
            ),
            models.UniqueConstraint(
                fields=["skill", "content_hash"], name="kohakku_skillversion_unique_hash"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.skill.slug}@{self.version_number}"
