"""Helpers for admin forms that validate with the API's rules and never lose a race.

The admin must refuse what the API refuses. Its forms call the same serializers and
services, and show the API's errors (DRF error details) on the matching form fields.

Like the API, the admin never writes over a change it did not see: a change form carries the
version of the object it showed (:class:`VersionCheckedForm`) and its save is conditional on
that version; a save that loses a race with another request ends as a message
(:class:`ConcurrencySafeAdmin`), never as a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import IntegrityError, models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from rest_framework.exceptions import APIException
from rest_framework.settings import api_settings

from .exceptions import NON_FIELD_ERRORS, Conflict

logger = logging.getLogger("kohakku_controller.admin")

#: The hidden field that carries the version of the object the change form showed.
VERSION_FIELD = "read_version"


def error_messages(detail: Any) -> list[str]:
    """Flatten a DRF error detail (a string, a list or a nested mapping) into messages.

    Nested keys (a list index, a label key) prefix their messages: ``"0: ..."``.
    """
    if isinstance(detail, Mapping):
        return [
            f"{key}: {message}"
            for key, value in detail.items()
            for message in error_messages(value)
        ]
    if isinstance(detail, (list, tuple)):
        return [message for item in detail for message in error_messages(item)]
    return [str(detail)]


def add_api_errors(form: forms.BaseForm, detail: Any) -> None:
    """Show a DRF error detail on ``form``: each field's errors on that field, when the form
    has it and has no error there yet; anything else as a form-wide error naming the field."""
    if not isinstance(detail, Mapping):
        form.add_error(None, error_messages(detail))
        return
    for field, value in detail.items():
        if field in form.fields:
            if field not in form.errors:
                form.add_error(field, error_messages(value))
        elif field in (NON_FIELD_ERRORS, api_settings.NON_FIELD_ERRORS_KEY):
            form.add_error(None, error_messages(value))
        else:
            form.add_error(None, [f"{field}: {message}" for message in error_messages(value)])


def stale_message(instance: models.Model) -> str:
    return (
        f"This {instance._meta.verbose_name} was changed by someone else since you opened "
        "this page; reload it and make your change again."
    )


class StaleEdit(Conflict):
    """The object changed between the form's check and its write."""


class VersionCheckedForm(forms.ModelForm):
    """A change form that refuses to save over a change it did not show.

    The form is rendered with the object's version in a hidden field; a submission whose
    version is no longer the object's is refused with a form-wide error. The version is the
    values of ``version_fields``: ``updated_at`` where the model keeps one, else the fields
    the form can change. The save must be conditional on the same values
    (:func:`update_if_unchanged`, or a service that checks them, such as ``save_workflow``),
    so a change landing between the check and the write is refused too.
    """

    version_fields: tuple[str, ...] = ("updated_at",)

    read_version = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # As read, before the submitted values are put on the instance.
        self.read_values = {name: getattr(self.instance, name) for name in self.version_fields}
        self.fields[VERSION_FIELD].initial = json.dumps(self.read_values, default=str)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        opened = cleaned.pop(VERSION_FIELD, None)  # checked here; not a value to save
        if self.instance.pk is not None and opened != self.fields[VERSION_FIELD].initial:
            self.add_error(None, stale_message(self.instance))
        return cleaned

    @property
    def changed_fields(self) -> list[str]:
        """The model fields the submission changed (not the version it carries)."""
        return [name for name in self.changed_data if name != VERSION_FIELD]

    @property
    def changes(self) -> dict[str, Any]:
        """The changed fields' new values, as a conditional write takes them."""
        return {name: self.cleaned_data[name] for name in self.changed_fields}


@contextmanager
def stale_on_conflict(instance: models.Model) -> Iterator[None]:
    """A service's ``Conflict`` (its conditional write matched nothing) as :class:`StaleEdit`,
    in the admin's words."""
    try:
        yield
    except StaleEdit:
        raise
    except Conflict:
        raise StaleEdit(stale_message(instance)) from None


def update_if_unchanged(form: VersionCheckedForm, **extra: Any) -> None:
    """Write the fields ``form`` changed, and ``extra``, to its object in one ``UPDATE``
    that matches only while the object still has the version the form checked.

    Raises :class:`StaleEdit` when it matches nothing: changed or deleted meanwhile.
    """
    changes = form.changes
    if not changes:
        return
    instance = form.instance
    changes.update(extra)
    rows = type(instance)._default_manager.filter(pk=instance.pk, **form.read_values)
    if not rows.update(**changes):
        raise StaleEdit(stale_message(instance))
    for name, value in extra.items():
        setattr(instance, name, value)


class ConcurrencySafeAdmin(admin.ModelAdmin):
    """Ends an add or change that lost a race with another request as an error message.

    The admin saves in one transaction. When a service refuses the write (a conditional
    update that matched nothing, a row deleted or a name taken meanwhile: a DRF exception)
    or the database does (a unique constraint), that transaction is rolled back, the reason
    is shown, and the page is loaded again with what is stored now.
    """

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except (APIException, IntegrityError) as exc:
            if request.method != "POST":
                raise
            if isinstance(exc, APIException):
                message = " ".join(error_messages(exc.detail))
            else:
                logger.warning("admin save refused by the database", exc_info=True)
                message = (
                    f"Nothing was saved: another request saved a conflicting "
                    f"{self.opts.verbose_name} at the same time. Check it and try again."
                )
            self.message_user(request, message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
