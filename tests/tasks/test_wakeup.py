"""Wake-ups: Redis pub/sub when the cache is django-redis, polling otherwise."""

from __future__ import annotations

import threading

import pytest

from kohakku_controller.tasks.scheduler import PollWaiter, RedisWaiter, make_wakeup_waiter
from kohakku_controller.tasks.services import create_task, redis_wakeup_channel

from .conftest import wakes

pytestmark = pytest.mark.django_db


@pytest.mark.usefixtures("redis_cache")
def test_redis_wakeup_on_create(skill_version, settings, django_capture_on_commit_callbacks):
    assert redis_wakeup_channel() is not None
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "SCHEDULER_WAKEUP": "redis"}
    waiter = make_wakeup_waiter()
    assert isinstance(waiter, RedisWaiter)

    def create() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            create_task(skill="code-review")

    assert wakes(waiter, create)


def test_poll_mode_waits_for_the_interval_or_stop(settings):
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "SCHEDULER_WAKEUP": "poll"}
    waiter = make_wakeup_waiter()
    assert type(waiter) is PollWaiter
    stop = threading.Event()
    stop.set()
    thread = threading.Thread(target=waiter.wait, args=(600, stop))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()  # a stop request ends a 600 s wait at once
