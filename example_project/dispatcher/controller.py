"""The dispatcher's side of the controller API: OAuth2 token, check-in, heartbeat, callbacks."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from dispatcher.config import DispatcherConfig
from dispatcher.state import DispatcherState, StateStore
from kohakku_controller.signing import sign_request


def transport_problem(exc: Exception, url: str) -> str:
    """``exc`` (a failure to reach ``url``, or where it redirected) in words, naming the host
    it tried: a wrong controller address shows at once. Scheme, host and port only: URLs
    carry signatures, tokens and sometimes credentials."""
    try:
        tried = str(exc.request.url)  # type: ignore[attr-defined]  (after any redirect)
    except (AttributeError, RuntimeError):
        tried = url
    parts = urlsplit(tried)
    host = parts.netloc.rpartition("@")[2]  # as written (a bad port too), without credentials
    return f"{type(exc).__name__} reaching {parts.scheme}://{host}: {exc}"


logger = logging.getLogger(__name__)

# Answers to a callback that retrying cannot change: the request itself is refused.
# 408, 425, 429 and every 5xx are retried.
DEFINITIVE_CALLBACK_STATUSES = frozenset({400, 401, 403, 404, 409, 410, 413, 422})


class ControllerError(Exception):
    """The controller refused a request, or answered something unexpected."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ControllerClient:
    """Talks to the controller with an OAuth2 client-credentials token (scope ``dispatchers``).

    The token is fetched on first use and fetched again when it expires or when the
    controller answers 401.
    """

    token_path = "/o/token/"
    checkin_path = "/api/v1/dispatchers/checkin/"
    heartbeat_path = "/api/v1/dispatchers/{guid}/heartbeat/"

    def __init__(self, config: DispatcherConfig, http: httpx.Client | None = None) -> None:
        self.config = config
        self.http = http or httpx.Client(timeout=config.http_timeout)
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_lock = threading.Lock()

    # -- OAuth2 -------------------------------------------------------------------------
    def _fetch_token(self) -> str:
        response = self.http.post(
            self.config.controller_url + self.token_path,
            data={"grant_type": "client_credentials", "scope": "dispatchers"},
            auth=(self.config.client_id, self.config.client_secret),
        )
        if response.status_code != 200:
            raise ControllerError(
                f"token request failed with HTTP {response.status_code}: {response.text[:200]}",
                response.status_code,
            )
        body = response.json()
        token = body.get("access_token")
        if not token:
            raise ControllerError("token response has no access_token")
        expires_in = float(body.get("expires_in") or 3600)
        # Renew a little early so a token never expires between check and use.
        self._token_expires_at = time.monotonic() + max(1.0, expires_in * 0.9)
        self._token = token
        return token

    def token(self, *, refresh: bool = False) -> str:
        """A valid access token, fetched again when stale or when ``refresh`` is set."""
        with self._token_lock:
            if refresh or self._token is None or time.monotonic() >= self._token_expires_at:
                return self._fetch_token()
            return self._token

    def _authorized_post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = self.config.controller_url + path
        response = self.http.post(url, json=body, headers=self._bearer(self.token()))
        if response.status_code == 401:
            logger.info("controller answered 401; fetching a new access token")
            response = self.http.post(
                url, json=body, headers=self._bearer(self.token(refresh=True))
            )
        return response

    @staticmethod
    def _bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    # -- check-in and heartbeat ------------------------------------------------------------
    def checkin(self, endpoint_url: str, *, rotate_secret: bool = False) -> dict[str, Any]:
        """Register (or update) this dispatcher; returns the controller's JSON answer."""
        body: dict[str, Any] = {
            "name": self.config.name,
            "endpoint_url": endpoint_url,
            "cloud": self.config.cloud,
            "backends": list(self.config.backends),
            "labels": dict(self.config.labels),
            "heartbeat_interval_seconds": self.config.heartbeat_interval,
            "capacity": self.config.capacity,
        }
        if rotate_secret:
            body["rotate_secret"] = True
        response = self._authorized_post(self.checkin_path, body)
        if response.status_code not in (200, 201):
            raise ControllerError(
                f"check-in failed with HTTP {response.status_code}: {response.text[:500]}",
                response.status_code,
            )
        answer = response.json()
        if not isinstance(answer, dict) or not answer.get("dispatcher_guid"):
            raise ControllerError("check-in answer has no dispatcher_guid")
        return answer

    def heartbeat(self, guid: str, running_tasks: list[str], free_capacity: int) -> None:
        """Report liveness, the running task guids and the free capacity."""
        response = self._authorized_post(
            self.heartbeat_path.format(guid=guid),
            {"running_tasks": running_tasks, "free_capacity": free_capacity},
        )
        if response.status_code != 200:
            raise ControllerError(
                f"heartbeat failed with HTTP {response.status_code}: {response.text[:500]}",
                response.status_code,
            )

    def close(self) -> None:
        self.http.close()


def check_in(client: ControllerClient, store: StateStore, endpoint_url: str) -> DispatcherState:
    """Check in and make sure a signing secret is stored; return the current state.

    The controller returns ``signing_secret`` only when it creates the dispatcher or when
    asked to rotate. A dispatcher that was ``updated`` but has no stored secret (its state
    file was lost) checks in again with ``rotate_secret: true``.
    """
    config = client.config
    state = store.load(config.controller_url, config.name)
    answer = client.checkin(endpoint_url)
    guid = str(answer["dispatcher_guid"])
    secret = answer.get("signing_secret") or ""
    # No secret in the answer, and the stored one is missing or belongs to another record
    # (the state file was lost, or an operator re-created the dispatcher): rotate.
    if not secret and (not state.signing_secret or state.dispatcher_guid != guid):
        logger.warning("no usable signing secret stored; asking the controller to rotate it")
        return rotate_secret(client, store, endpoint_url)
    state.dispatcher_guid = guid
    if secret:
        state.signing_secret = secret
    store.save(state)
    logger.info("checked in as %s (%s, action=%s)", config.name, guid, answer.get("action", "?"))
    return state


def rotate_secret(
    client: ControllerClient, store: StateStore, endpoint_url: str
) -> DispatcherState:
    """Check in with ``rotate_secret: true``, store the new secret and return the state.

    The controller signs with the new secret from then on; the one it replaces still
    verifies this dispatcher's callbacks for the controller's grace period.
    """
    config = client.config
    answer = client.checkin(endpoint_url, rotate_secret=True)
    secret = answer.get("signing_secret") or ""
    if not secret:
        raise ControllerError("the controller did not return a signing secret")
    state = DispatcherState(
        controller_url=config.controller_url,
        name=config.name,
        dispatcher_guid=str(answer["dispatcher_guid"]),
        signing_secret=secret,
    )
    store.save(state)
    logger.info(
        "checked in as %s (%s) with a new signing secret", config.name, state.dispatcher_guid
    )
    return state


class CallbackSender:
    """Delivers the callbacks of one task, in order, retrying until the controller answers.

    Network errors, 408/425/429 and 5xx are retried with exponential backoff (with
    jitter) for as long as it takes: a controller that is down delays a callback, it never
    drops it. A definitive refusal (see :data:`DEFINITIVE_CALLBACK_STATUSES`) is logged and
    the callback abandoned; ``on_refused`` is told so that a running task the controller no
    longer wants can be stopped.
    """

    def __init__(
        self,
        config: DispatcherConfig,
        http: httpx.Client,
        secret_provider: Callable[[], str],
        callback_url: str,
        callback_token: str,
        task_guid: str,
        on_refused: Callable[[str, int], None] | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.http = http
        self.secret_provider = secret_provider
        self.callback_url = callback_url
        self.callback_token = callback_token
        self.task_guid = task_guid
        self.on_refused = on_refused
        self.on_drained = on_drained
        self._queue: list[dict[str, Any]] = []
        self._condition = threading.Condition()
        self._closed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"callbacks-{task_guid}", daemon=True
        )
        self._thread.start()

    def send(self, status: str, **fields: Any) -> None:
        """Queue one callback; ``fields`` are the optional body fields."""
        body = {
            "status": status,
            "exit_code": fields.get("exit_code"),
            "result_key": fields.get("result_key", ""),
            "result_metadata": fields.get("result_metadata") or {},
            "error_message": fields.get("error_message", ""),
        }
        with self._condition:
            self._queue.append(body)
            self._condition.notify()

    def close(self) -> None:
        """No more callbacks will be queued; the thread ends once the queue is delivered."""
        with self._condition:
            self._closed = True
            self._condition.notify()

    def abandon(self) -> None:
        """Stop retrying (used when the dispatcher shuts down)."""
        self._stopping.set()
        with self._condition:
            self._closed = True
            self._condition.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the queue to drain; return whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._queue and not self._closed:
                        self._condition.wait()
                    if not self._queue:
                        return
                    body = self._queue.pop(0)
                if not self._deliver(body):
                    return
        finally:
            if self.on_drained is not None:
                self.on_drained()

    def _deliver(self, body: dict[str, Any]) -> bool:
        """Send one callback until it is answered; False when the thread should stop."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        delay = self.config.callback_backoff_initial
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            headers = {
                "Authorization": f"Bearer {self.callback_token}",
                "Content-Type": "application/json",
                **sign_request(self.secret_provider(), raw),
            }
            try:
                response = self.http.post(self.callback_url, content=raw, headers=headers)
            except httpx.HTTPError as exc:
                problem = transport_problem(exc, self.callback_url)
            else:
                if 200 <= response.status_code < 300:
                    logger.info(
                        "task %s: callback %r delivered (attempt %d)",
                        self.task_guid,
                        body["status"],
                        attempt,
                    )
                    return True
                if response.status_code in DEFINITIVE_CALLBACK_STATUSES:
                    logger.error(
                        "task %s: controller refused callback %r with HTTP %d: %s",
                        self.task_guid,
                        body["status"],
                        response.status_code,
                        response.text[:500],
                    )
                    if self.on_refused is not None:
                        self.on_refused(body["status"], response.status_code)
                    return True
                problem = f"HTTP {response.status_code}"
            wait = delay * (0.5 + random.random() / 2)
            logger.warning(
                "task %s: callback %r not delivered (%s); retrying in %.1f s",
                self.task_guid,
                body["status"],
                problem,
                wait,
            )
            if self._stopping.wait(wait):
                break
            delay = min(delay * 2, self.config.callback_backoff_max)
        logger.error(
            "task %s: dispatcher stopping; callback %r not delivered",
            self.task_guid,
            body["status"],
        )
        return False
