"""Admin for skills and their versions. Versions are immutable: only yanking is editable.

Skills follow the API's rules: a new skill is created by :func:`services.create_skill` (which
derives the slug and refuses a name or slug already taken); afterwards the name and slug are
read-only, and the category must be one of ``SKILL_CATEGORIES``. A change is saved only if the
skill was not changed since the page was opened.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.exceptions import APIException

from ..admin_forms import (
    ConcurrencySafeAdmin,
    VersionCheckedForm,
    add_api_errors,
    update_if_unchanged,
)
from ..exceptions import Conflict
from .models import Skill, SkillVersion
from .services import category_problem, create_skill, set_version_yanked


class _DryRun(Exception):
    """Rolls back the trial creation in :meth:`SkillAdminForm.clean`."""


class SkillAdminForm(VersionCheckedForm):
    class Meta:
        model = Skill
        fields = ("name", "category", "description", "archived")

    def clean_category(self) -> str:
        category = self.cleaned_data["category"]
        problem = category_problem(category)
        if problem:
            raise forms.ValidationError(problem)
        return category

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance.pk is None and not self.errors:
            # Ask create_skill itself, in a rolled-back transaction, so that the form refuses
            # exactly what it (and the API) would refuse: no slug, a taken name or slug.
            try:
                with transaction.atomic():
                    self._create(cleaned)
                    raise _DryRun
            except _DryRun:
                pass
            except APIException as exc:
                add_api_errors(self, exc.detail)
        return cleaned

    @staticmethod
    def _create(cleaned: dict[str, Any]) -> Skill:
        return create_skill(
            name=cleaned["name"],
            category=cleaned["category"],
            description=cleaned.get("description", ""),
        )


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
class SkillAdmin(ConcurrencySafeAdmin):
    list_display = ("slug", "name", "category", "archived", "last_version_number", "updated_at")
    list_filter = ("category", "archived")
    search_fields = ("slug", "name", "description")
    readonly_fields = ("guid", "slug", "last_version_number", "created_at", "updated_at")
    inlines = [SkillVersionInline]
    form = SkillAdminForm

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return (*self.readonly_fields, "archived")  # a new skill is never archived
        return (*self.readonly_fields, "name")  # the slug comes from the name: both stay

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return self.inlines if obj is not None else []  # versions come from uploads

    def save_model(self, request: HttpRequest, obj: Skill, form: Any, change: bool) -> None:
        if change:
            # Only the fields the form changed, and only if the skill is still as the page
            # showed it: never over a concurrent archive, edit or upload.
            update_if_unchanged(form, updated_at=timezone.now())
            return
        skill = form._create(form.cleaned_data)
        # The admin goes on with ``obj`` (history entry, redirect): make it the new skill.
        obj.__dict__.update(skill.__dict__)


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
            try:
                set_version_yanked(
                    version,
                    yanked,
                    reason=f"{'yanked' if yanked else 'restored'} in admin by {request.user}",
                )
            except Conflict:
                continue  # a concurrent request changed it first
            changed += 1
        self.message_user(request, f"{changed} version(s) updated.", messages.SUCCESS)

    @admin.action(description="Yank selected versions", permissions=["change"])
    def yank_versions(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_yanked(request, queryset, True)

    @admin.action(description="Restore (unyank) selected versions", permissions=["change"])
    def unyank_versions(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_yanked(request, queryset, False)
