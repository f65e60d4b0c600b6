"""Migration 0015 (``Dispatcher.tasks_reported_at``) on a database that holds dispatchers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ..migrating import latest, migrate

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("kohakku_controller", "0014_count_task_claims")]
AFTER = [("kohakku_controller", "0015_dispatcher_tasks_reported_at")]


def test_the_task_list_is_dated_from_the_last_heartbeat():
    newest = latest()
    try:
        old = migrate(BEFORE).get_model("kohakku_controller", "Dispatcher")
        beat = timezone.now() - timedelta(seconds=30)
        beating = old.objects.create(
            name="beating", slug="beating", endpoint_url="http://d:1", last_heartbeat_at=beat
        )
        silent = old.objects.create(name="silent", slug="silent", endpoint_url="http://d:2")
        new = migrate(AFTER).get_model("kohakku_controller", "Dispatcher")
        dated = dict(new.objects.values_list("pk", "tasks_reported_at"))
        # The sweep compared the list with the last heartbeat until now: no grace changes.
        assert dated == {beating.pk: beat, silent.pk: None}
    finally:
        migrate(newest)
