"""Request and response shapes of the skills API."""

from __future__ import annotations

from rest_framework import serializers

from ..fields import ControllerModelSerializer, RejectUnknownFieldsMixin, StrictCharField
from .models import Skill, SkillVersion
from .services import category_problem


def _validate_category(value: str) -> str:
    problem = category_problem(value)
    if problem:
        raise serializers.ValidationError(problem)
    return value


class SkillSerializer(ControllerModelSerializer):
    """The list shape, pinned by the API: guid, name, slug, category, description."""

    class Meta:
        model = Skill
        fields = ["guid", "name", "slug", "category", "description"]
        read_only_fields = ["guid", "slug"]


class SkillDetailSerializer(SkillSerializer):
    """One skill, with its state and latest installable version number."""

    latest_version = serializers.SerializerMethodField()

    class Meta(SkillSerializer.Meta):
        fields = [
            *SkillSerializer.Meta.fields,
            "archived",
            "latest_version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_latest_version(self, skill: Skill) -> int | None:
        latest = SkillVersion.objects.latest_for(skill)
        return latest.version_number if latest else None


class SkillCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """``POST /skills/``: a name, a category from ``SKILL_CATEGORIES``, a description.

    Any other field is a 400 naming it.
    """

    name = StrictCharField(max_length=100)
    category = StrictCharField(
        max_length=32, required=False, help_text="Default: the first of SKILL_CATEGORIES."
    )
    description = StrictCharField(max_length=4096, allow_blank=True, default="")

    def validate_category(self, value: str) -> str:
        return _validate_category(value)


class SkillUpdateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """``PATCH /skills/{slug}/``: only the description and the category can change."""

    unknown_field_message = "This field cannot be changed."

    description = StrictCharField(max_length=4096, allow_blank=True, required=False)
    category = StrictCharField(max_length=32, required=False)

    def validate_category(self, value: str) -> str:
        return _validate_category(value)


class UploadSerializer(serializers.Serializer):
    """``POST /skills/{slug}/upload/``: the package as the multipart field ``file``."""

    file = serializers.FileField(allow_empty_file=True, use_url=False)


class UploadResultSerializer(serializers.Serializer):
    """The upload answer, pinned by the API."""

    slug = serializers.CharField()
    storage_ref = serializers.CharField()
    content_hash = serializers.CharField()
    version_number = serializers.IntegerField()
    deduplicated = serializers.BooleanField()


class SkillVersionSerializer(ControllerModelSerializer):
    """One package version of a skill."""

    skill = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    # The user's USERNAME_FIELD (a custom user model may have no ``username``).
    uploaded_by = serializers.CharField(
        source="uploaded_by.get_username", read_only=True, allow_null=True
    )

    class Meta:
        model = SkillVersion
        fields = [
            "skill",
            "version_number",
            "content_hash",
            "size",
            "storage_ref",
            "manifest",
            "entrypoint",
            "uploaded_by",
            "uploaded_at",
            "yanked",
            "yank_reason",
            "yanked_at",
            "unyank_reason",
            "unyanked_at",
        ]
        read_only_fields = fields


class YankSerializer(serializers.Serializer):
    """Why a version is yanked or restored."""

    reason = StrictCharField(max_length=500)
