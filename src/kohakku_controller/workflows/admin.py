"""Admin for workflows."""

from django.contrib import admin

from .models import Workflow


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "enabled", "priority", "source", "event", "skill")
    list_filter = ("enabled", "source")
    search_fields = ("slug", "name", "event")
    raw_id_fields = ("skill",)
