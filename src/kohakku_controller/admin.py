from django.contrib import admin

from .oauth import ClientScopes
from .skills import admin as skills_admin  # noqa: F401  (registers the skills admin)


@admin.register(ClientScopes)
class ClientScopesAdmin(admin.ModelAdmin):
    list_display = ("application", "scopes")
    search_fields = ("application__name", "application__client_id")
    raw_id_fields = ("application",)
