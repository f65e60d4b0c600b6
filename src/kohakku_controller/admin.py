"""Admin registrations: each domain registers its own models; this module loads them."""

from typing import Any

from django import forms
from django.contrib import admin

from .admin_forms import ConcurrencySafeAdmin, VersionCheckedForm, update_if_unchanged
from .auth import SCOPES
from .dispatchers import admin as dispatchers_admin  # noqa: F401
from .oauth import ClientScopes, validate_scopes
from .skills import admin as skills_admin  # noqa: F401
from .webhooks import admin as webhooks_admin  # noqa: F401
from .workflows import admin as workflows_admin  # noqa: F401


class ClientScopesForm(VersionCheckedForm):
    """Scopes are picked from :data:`~kohakku_controller.auth.SCOPES`, as with
    ``kohakku_create_client``; the field is saved as a sorted list of names. The grant as
    read is the version: a page opened before ``kohakku_create_client`` or another page
    changed it is refused."""

    version_fields = ("application_id", "scopes")

    scopes = forms.MultipleChoiceField(
        choices=[(name, f"{name}: {description}") for name, description in SCOPES.items()],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="granted scopes",
    )

    class Meta:
        model = ClientScopes
        fields = ("application", "scopes")

    def clean_scopes(self) -> list[str]:
        try:
            return validate_scopes(self.cleaned_data["scopes"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(ClientScopes)
class ClientScopesAdmin(ConcurrencySafeAdmin):
    form = ClientScopesForm
    list_display = ("application", "scopes")
    search_fields = ("application__name", "application__client_id")
    raw_id_fields = ("application",)

    def save_model(self, request: Any, obj: ClientScopes, form: Any, change: bool) -> None:
        if change:
            update_if_unchanged(form)
        else:
            super().save_model(request, obj, form, change)


def _mask_operator_tokens() -> None:
    """Show operators' API tokens (DRF's ``authtoken``) by their first characters only.

    DRF's own admin lists every token's key in clear, so whoever may view that list could
    act as any operator, superusers included. The key of a new token is shown once, when
    it is added. DRF's admin module is imported first, so its registration is the one
    replaced whatever the order of ``INSTALLED_APPS``.
    """
    from django.apps import apps

    if not apps.is_installed("rest_framework.authtoken"):
        return
    from django.contrib import messages
    from rest_framework.authtoken import admin as authtoken_admin
    from rest_framework.authtoken.models import TokenProxy

    class MaskedTokenAdmin(authtoken_admin.TokenAdmin):
        list_display = ("masked_key", "user", "created")
        search_fields = ("user__username",)

        @admin.display(description="key")
        def masked_key(self, token: Any) -> str:
            return f"{token.key[:4]}…"

        def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
            super().save_model(request, obj, form, change)
            if not change:
                messages.warning(
                    request,
                    f"The API token of {obj.user}: {obj.key} (copy it now; it is not shown again).",
                )

    if admin.site.is_registered(TokenProxy):
        admin.site.unregister(TokenProxy)
    admin.site.register(TokenProxy, MaskedTokenAdmin)


_mask_operator_tokens()
