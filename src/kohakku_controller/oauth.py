"""Per-client scope grants for django-oauth-toolkit.

django-oauth-toolkit lets any client ask for any declared scope. The controller narrows
that: an OAuth2 application may only obtain the controller scopes granted to it in
:class:`ClientScopes`. Enable it with::

    OAUTH2_PROVIDER = {
        "SCOPES": {**kohakku_controller.auth.SCOPES, ...},
        "SCOPES_BACKEND_CLASS": "kohakku_controller.oauth.ClientScopesBackend",
    }

A token request without ``scope`` gets every scope granted to the client.

:class:`kohakku_controller.oauth_validators.ControllerOAuth2Validator` is
django-oauth-toolkit's validator with a cheaper bearer-token lookup.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction
from django.utils.translation import gettext_lazy as _
from oauth2_provider.models import get_access_token_model, get_application_model
from oauth2_provider.scopes import SettingsScopes
from oauth2_provider.settings import oauth2_settings

from .auth import SCOPES


class ClientScopes(models.Model):
    """The controller scopes one OAuth2 application may obtain."""

    application = models.OneToOneField(
        oauth2_settings.APPLICATION_MODEL,
        on_delete=models.CASCADE,
        related_name="kohakku_scopes",
    )
    scopes = models.JSONField(_("granted scopes"), default=list, blank=True)

    class Meta:
        verbose_name = _("OAuth2 client scopes")
        verbose_name_plural = _("OAuth2 client scopes")

    def __str__(self) -> str:
        # A row written by hand may hold anything; showing it must not fail.
        scopes = self.scopes if isinstance(self.scopes, list) else [self.scopes]
        return f"{self.application_id}: {' '.join(map(str, scopes))}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        with changing_grant(self):
            super().save(*args, **kwargs)


class ClientScopesBackend(SettingsScopes):
    """Declared scopes, minus controller scopes not granted to the application."""

    def get_available_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        declared = list(super().get_available_scopes(application, request))
        if application is None:
            return declared
        granted = set(
            ClientScopes.objects.filter(application=application)
            .values_list("scopes", flat=True)
            .first()
            or []
        )
        return [scope for scope in declared if scope not in SCOPES or scope in granted]

    def get_default_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        return self.get_available_scopes(application, request)


def lock_client(application: Any, using: str | None = None) -> Any:
    """Lock the application's row until the transaction ends; return its stored secret
    (``None`` if it is gone). Whatever changes a client's secret or grant takes this lock,
    and so does the recommended validator before it saves a token
    (``ControllerOAuth2Validator``): a token is never issued on a secret or a grant
    withdrawn meanwhile."""
    pk = getattr(application, "pk", application)
    return (
        get_application_model()
        .objects.using(using)
        .select_for_update()
        .filter(pk=pk)
        .values_list("client_secret", flat=True)
        .first()
    )


@contextmanager
def changing_grant(grant: ClientScopes) -> Iterator[None]:
    """Around a change of ``grant`` (saved, updated or deleted): its client locked, and its
    tokens carrying a scope the grant no longer has revoked once the change is made."""
    with transaction.atomic():
        lock_client(grant.application_id)
        yield
        revoke_tokens_beyond(grant.application_id, grant.scopes)


def revoke_tokens_beyond(application: Any, granted: Any) -> int:
    """Revoke the access tokens of ``application`` (an application or its pk) that carry a
    controller scope outside ``granted``; return how many.

    A token keeps the scopes it was issued with until it expires, so a grant narrowed
    without this would take effect only then. Called whenever a grant is saved or deleted.
    """
    granted = set(granted) if isinstance(granted, list | tuple | set) else set()
    withdrawn = set(SCOPES) - granted
    tokens = get_access_token_model().objects.filter(application=application)
    doomed = [
        pk for pk, scope in tokens.values_list("pk", "scope") if withdrawn & set(scope.split())
    ]
    if not doomed:
        return 0
    tokens.filter(pk__in=doomed).delete()
    return len(doomed)


def _grant_deleted(sender: Any, instance: ClientScopes, **kwargs: Any) -> None:
    # Also when the admin deletes grants in bulk, or the application goes (cascade).
    lock_client(instance.application_id)
    revoke_tokens_beyond(instance.application_id, [])


models.signals.post_delete.connect(_grant_deleted, sender=ClientScopes)


@functools.cache
def _concrete_application_model() -> Any:
    return get_application_model()._meta.concrete_model


def _is_application(sender: Any) -> bool:
    # Every model's saves come here: a cached model and two attribute reads. Proxies of the
    # application model send themselves as the sender.
    meta = getattr(sender, "_meta", None)
    return getattr(meta, "concrete_model", None) is _concrete_application_model()


def _note_secret_change(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    # Before the save hashes it: a client secret that differs from the stored one is new.
    update_fields = kwargs.get("update_fields")
    if raw or instance.pk is None or not _is_application(sender):
        return
    if update_fields is not None and "client_secret" not in update_fields:
        return
    using = kwargs.get("using")
    if transaction.get_connection(using).in_atomic_block:
        stored = lock_client(instance, using)  # a token request checked against it waits
    else:
        stored = (
            sender.objects.using(using)
            .filter(pk=instance.pk)
            .values_list("client_secret", flat=True)
            .first()
        )
    instance._kohakku_secret_changed = stored is not None and stored != instance.client_secret


def _revoke_on_secret_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    if _is_application(sender) and getattr(instance, "_kohakku_secret_changed", False):
        instance._kohakku_secret_changed = False
        get_access_token_model().objects.filter(application=instance).delete()


def revoke_tokens_on_secret_changes() -> None:
    """However an application's secret is changed (django-oauth-toolkit's admin, code), the
    access tokens issued with the old one are revoked. Connected when the app is ready (the
    application model may be swapped)."""
    models.signals.pre_save.connect(_note_secret_change, dispatch_uid="kohakku-secret-change")
    models.signals.post_save.connect(_revoke_on_secret_change, dispatch_uid="kohakku-secret-saved")


@dataclass
class CreatedClient:
    application: Any
    client_id: str
    client_secret: str


def validate_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return sorted(set(scopes))


@transaction.atomic
def create_or_reset_client(
    name: str, scopes: list[str], *, client_id: str | None = None, client_secret: str | None = None
) -> CreatedClient:
    """Create (or update) a confidential client-credentials application with ``scopes``.

    The secret is returned in clear only here; django-oauth-toolkit stores it hashed. If
    the application exists already its secret is replaced, and every access token issued
    with the old one is revoked (as for any change of a secret: see
    :func:`revoke_tokens_on_secret_changes`).
    """
    scopes = validate_scopes(scopes)
    application_model = get_application_model()
    secret = client_secret or secrets.token_urlsafe(32)
    lookup = {"client_id": client_id} if client_id else {"name": name}
    application = application_model.objects.filter(**lookup).first()
    if application is None:
        application = application_model(client_id=client_id) if client_id else application_model()
    application.name = name
    application.client_type = application_model.CLIENT_CONFIDENTIAL
    application.authorization_grant_type = application_model.GRANT_CLIENT_CREDENTIALS
    application.client_secret = secret
    application.save()
    ClientScopes.objects.update_or_create(application=application, defaults={"scopes": scopes})
    return CreatedClient(application, application.client_id, secret)
