"""Admin for workflows. The form validates with the API's serializer and saves with the API's
``save_workflow``: the admin saves only what ``POST``/``PATCH /api/v1/workflows/`` would
accept, and never over an edit made since the page was opened."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ..admin_forms import (
    ConcurrencySafeAdmin,
    VersionCheckedForm,
    add_api_errors,
    stale_on_conflict,
)
from .models import Workflow
from .serializers import WorkflowSerializer
from .services import save_workflow


class WorkflowAdminForm(VersionCheckedForm):
    """Checks the fields with :class:`WorkflowSerializer`, like the API: conditions and the
    input template must compile, the task settings must be ones a task can be created with,
    and a pinned skill version must exist. On a change only the changed fields are sent, as
    a ``PATCH`` would send them."""

    class Meta:
        model = Workflow
        # The API's writable fields.
        fields = [
            name
            for name in WorkflowSerializer.Meta.fields
            if name not in WorkflowSerializer.Meta.read_only_fields
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "slug" in self.fields:
            self.fields["slug"].required = False
            self.fields["slug"].help_text = "Derived from the name if empty; cannot change."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        creating = self.instance.pk is None
        names = self.fields if creating else self.changed_fields
        # str(): a JSON field's string is a JSONString, which the API's errors would name.
        data = {
            name: str(cleaned[name]) if isinstance(cleaned[name], str) else cleaned[name]
            for name in names
            if name in cleaned
        }
        if data.get("skill") is not None:
            data["skill"] = data["skill"].slug
        if not data.get("slug"):
            data.pop("slug", None)  # derived from the name, as the API does
        serializer = WorkflowSerializer(
            None if creating else self.instance, data=data, partial=not creating
        )
        if serializer.is_valid():
            cleaned.update(
                (name, value)
                for name, value in serializer.validated_data.items()
                if name in self.fields
            )
        else:
            add_api_errors(self, serializer.errors)
        return cleaned


@admin.register(Workflow)
class WorkflowAdmin(ConcurrencySafeAdmin):
    form = WorkflowAdminForm
    list_display = ("slug", "name", "enabled", "priority", "source", "event", "skill")
    list_filter = ("enabled", "source")
    search_fields = ("slug", "name", "event")
    raw_id_fields = ("skill",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("slug",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: Workflow, form: Any, change: bool) -> None:
        # As the API saves: on a change only the changed fields, and only if the workflow
        # still has the version the form checked (a later edit makes it raise Conflict).
        if not change:
            save_workflow(obj)
        elif form.changes:
            with stale_on_conflict(obj):
                save_workflow(obj, **form.changes)
