"""Admin for dispatchers, with their derived status. Secrets are never shown."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.exceptions import NotFound

from ..admin_forms import (
    VERSION_FIELD,
    ConcurrencySafeAdmin,
    VersionCheckedForm,
    stale_on_conflict,
)
from . import services as dispatcher_services
from .models import Dispatcher, DispatcherStatus
from .serializers import MAX_CAPACITY, MIN_CAPACITY


class DispatcherAdminForm(VersionCheckedForm):
    """The operator controls, with the bounds of ``PATCH /api/v1/dispatchers/{guid}/``.

    A dispatcher keeps no ``updated_at``: the controls' values as read are its version.
    """

    version_fields = ("enabled", "draining", "capacity")

    capacity = forms.IntegerField(
        min_value=MIN_CAPACITY, max_value=MAX_CAPACITY, help_text="Maximum concurrent tasks."
    )

    class Meta:
        model = Dispatcher
        fields = ("enabled", "draining", "capacity")


class DispatcherStatusFilter(admin.SimpleListFilter):
    """Filter on the derived status (it is not a column)."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(DispatcherStatus.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value in DispatcherStatus.values:
            return queryset.with_status(value, timezone.now())
        return queryset


@admin.register(Dispatcher)
class DispatcherAdmin(ConcurrencySafeAdmin):
    """Dispatchers with their derived status. Operators change only enabled, draining and
    capacity here; signing secrets are never shown. Deletion goes through the API, which
    checks for unfinished tasks."""

    CONTROLS = ("enabled", "draining", "capacity")

    form = DispatcherAdminForm
    list_display = (
        "name",
        "status",
        "cloud",
        "backend_list",
        "capacity",
        "enabled",
        "draining",
        "last_heartbeat_at",
        "application",
    )
    list_filter = (DispatcherStatusFilter, "enabled", "draining", "cloud")
    list_select_related = ("application",)
    search_fields = ("name", "slug")
    ordering = ("name",)
    fieldsets = (
        (None, {"fields": ("guid", "name", "slug", "status", "application")}),
        ("Operator controls", {"fields": (*CONTROLS, VERSION_FIELD)}),
        (
            "Registration",
            {
                "fields": (
                    "endpoint_url",
                    "cloud",
                    "backends",
                    "labels",
                    "heartbeat_interval_seconds",
                    "version",
                    "metadata",
                    "first_checkin_at",
                    "last_checkin_at",
                )
            },
        ),
        (
            "Liveness",
            {
                "fields": (
                    "last_heartbeat_at",
                    "lost_at",
                    "reported_free_capacity",
                    "reported_task_guids",
                    "busy_until",
                    "previous_secret_valid_until",
                )
            },
        ),
    )
    actions = ("enable", "disable", "start_draining", "stop_draining")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        """Everything shown except the form's fields (the operator controls)."""
        shown = [name for _, options in self.fieldsets for name in options["fields"]]
        return [name for name in shown if name not in self.form.base_fields]

    @admin.display(description="status")
    def status(self, dispatcher: Dispatcher) -> str:
        return dispatcher.status()

    @admin.display(description="backends")
    def backend_list(self, dispatcher: Dispatcher) -> str:
        return ", ".join(dispatcher.backends)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # dispatchers register themselves by checking in

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # DELETE /api/v1/dispatchers/{guid}/ checks for unfinished tasks

    def save_model(self, request: HttpRequest, obj: Dispatcher, form: Any, change: bool) -> None:
        # Conditional on the controls as the page showed them, so a change made meanwhile
        # through the API or another page is not written over.
        with stale_on_conflict(obj):
            dispatcher_services.set_dispatcher_controls(
                obj, **form.changes, if_unchanged=form.read_values
            )

    def _set(self, request: HttpRequest, queryset: QuerySet, **changes: Any) -> None:
        changed = deleted = 0
        for dispatcher in queryset:
            try:
                dispatcher_services.set_dispatcher_controls(dispatcher, **changes)
            except NotFound:
                deleted += 1  # through the API, since the list was read
                continue
            changed += 1
        self.message_user(request, f"{changed} dispatcher(s) changed.", messages.SUCCESS)
        if deleted:
            self.message_user(
                request,
                f"{deleted} dispatcher(s) were deleted meanwhile and left out.",
                messages.WARNING,
            )

    @admin.action(description="Enable selected dispatchers", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set(request, queryset, enabled=True)

    @admin.action(description="Disable selected dispatchers", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set(request, queryset, enabled=False)

    @admin.action(description="Drain selected dispatchers (no new tasks)", permissions=["change"])
    def start_draining(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set(request, queryset, draining=True)

    @admin.action(description="Stop draining selected dispatchers", permissions=["change"])
    def stop_draining(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set(request, queryset, draining=False)
