"""Admin registrations: each domain registers its own models; this module loads them."""

from typing import Any

from django import forms
from django.contrib import admin

from .admin_forms import ConcurrencySafeAdmin, VersionCheckedForm, update_if_unchanged
from .auth import SCOPES
from .dispatchers import admin as dispatchers_admin  # noqa: F401
from .oauth import ClientScopes, changing_grant, validate_scopes
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
            with changing_grant(obj):  # a conditional update: save() is not called
                update_if_unchanged(form)
        else:
            super().save_model(request, obj, form, change)


def _hide_operator_tokens() -> None:
    """Close DRF's admin for operators' API tokens (``authtoken``).

    It shows every token's key in clear, in its list and also wherever the admin names a
    token (change, history and delete pages), so whoever may view tokens there could act as
    any operator, superusers included. Its registration is replaced by one that lets nobody
    view, add, change or delete tokens (and is left off the index); operators get tokens
    with ``manage.py drf_create_token``. It stays registered, so a host app that replaces
    it the usual way (unregister, then register its own) still can, and a host's own token
    admin registered first is left alone. DRF's admin module is imported first, so this
    works whatever the order of ``INSTALLED_APPS``.
    """
    from django.apps import apps

    if not apps.is_installed("rest_framework.authtoken"):
        return
    from rest_framework.authtoken.admin import TokenAdmin
    from rest_framework.authtoken.models import TokenProxy

    class ClosedTokenAdmin(TokenAdmin):
        def has_module_permission(self, request: Any) -> bool:
            return False

        def has_view_permission(self, request: Any, obj: Any = None) -> bool:
            return False

        def has_add_permission(self, request: Any) -> bool:
            return False

        def has_change_permission(self, request: Any, obj: Any = None) -> bool:
            return False

        def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
            return False

    registered = admin.site._registry.get(TokenProxy)
    if registered is not None and type(registered) is TokenAdmin:
        admin.site.unregister(TokenProxy)
        admin.site.register(TokenProxy, ClosedTokenAdmin)


_hide_operator_tokens()
