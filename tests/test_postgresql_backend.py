"""The PostgreSQL backend's health check: no round trip while healthy, a new connection after
the server closed the old one."""

from __future__ import annotations

import select
from collections.abc import Iterator

import pytest
from django.db import connection

from kohakku_controller.postgresql.base import DatabaseWrapper

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def wrappers() -> Iterator[list[DatabaseWrapper]]:
    made: list[DatabaseWrapper] = []
    yield made
    for wrapper in made:
        wrapper.close()


@pytest.fixture
def persistent(wrappers):
    """A connection as a web worker holds it: persistent, health-checked, autocommit."""

    def make() -> DatabaseWrapper:
        settings = {
            **connection.settings_dict,
            "ENGINE": "kohakku_controller.postgresql",
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
        }
        wrapper = DatabaseWrapper(settings, alias=f"health-{len(wrappers)}")
        wrappers.append(wrapper)
        return wrapper

    return make


def request(wrapper: DatabaseWrapper, sql: str, params: tuple = ()) -> object:
    """What one request does with the connection: Django's start-of-request step, one query."""
    wrapper.close_if_unusable_or_obsolete()
    with wrapper.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def test_a_healthy_connection_is_kept_and_checked_without_a_query(persistent):
    worker, observer = persistent(), persistent()
    pid = request(worker, "SELECT pg_backend_pid() /* kohakku-marker */")

    worker.close_if_unusable_or_obsolete()
    worker.close_if_health_check_failed()  # what the next request's first query runs

    last_query = request(observer, "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
    assert last_query == "SELECT pg_backend_pid() /* kohakku-marker */"  # no SELECT 1 sent
    assert request(worker, "SELECT pg_backend_pid()") == pid


def test_a_connection_the_server_closed_is_replaced_before_the_request_uses_it(persistent):
    worker, admin = persistent(), persistent()
    pid = request(worker, "SELECT pg_backend_pid()")
    assert request(admin, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    readable, _, _ = select.select([worker.connection.fileno()], [], [], 10)
    assert readable, "the server did not close the connection"

    new_pid = request(worker, "SELECT pg_backend_pid()")

    assert new_pid != pid
    assert request(worker, "SELECT 1") == 1


def test_a_connection_in_a_transaction_or_closed_is_judged_as_django_would(persistent):
    worker = persistent()
    request(worker, "SELECT 1")
    worker.connection.execute("BEGIN")
    assert worker.is_usable() is True
    worker.connection.execute("ROLLBACK")
    worker.connection.close()
    assert worker.is_usable() is False
