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
