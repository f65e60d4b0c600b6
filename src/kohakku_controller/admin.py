from django.contrib import admin

from .oauth import ClientScopes
from .skills import admin as skills_admin  # noqa: F401  (registers the skills admin)
from .webhooks.models import Delivery
from .workflows.models import Workflow


@admin.register(ClientScopes)
class ClientScopesAdmin(admin.ModelAdmin):
    list_display = ("application", "scopes")
    search_fields = ("application__name", "application__client_id")
    raw_id_fields = ("application",)


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "enabled", "priority", "source", "event", "skill")
    list_filter = ("enabled", "source")
    search_fields = ("slug", "name", "event")
    raw_id_fields = ("skill",)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("received_at", "source", "event", "status", "status_code", "routed_to")
    list_filter = ("source", "status", "verification")
    search_fields = ("guid", "external_id", "event", "routed_to")
    readonly_fields = [field.name for field in Delivery._meta.fields]
    date_hierarchy = "received_at"

    def has_add_permission(self, request):  # the log is written by ingest only
        return False
