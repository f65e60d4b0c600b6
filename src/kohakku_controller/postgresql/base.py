"""Django's PostgreSQL backend with a connection health check that needs no round trip.

With ``CONN_HEALTH_CHECKS`` Django checks a persistent connection at the start of each
request by sending ``SELECT 1``: one more round trip on every request, and on the hot
endpoints (heartbeat, callback) a third of the database work. This backend first asks the
operating system instead. An idle connection's socket has nothing to read unless the server
sent something since the last answer: most often that it is closing the connection (a
restart, a failover, ``pg_terminate_backend``), in which case the socket reports its end.
Only then does it run Django's own check, which reads what the server said and answers for
it. A connection with nothing pending is one the server has not given up on; a network path
that vanished without a word is caught by neither check (nothing answers ``SELECT 1``
either) and surfaces as the request's own database error.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg import pq

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed:
            return False
        if connection.info.transaction_status != pq.TransactionStatus.IDLE or _has_input(
            connection.fileno()
        ):
            return super().is_usable()
        return True


def _has_input(fileno: int) -> bool:
    """Whether the socket has data, an end of stream or an error waiting, without blocking."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fileno, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    readable, _, errored = select.select([fileno], [], [fileno], 0)
    return bool(readable or errored)
