"""Hosts with ``USE_TZ = False``: Django then stores and returns wall times of ``TIME_ZONE``.

Every time the controller writes for a client still carries its offset, and times given
with an offset are still understood.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.utils import timezone

from kohakku_controller.tasks import scheduler as scheduler_module
from kohakku_controller.tasks.scheduler import build_push_body
from kohakku_controller.tasks.services import create_task

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def naive_tokyo(settings):
    settings.USE_TZ = False
    settings.TIME_ZONE = "Asia/Tokyo"


def test_times_in_responses_and_pushes_carry_their_offset(skill_version, dispatch, staff_client):
    task, token = dispatch(create_task(skill="code-review"))
    assert timezone.is_naive(task.deadline_at)  # as Django stores it here
    pushed = datetime.fromisoformat(build_push_body(task, token)["deadline_at"])
    assert pushed.utcoffset() == timedelta(hours=9)
    assert pushed.replace(tzinfo=None) == task.deadline_at
    shown = staff_client.get(f"/api/v1/tasks/{task.guid}/").json()
    created = datetime.fromisoformat(shown["created_at"])
    assert created.utcoffset() == timedelta(hours=9)
    assert created.replace(tzinfo=None) == task.created_at


@pytest.mark.parametrize("suffix", ["Z", "+09:00", ""])
def test_time_filters_take_times_with_or_without_an_offset(skill_version, staff_client, suffix):
    create_task(skill="code-review")
    before = staff_client.get("/api/v1/tasks/", {"created_after": f"2020-01-01T00:00:00{suffix}"})
    assert before.status_code == 200, before.content
    assert len(before.json()) == 1
    after = staff_client.get("/api/v1/tasks/", {"created_after": f"2999-01-01T00:00:00{suffix}"})
    assert after.json() == []
    deliveries = staff_client.get(
        "/api/v1/webhooks/deliveries/", {"received_after": f"2020-01-01T00:00{suffix}"}
    )
    assert (deliveries.status_code, deliveries.json()) == (200, [])


def test_a_retry_after_date_is_read():
    later = datetime.now(UTC) + timedelta(seconds=50)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    waited = scheduler_module._busy_seconds(httpx.Response(429, headers={"Retry-After": header}))
    assert 40 <= waited <= 50
