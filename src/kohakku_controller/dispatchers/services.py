"""Dispatcher services (stand-in: the dispatcher registry owns the full module)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .. import signals
from .models import Dispatcher


def mark_lost_dispatchers(now=None) -> list[Dispatcher]:
    """Record online -> offline once per dispatcher; send ``dispatcher_lost`` after commit."""
    now = now or timezone.now()
    online_ids = set(Dispatcher.objects.online(now).values_list("pk", flat=True))
    lost = []
    candidates = Dispatcher.objects.filter(lost_at__isnull=True, last_heartbeat_at__isnull=False)
    for dispatcher in candidates.exclude(pk__in=online_ids):
        with transaction.atomic():
            updated = Dispatcher.objects.filter(pk=dispatcher.pk, lost_at__isnull=True).update(
                lost_at=now
            )
            if updated:
                dispatcher.lost_at = now
                lost.append(dispatcher)
                transaction.on_commit(
                    lambda d=dispatcher: signals.dispatcher_lost.send(
                        sender=Dispatcher, dispatcher=d
                    )
                )
    return lost
