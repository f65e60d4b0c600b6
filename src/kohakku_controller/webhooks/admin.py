"""Admin for the webhook delivery log (read-only: ingest writes it)."""

from django.contrib import admin

from .models import Delivery


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("received_at", "source", "event", "status", "status_code", "routed_to")
    list_filter = ("source", "status", "verification")
    search_fields = ("guid", "external_id", "event", "routed_to")
    readonly_fields = [field.name for field in Delivery._meta.fields]
    date_hierarchy = "received_at"

    def has_add_permission(self, request):  # the log is written by ingest only
        return False
