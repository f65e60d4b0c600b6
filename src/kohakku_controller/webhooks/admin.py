"""Admin for the webhook delivery log (read-only: ingest writes it)."""

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList

from .models import Delivery


class DeliveryChangeList(ChangeList):
    """The list reads no body (each up to ``WEBHOOK_LOG_BODY_BYTES``) and no headers: it
    shows neither, and a page of 100 large deliveries would load them all."""

    def get_queryset(self, *args: Any, **kwargs: Any) -> Any:
        return super().get_queryset(*args, **kwargs).defer("body", "headers")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("received_at", "source", "event", "status", "status_code", "routed_to")
    list_filter = ("source", "status", "verification")
    search_fields = ("guid", "external_id", "event", "routed_to")
    readonly_fields = [field.name for field in Delivery._meta.fields]
    date_hierarchy = "received_at"

    def get_changelist(self, request: Any, **kwargs: Any) -> type[ChangeList]:
        return DeliveryChangeList

    def has_add_permission(self, request):  # the log is written by ingest only
        return False
