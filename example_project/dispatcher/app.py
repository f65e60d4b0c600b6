"""The dispatcher as a whole: check-in, the heartbeat loop and the HTTP server."""

from __future__ import annotations

import logging
import threading
import time

import httpx

from dispatcher.backends import BACKENDS, Backend
from dispatcher.config import DispatcherConfig
from dispatcher.controller import ControllerClient, ControllerError, check_in, rotate_secret
from dispatcher.server import DispatcherHTTPServer
from dispatcher.state import DispatcherState, StateStore
from dispatcher.tasks import TaskManager

logger = logging.getLogger(__name__)


class Dispatcher:
    """A running reference dispatcher.

    ``start()`` binds the listening socket, checks in (retrying until the controller
    answers) and starts the heartbeat loop and the HTTP server in background threads;
    ``stop()`` undoes all of it. Use it as a context manager in tests and embeddings.
    """

    def __init__(self, config: DispatcherConfig, http: httpx.Client | None = None) -> None:
        unknown = [name for name in config.backends if name not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backends: {', '.join(unknown)}")
        self.config = config
        self.http = http or httpx.Client(timeout=config.http_timeout)
        self.controller = ControllerClient(config, self.http)
        self.store = StateStore(config.state_dir)
        self.state = DispatcherState()
        self.backends: dict[str, Backend] = {
            name: BACKENDS[name](config) for name in config.backends
        }
        self.tasks = TaskManager(config, self.backends, self.http, self._secret)
        self.server: DispatcherHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Check-ins replace the state (and the state file): one at a time.
        self._checkin_lock = threading.Lock()
        self._recovery_lock = threading.Lock()
        self._last_recovery: float | None = None
        self._recovery: threading.Thread | None = None

    def _secret(self) -> str:
        return self.state.signing_secret

    def _guid(self) -> str:
        return self.state.dispatcher_guid

    @property
    def endpoint_url(self) -> str:
        """The URL the controller is told to push to."""
        port = self.server.server_address[1] if self.server is not None else None
        return self.config.advertised_endpoint(port)  # type: ignore[arg-type]

    def start(self) -> Dispatcher:
        """Bind, check in, then serve and heartbeat in background threads."""
        self.server = DispatcherHTTPServer(
            (self.config.listen_host, self.config.listen_port),
            self.tasks,
            self._secret,
            self._guid,
            self.config.max_push_bytes,
            self.config.signature_tolerance,
            request_timeout=self.config.request_timeout,
            request_deadline=self.config.request_deadline,
            max_connections=self.config.max_connections,
            on_signature_mismatch=self._signature_mismatched,
        )
        self._check_in_until_answered()
        if self._stop.is_set():
            return self
        serve = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="http",
            daemon=True,
        )
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._threads = [serve, beat]
        for thread in self._threads:
            thread.start()
        logger.info(
            "dispatcher %s serving on %s (capacity %d)",
            self.config.name,
            self.endpoint_url,
            self.config.capacity,
        )
        return self

    def _check_in_until_answered(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.state = check_in(self.controller, self.store, self.endpoint_url)
                return
            except (ControllerError, httpx.HTTPError, ValueError) as exc:
                status = getattr(exc, "status_code", None)
                if status in (400, 401, 403):
                    # Wrong credentials, a missing scope or a refused body: retrying cannot
                    # help. A controller that is not up yet (connection errors, 5xx) is
                    # waited for.
                    raise
                logger.warning("check-in failed (%s); retrying in %.0f s", exc, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)

    def heartbeat_once(self) -> None:
        """Send one heartbeat (checking in again if the controller forgot this dispatcher)."""
        try:
            self.controller.heartbeat(
                self.state.dispatcher_guid,
                self.tasks.running_task_guids(),
                self.tasks.free_capacity(),
            )
        except ControllerError as exc:
            if exc.status_code != 404:
                raise
            logger.warning("controller does not know this dispatcher; checking in again")
            with self._checkin_lock:
                self.state = check_in(self.controller, self.store, self.endpoint_url)

    def _signature_mismatched(self) -> None:
        """A push was signed with a key other than the stored secret: recover, in the
        background, at most once per ``secret_recovery_interval``.

        The usual cause is an operator's rotation (``POST dispatchers/{guid}/rotate-secret/``):
        the controller signs with a secret this dispatcher has not been given.
        """
        interval = self.config.secret_recovery_interval
        if interval <= 0:
            return
        with self._recovery_lock:
            if self._stop.is_set():
                return
            now = time.monotonic()
            if self._last_recovery is not None and now - self._last_recovery < interval:
                return
            self._last_recovery = now
            self._recovery = threading.Thread(
                target=self.recover_secret, name="secret-recovery", daemon=True
            )
            self._recovery.start()

    def recover_secret(self) -> None:
        """Take up a newer secret an operator wrote into the state file, or else get a new
        one by checking in with ``rotate_secret: true`` (the operator's is then replaced)."""
        with self._checkin_lock:
            stored = self.store.load(self.config.controller_url, self.config.name)
            if (
                stored.dispatcher_guid == self.state.dispatcher_guid
                and stored.signing_secret
                and stored.signing_secret != self.state.signing_secret
            ):
                logger.warning("push signatures did not match; using the state file's new secret")
                self.state = stored
                return
            logger.warning("push signatures did not match; asking the controller for a new secret")
            try:
                self.state = rotate_secret(self.controller, self.store, self.endpoint_url)
            except (ControllerError, httpx.HTTPError, ValueError) as exc:
                logger.warning("could not get a new signing secret: %s", exc)

    def _heartbeat_loop(self) -> None:
        while True:
            try:
                self.heartbeat_once()
            except (ControllerError, httpx.HTTPError, ValueError) as exc:
                logger.warning("heartbeat failed: %s", exc)
            if self._stop.wait(self.config.heartbeat_interval):
                return

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe to call from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop serving, stop running tasks and deliver what callbacks can be delivered."""
        self._stop.set()
        if self.server is not None:
            if self._threads:
                self.server.shutdown()
            self.server.server_close()
        self.tasks.shutdown()
        with self._recovery_lock:
            recovery = self._recovery
        for thread in [*self._threads, *([recovery] if recovery else [])]:
            thread.join(timeout=5)
        self.http.close()
        logger.info("dispatcher %s stopped", self.config.name)

    def wait(self) -> None:
        """Block until :meth:`stop` is called."""
        self._stop.wait()

    def __enter__(self) -> Dispatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
