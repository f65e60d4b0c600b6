"""Admin for skills and their versions. Versions are immutable: only yanking is editable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Skill, SkillVersion
from .services import set_version_yanked


class SkillVersionInline(admin.TabularInline):
    model = SkillVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("version_number", "content_hash", "size", "yanked", "uploaded_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Skill)
class SkillAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "category", "archived", "last_version_number", "updated_at")
    list_filter = ("category", "archived")
    search_fields = ("slug", "name", "description")
    readonly_fields = ("guid", "slug", "last_version_number", "created_at", "updated_at")
    inlines = [SkillVersionInline]


@admin.register(SkillVersion)
class SkillVersionAdmin(admin.ModelAdmin):
    list_display = ("skill", "version_number", "short_hash", "size", "yanked", "uploaded_at")
    list_filter = ("yanked",)
    search_fields = ("skill__slug", "content_hash")
    list_select_related = ("skill",)
    readonly_fields = (
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
    )
    actions = ["yank_versions", "unyank_versions"]

    @admin.display(description="sha256")
    def short_hash(self, obj: SkillVersion) -> str:
        return obj.content_hash[:12]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from uploads only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # version numbers are never reused; yank instead

    def _set_yanked(self, request: HttpRequest, queryset: QuerySet, yanked: bool) -> None:
        changed = 0
        for version in queryset.filter(yanked=not yanked):
            set_version_yanked(
                version,
                yanked,
                reason=f"{'yanked' if yanked else 'restored'} in admin by {request.user}",
            )
            changed += 1
        self.message_user(request, f"{changed} version(s) updated.", messages.SUCCESS)

    @admin.action(description="Yank selected versions", permissions=["change"])
    def yank_versions(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_yanked(request, queryset, True)

    @admin.action(description="Restore (unyank) selected versions", permissions=["change"])
    def unyank_versions(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_yanked(request, queryset, False)
