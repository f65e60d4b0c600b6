from django.contrib import admin

from .oauth import ClientScopes


@admin.register(ClientScopes)
class ClientScopesAdmin(admin.ModelAdmin):
    list_display = ("application", "scopes")
    search_fields = ("application__name", "application__client_id")
    raw_id_fields = ("application",)
