"""Receivers that let the tasks domain react to dispatcher events (connected at start-up)."""

from __future__ import annotations

from django.dispatch import receiver

from .. import signals
from .services import unfinished_tasks_of_deleted_dispatcher

__all__ = ["on_dispatcher_deleting"]


@receiver(signals.dispatcher_deleting, dispatch_uid="kohakku_tasks_on_dispatcher_deleting")
def on_dispatcher_deleting(sender, dispatcher, force=False, **kwargs) -> int:
    """Unfinished tasks held by ``dispatcher``; requeued first when ``force`` is true."""
    return unfinished_tasks_of_deleted_dispatcher(sender, dispatcher, force=force)
