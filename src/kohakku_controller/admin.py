"""Admin registrations: each domain registers its own models; this module loads them."""

from django.contrib import admin

from .dispatchers import admin as dispatchers_admin  # noqa: F401
from .oauth import ClientScopes
from .skills import admin as skills_admin  # noqa: F401
from .webhooks import admin as webhooks_admin  # noqa: F401
from .workflows import admin as workflows_admin  # noqa: F401


@admin.register(ClientScopes)
class ClientScopesAdmin(admin.ModelAdmin):
    list_display = ("application", "scopes")
    search_fields = ("application__name", "application__client_id")
    raw_id_fields = ("application",)
