"""HTTP calls that end by a deadline, however slowly the other side answers.

httpx's timeouts bound each network operation on its own: a dispatcher that sends a byte
of its response headers every few seconds never trips the read timeout, and would hold a
push (and the scheduler's pass, which waits for its pushes) for as long as it pleased.
Calls made through a client with a :class:`DeadlineTransport`, inside
``with call_deadline(seconds):``, fail with ``httpx.ConnectTimeout``, ``WriteTimeout`` or
``ReadTimeout`` once ``seconds`` have passed in all, connecting included. Each network
operation gets what is left of the deadline (or its own timeout, if shorter); outside
``call_deadline`` the transport behaves as httpx's own.

The deadline belongs to the calling thread, so one client can serve several threads, each
with its own deadline, and a kept-alive connection obeys whichever call uses it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from ..conf import kohakku_settings

_calls = threading.local()


def push_deadline_seconds() -> float:
    """How long one call to a dispatcher may take in all, answer included (name resolution
    aside): ``PUSH_CONNECT_TIMEOUT + PUSH_READ_TIMEOUT``, which ``SCHEDULER_LEASE_SECONDS``
    must exceed (system check E008)."""
    return kohakku_settings.PUSH_CONNECT_TIMEOUT + kohakku_settings.PUSH_READ_TIMEOUT


@contextlib.contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Calls made in this block, on this thread, end within ``seconds`` in all."""
    outer = getattr(_calls, "deadline", None)
    _calls.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _calls.deadline = outer


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = getattr(_calls, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call took longer than its deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._backend.connect_tcp(host, port, left, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport (same arguments), with its connections obeying :func:`call_deadline`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # httpx builds its httpcore pool with the default network backend and takes no other;
        # every connection the pool opens goes through this wrapper instead.
        pool = self._pool
        pool._network_backend = _DeadlineBackend(pool._network_backend)
