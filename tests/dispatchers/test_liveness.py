"""Derived status, the liveness queries, and mark_lost_dispatchers()."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from kohakku_controller import signals
from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher, DispatcherStatus

from .conftest import detail_url, heartbeat_url

pytestmark = pytest.mark.django_db


def _beat_at(dispatcher: Dispatcher, when) -> None:
    Dispatcher.objects.filter(pk=dispatcher.pk).update(last_heartbeat_at=when)
    dispatcher.refresh_from_db()


def test_offline_after_three_missed_intervals(register, staff_client):
    dispatcher = register(heartbeat_interval_seconds=10)
    now = timezone.now()
    _beat_at(dispatcher, now - timedelta(seconds=29))
    assert staff_client.get(detail_url(dispatcher.guid)).json()["status"] == "online"
    _beat_at(dispatcher, now - timedelta(seconds=31))
    assert staff_client.get(detail_url(dispatcher.guid)).json()["status"] == "offline"


def test_boundary_is_exactly_interval_times_missed(register):
    dispatcher = register(heartbeat_interval_seconds=60)
    beat = dispatcher.last_heartbeat_at
    assert dispatcher.status(beat + timedelta(seconds=179, microseconds=999_999)) == "online"
    assert dispatcher.status(beat + timedelta(seconds=180)) == "offline"


def test_missed_heartbeats_setting_applies(register):
    dispatcher = register(heartbeat_interval_seconds=60)
    later = dispatcher.last_heartbeat_at + timedelta(seconds=200)
    assert dispatcher.status(later) == "offline"
    with override_settings(KOHAKKU_CONTROLLER={"MISSED_HEARTBEATS": 5}):
        assert dispatcher.status(later) == "online"
        assert Dispatcher.objects.online(later).filter(pk=dispatcher.pk).exists()


def test_operator_flags_show_through(register):
    dispatcher = register()
    now = dispatcher.last_heartbeat_at
    Dispatcher.objects.filter(pk=dispatcher.pk).update(draining=True)
    dispatcher.refresh_from_db()
    assert dispatcher.status(now) == "draining"
    assert dispatcher.status(now + timedelta(hours=1)) == "offline"
    Dispatcher.objects.filter(pk=dispatcher.pk).update(enabled=False)
    dispatcher.refresh_from_db()
    assert dispatcher.status(now) == "disabled"
    assert dispatcher.status(now + timedelta(hours=1)) == "disabled"


def test_status_queries_agree_with_status(register):
    now = timezone.now()
    rows = {
        "fresh": register("fresh", heartbeat_interval_seconds=10),
        "stale": register("stale", heartbeat_interval_seconds=10),
        "slow-fresh": register("slow-fresh", heartbeat_interval_seconds=3600),
        "draining": register("draining", heartbeat_interval_seconds=60),
        "draining-stale": register("draining-stale", heartbeat_interval_seconds=60),
        "disabled": register("disabled", heartbeat_interval_seconds=60),
        "never": register("never", heartbeat_interval_seconds=5),
    }
    _beat_at(rows["stale"], now - timedelta(seconds=31))
    _beat_at(rows["slow-fresh"], now - timedelta(hours=2))
    _beat_at(rows["draining-stale"], now - timedelta(minutes=5))
    Dispatcher.objects.filter(name__startswith="draining").update(draining=True)
    Dispatcher.objects.filter(name="disabled").update(enabled=False)
    Dispatcher.objects.filter(name="never").update(last_heartbeat_at=None)
    expected = {name: Dispatcher.objects.get(name=name).status(now) for name in rows}
    assert expected == {
        "fresh": "online",
        "stale": "offline",
        "slow-fresh": "online",
        "draining": "draining",
        "draining-stale": "offline",
        "disabled": "disabled",
        "never": "offline",
    }
    for status in DispatcherStatus.values:
        found = set(Dispatcher.objects.with_status(status, now).values_list("name", flat=True))
        assert found == {name for name, value in expected.items() if value == status}, status
    assert set(Dispatcher.objects.accepting_work(now).values_list("name", flat=True)) == {
        "fresh",
        "slow-fresh",
    }
    online = set(Dispatcher.objects.online(now).values_list("name", flat=True))
    assert online == {"fresh", "slow-fresh", "draining", "disabled"}
    assert set(Dispatcher.objects.not_online(now).values_list("name", flat=True)) == (
        set(rows) - online
    )


def test_status_queries_hold_with_every_allowed_interval(register, staff_client):
    # One dispatcher per interval check-in allows (5-3600 s), half of them a microsecond
    # inside their cut-off and half exactly at it: the queries must neither grow with the
    # number of distinct intervals (SQLite refuses an expression 1,000 terms deep) nor
    # disagree with the status each row derives.
    model = register("template")
    now = timezone.now()
    rows = []
    for interval in range(5, 3601):
        offline_after = timedelta(seconds=3 * interval)
        inside = interval % 2 == 0
        rows.append(
            Dispatcher(
                name=f"every-{interval}",
                slug=f"every-{interval}",
                endpoint_url=model.endpoint_url,
                heartbeat_interval_seconds=interval,
                application_id=model.application_id,
                signing_secret_encrypted=model.signing_secret_encrypted,
                last_heartbeat_at=now - offline_after + timedelta(microseconds=1 if inside else 0),
            )
        )
    Dispatcher.objects.bulk_create(rows, batch_size=500)
    expected_online = {row.name for row in rows if row.status(now) == "online"}
    assert len(expected_online) == len(rows) // 2
    online = set(Dispatcher.objects.online(now).values_list("name", flat=True))
    assert online - {"template"} == expected_online
    offline = set(Dispatcher.objects.with_status("offline", now).values_list("name", flat=True))
    assert offline == {row.name for row in rows} - expected_online
    assert len(services.mark_lost_dispatchers(now)) == len(offline)
    # The API filters at its own clock: beat the online half again, now.
    Dispatcher.objects.filter(name__in=expected_online).update(last_heartbeat_at=timezone.now())
    listed = staff_client.get("/api/v1/dispatchers/", {"status": "online", "page_size": 1})
    assert listed.status_code == 200, listed.content
    assert int(listed["X-Total-Count"]) == len(expected_online) + 1


def test_queries_on_an_empty_registry():
    assert list(Dispatcher.objects.online()) == []
    assert list(Dispatcher.objects.not_online()) == []
    assert services.mark_lost_dispatchers() == []


# --- mark_lost_dispatchers ------------------------------------------------------------------


def test_mark_lost_records_the_transition_once_and_signals_after_commit(
    register, django_capture_on_commit_callbacks
):
    fresh = register("fresh", heartbeat_interval_seconds=60)
    gone = register("gone", heartbeat_interval_seconds=10)
    later = timezone.now() + timedelta(seconds=40)
    received = []

    def receiver(sender, dispatcher, **kwargs):
        received.append((sender, dispatcher.name, dispatcher.lost_at))

    signals.dispatcher_lost.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            lost = services.mark_lost_dispatchers(later)
        assert [d.name for d in lost] == ["gone"]
        assert received == [(Dispatcher, "gone", later)]
        gone.refresh_from_db()
        fresh.refresh_from_db()
        assert gone.lost_at == later
        assert fresh.lost_at is None
        # Still offline later: not recorded again, no second signal.
        with django_capture_on_commit_callbacks(execute=True):
            assert services.mark_lost_dispatchers(later + timedelta(hours=1)) == [
                Dispatcher.objects.get(name="fresh")
            ]
        assert [name for _, name, _ in received] == ["gone", "fresh"]
        gone.refresh_from_db()
        assert gone.lost_at == later
    finally:
        signals.dispatcher_lost.disconnect(receiver)


def test_lost_again_after_recovering(register, dispatcher_client):
    dispatcher = register(heartbeat_interval_seconds=10)
    first = services.mark_lost_dispatchers(timezone.now() + timedelta(seconds=31))
    assert [d.pk for d in first] == [dispatcher.pk]
    dispatcher_client.post(heartbeat_url(dispatcher.guid))
    dispatcher.refresh_from_db()
    assert dispatcher.lost_at is None
    second = services.mark_lost_dispatchers(timezone.now() + timedelta(seconds=31))
    assert [d.pk for d in second] == [dispatcher.pk]


def test_no_signal_when_the_transaction_rolls_back(register, django_capture_on_commit_callbacks):
    register(heartbeat_interval_seconds=10)
    received = []
    signals.dispatcher_lost.connect(received.append, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            try:
                with transaction.atomic():
                    assert services.mark_lost_dispatchers(timezone.now() + timedelta(minutes=1))
                    raise RuntimeError("abort")
            except RuntimeError:
                pass
        assert received == []
        assert Dispatcher.objects.get().lost_at is None
    finally:
        signals.dispatcher_lost.disconnect(received.append)


def test_a_failing_receiver_does_not_stop_the_others(register, django_capture_on_commit_callbacks):
    register("a", heartbeat_interval_seconds=10)
    register("b", heartbeat_interval_seconds=10)
    received = []

    def broken(sender, dispatcher, **kwargs):
        raise RuntimeError("receiver bug")

    def working(sender, dispatcher, **kwargs):
        received.append(dispatcher.name)

    signals.dispatcher_lost.connect(broken)
    signals.dispatcher_lost.connect(working)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            lost = services.mark_lost_dispatchers(timezone.now() + timedelta(minutes=1))
        assert len(lost) == 2
        assert sorted(received) == ["a", "b"]
    finally:
        signals.dispatcher_lost.disconnect(broken)
        signals.dispatcher_lost.disconnect(working)


def test_heartbeat_between_selection_and_update_wins(register):
    """A candidate that beats before its conditional update is not marked lost."""
    dispatcher = register(heartbeat_interval_seconds=10)
    later = timezone.now() + timedelta(seconds=31)
    # The heartbeat lands "after" the cut-off that mark_lost computes for `later`.
    _beat_at(dispatcher, later - timedelta(seconds=1))
    assert services.mark_lost_dispatchers(later) == []
    assert Dispatcher.objects.get().lost_at is None
