"""Accepted tasks: validation of pushes, idempotency, capacity, and the run of each task."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dispatcher.backends import Backend, Job, RunOutcome
from dispatcher.config import DispatcherConfig
from dispatcher.controller import CallbackSender, transport_problem
from dispatcher.package import (
    PackageError,
    PackageLimits,
    TransientPackageError,
    download_package,
    extract_package,
    find_package_root,
    read_entrypoint,
)

logger = logging.getLogger(__name__)

RESULT_FILE_NAME = "result.json"
# The longest run a push may ask for (the controller's default cap is 7 days).
MAX_TIMEOUT_SECONDS = 366 * 24 * 3600
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# What goes into a request header: a token for names, visible ASCII (and spaces) for values.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_BEARER_TOKEN = re.compile(r"[\x21-\x7e]+")


class PushError(Exception):
    """A push (or cancel) the dispatcher refuses; ``status`` and ``body`` form the answer."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class TaskPush:
    """A validated ``POST /tasks/`` body (only the fields the dispatcher uses)."""

    task_guid: str
    attempt: int
    skill_slug: str
    skill_version: Any
    content_hash: str
    download_url: str
    input: Any
    # ``input`` encoded once at push time: what the skill reads on stdin.
    input_json: bytes
    backend: str
    timeout_seconds: float
    callback_url: str
    callback_token: str
    result_key_prefix: str
    # The key the upload URL writes (``result.key``); reported as ``result_key``.
    result_key: str
    result_upload_url: str
    result_method: str
    result_headers: dict[str, str]

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_guid}:{self.attempt}"


def _invalid(field_name: str, reason: str) -> PushError:
    return PushError(400, {field_name: [reason]})


def _http_url(value: Any, field_name: str) -> str:
    # Parsed as the HTTP client will: a URL it cannot send to is refused now, not found
    # out after the push was accepted.
    try:
        url = httpx.URL(value) if isinstance(value, str) else None
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise _invalid(field_name, "must be an http(s) URL")
    return value


def parse_push(body: Any, backends: list[str]) -> TaskPush:
    """Validate a push body; raise :class:`PushError` (400) naming the field at fault."""
    if not isinstance(body, dict):
        raise _invalid("non_field_errors", "the body must be a JSON object")
    try:
        task_guid = str(uuid.UUID(str(body.get("task_guid"))))
    except ValueError:
        raise _invalid("task_guid", "must be a UUID") from None
    attempt = body.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise _invalid("attempt", "must be an integer of at least 1")
    skill = body.get("skill")
    if not isinstance(skill, dict):
        raise _invalid("skill", "must be an object")
    content_hash = skill.get("content_hash")
    if not isinstance(content_hash, str) or not _SHA256_HEX.match(content_hash):
        raise _invalid("skill.content_hash", "must be a sha256 hex digest")
    download_url = _http_url(skill.get("download_url"), "skill.download_url")
    if "input" not in body:
        raise _invalid("input", "is required")
    try:
        input_json = json.dumps(body["input"]).encode()
    except RecursionError:
        raise _invalid("input", "is nested too deeply") from None
    backend = body.get("backend", "local")
    if not isinstance(backend, str) or backend not in backends:
        raise _invalid("backend", f"this dispatcher runs only {', '.join(backends)}")
    timeout = body.get("timeout_seconds")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS  # also false for NaN
    ):
        raise _invalid(
            "timeout_seconds", f"must be a number above 0 and at most {MAX_TIMEOUT_SECONDS}"
        )
    callback_url = _http_url(body.get("callback_url"), "callback_url")
    callback_token = body.get("callback_token")
    if not isinstance(callback_token, str) or not callback_token:
        raise _invalid("callback_token", "must be a non-empty string")
    if not _BEARER_TOKEN.fullmatch(callback_token):
        raise _invalid("callback_token", "must be visible ASCII characters only")
    result = body.get("result")
    if not isinstance(result, dict):
        raise _invalid("result", "must be an object")
    key_prefix = result.get("key_prefix")
    if not isinstance(key_prefix, str) or not key_prefix:
        raise _invalid("result.key_prefix", "must be a non-empty string")
    result_key = result.get("key") or key_prefix + RESULT_FILE_NAME
    if not isinstance(result_key, str) or not result_key.startswith(key_prefix):
        raise _invalid("result.key", "must be a string under result.key_prefix")
    upload_url = _http_url(result.get("upload_url"), "result.upload_url")
    method = result.get("method", "PUT")
    if not isinstance(method, str) or method.upper() not in ("PUT", "POST"):
        raise _invalid("result.method", "must be PUT or POST")
    headers = result.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise _invalid("result.headers", "must be an object of strings")
    if not all(
        _HEADER_NAME.fullmatch(k) and _HEADER_VALUE.fullmatch(v) for k, v in headers.items()
    ):
        raise _invalid("result.headers", "must be HTTP header names and ASCII values")
    return TaskPush(
        task_guid=task_guid,
        attempt=attempt,
        skill_slug=str(skill.get("slug", "")),
        skill_version=skill.get("version"),
        content_hash=content_hash.lower(),
        download_url=download_url,
        input=body["input"],
        input_json=input_json,
        backend=backend,
        timeout_seconds=float(timeout),
        callback_url=callback_url,
        callback_token=callback_token,
        result_key_prefix=key_prefix,
        result_key=result_key,
        result_upload_url=upload_url,
        result_method=method.upper(),
        result_headers=dict(headers),
    )


@dataclass
class TaskRecord:
    """One accepted push and where it stands."""

    push: TaskPush
    state: str = "accepted"  # accepted, running, completed, failed, cancelled
    executing: bool = True
    cancel_event: threading.Event = field(default_factory=threading.Event)
    sender: CallbackSender | None = None
    # A newer attempt of the same task replaced this one: its end is not reported.
    superseded: bool = False


class TaskManager:
    """Accepts pushes and runs each accepted task in its own thread.

    ``capacity`` tasks execute at the same time; a push beyond that is answered 429 with
    ``Retry-After`` (the controller requeues it). A repeated push with the same
    ``Idempotency-Key`` is answered 200 and does not run again.
    """

    def __init__(
        self,
        config: DispatcherConfig,
        backends: dict[str, Backend],
        http: httpx.Client,
        secret_provider: Callable[[], str],
    ) -> None:
        self.config = config
        self.backends = backends
        self.http = http
        self.secret_provider = secret_provider
        self.limits = PackageLimits(
            max_package_bytes=config.max_package_bytes,
            max_extracted_bytes=config.max_extracted_bytes,
            max_files=config.max_package_files,
        )
        self._lock = threading.Lock()
        self._by_key: OrderedDict[str, TaskRecord] = OrderedDict()
        self._by_guid: dict[str, TaskRecord] = {}
        # Tasks whose callbacks are not all delivered yet: still reported as running.
        self._reported: dict[str, TaskRecord] = {}
        self._accepting = True

    # -- views of the current load ----------------------------------------------------------
    def running_task_guids(self) -> list[str]:
        """Tasks accepted and not yet fully reported to the controller."""
        with self._lock:
            return sorted(self._reported)

    def free_capacity(self) -> int:
        with self._lock:
            return max(0, self.config.capacity - self._busy())

    def _busy(self) -> int:
        # Called with the lock held. A superseded run is on its way out: its slot is free.
        return sum(
            1 for record in self._by_key.values() if record.executing and not record.superseded
        )

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, self.config.heartbeat_interval))}

    # -- pushes and cancels -------------------------------------------------------------------
    def accept(self, push: TaskPush, idempotency_key: str | None) -> tuple[int, dict[str, Any]]:
        """Accept ``push`` (202), answer a repeat (200), or raise :class:`PushError`."""
        if idempotency_key is not None and idempotency_key.strip() != push.idempotency_key:
            raise _invalid("Idempotency-Key", "must be '<task_guid>:<attempt>' of the body")
        key = push.idempotency_key
        with self._lock:
            if not self._accepting:
                # With Retry-After the controller gives the attempt back and sends the task
                # elsewhere; a bare 503 would count as a failed push.
                raise PushError(503, {"detail": "dispatcher is shutting down"}, self._retry_after())
            existing = self._by_key.get(key)
            if existing is not None:
                return 200, {
                    "status": "duplicate",
                    "task_guid": push.task_guid,
                    "state": existing.state,
                }
            other = self._by_guid.get(push.task_guid)
            if other is not None and other.executing and not other.superseded:
                if other.push.attempt > push.attempt:
                    raise PushError(
                        409,
                        {
                            "detail": f"attempt {other.push.attempt} of this task is running",
                            "task_guid": push.task_guid,
                        },
                    )
                # The controller gave up on the older attempt (it thought this dispatcher
                # lost) and its view wins: stop the old run, unreported, and run this one.
                other.superseded = True
                other.cancel_event.set()
                self.backends[other.push.backend].cancel(push.task_guid)
                logger.warning(
                    "task %s: attempt %d supersedes attempt %d",
                    push.task_guid,
                    push.attempt,
                    other.push.attempt,
                )
            busy = self._busy()
            if busy >= self.config.capacity:
                raise PushError(
                    429,
                    {"detail": f"at capacity ({self.config.capacity} tasks running)"},
                    self._retry_after(),
                )
            record = TaskRecord(push=push)
            self._by_key[key] = record
            self._by_guid[push.task_guid] = record
            self._reported[push.task_guid] = record
            self._forget_old_keys()
        record.sender = CallbackSender(
            self.config,
            self.http,
            self.secret_provider,
            push.callback_url,
            push.callback_token,
            push.task_guid,
            on_refused=lambda status, code: self._controller_refused(record, status, code),
            on_drained=lambda: self._drained(record),
        )
        threading.Thread(
            target=self._execute, args=(record,), name=f"task-{push.task_guid}", daemon=True
        ).start()
        logger.info("task %s attempt %d accepted", push.task_guid, push.attempt)
        return 202, {"status": "accepted", "task_guid": push.task_guid}

    def cancel(self, task_guid: str, attempt: int | None = None) -> tuple[int, dict[str, Any]]:
        """Stop a task: 202 when it was executing, 200 when it had ended or is unknown.

        An unknown task (never pushed here, or forgotten) is answered 200 as the contract
        asks: there is nothing to stop, and any other answer makes the controller retry. So
        is a cancel of another ``attempt`` than the one here: the controller only cancels
        the attempt it last pushed, so an older cancel (a replay) must not stop a newer run.
        """
        with self._lock:
            record = self._by_guid.get(task_guid)
        if record is None or attempt not in (None, record.push.attempt):
            what = "task" if record is None else f"attempt {attempt} of this task"
            return 200, {
                "status": "unknown",
                "task_guid": task_guid,
                "detail": f"no such {what} on this dispatcher; nothing to cancel",
            }
        if not record.executing:
            return 200, {
                "status": "already_finished",
                "task_guid": task_guid,
                "state": record.state,
            }
        record.cancel_event.set()
        self.backends[record.push.backend].cancel(task_guid)
        logger.info("task %s: cancel requested", task_guid)
        return 202, {"status": "cancelling", "task_guid": task_guid}

    def _forget_old_keys(self) -> None:
        # Called with the lock held: drop the oldest finished pushes beyond the bound.
        excess = len(self._by_key) - self.config.remembered_pushes
        for key, record in list(self._by_key.items()):
            if excess <= 0:
                return
            if record.executing or self._reported.get(record.push.task_guid) is record:
                continue
            del self._by_key[key]
            if self._by_guid.get(record.push.task_guid) is record:
                del self._by_guid[record.push.task_guid]
            excess -= 1

    def _controller_refused(self, record: TaskRecord, status: str, code: int) -> None:
        # The controller no longer wants this task (ended, cancelled, or unknown): stop it.
        if status == "running" and record.executing:
            logger.warning(
                "task %s: controller refused 'running' (HTTP %d); stopping the task",
                record.push.task_guid,
                code,
            )
            record.cancel_event.set()
            self.backends[record.push.backend].cancel(record.push.task_guid)

    def _drained(self, record: TaskRecord) -> None:
        with self._lock:
            if self._reported.get(record.push.task_guid) is record:
                del self._reported[record.push.task_guid]

    # -- the run of one task ----------------------------------------------------------------------
    def _execute(self, record: TaskRecord) -> None:
        push = record.push
        sender = record.sender
        assert sender is not None
        sender.send("running")
        record.state = "running"
        workdir = Path(tempfile.mkdtemp(prefix="kohakku-task-"))
        final: dict[str, Any]
        try:
            final = self._run(record, workdir)
        except Exception as exc:
            logger.exception("task %s: unexpected dispatcher error", push.task_guid)
            final = {"status": "failed", "error_message": f"dispatcher error: {exc}"}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        stopping = not self._accepting and final["status"] == "cancelled"
        with self._lock:
            record.state = final["status"]
            record.executing = False
        if record.superseded:
            logger.warning(
                "task %s: attempt %d stopped, not reported", push.task_guid, push.attempt
            )
            sender.abandon()
            return
        if stopping:
            # Shutting down: report nothing, so the controller requeues the task once it
            # sees this dispatcher lost.
            logger.warning("task %s: stopped by shutdown; not reported", push.task_guid)
        else:
            sender.send(final.pop("status"), **final)
            logger.info("task %s finished: %s", push.task_guid, record.state)
        sender.close()

    def _run(self, record: TaskRecord, workdir: Path) -> dict[str, Any]:
        push = record.push
        archive = workdir / "package.zip"
        extracted = workdir / "package"
        home = workdir / "home"
        extracted.mkdir(mode=0o700)
        home.mkdir(mode=0o700)
        try:
            self._download(push, archive, record.cancel_event)
            if record.cancel_event.is_set():
                return {"status": "cancelled", "error_message": "cancelled before it started"}
            extract_package(archive, extracted, self.limits)
            archive.unlink()
            root = find_package_root(extracted)
            entrypoint = read_entrypoint(root)
        except PackageError as exc:
            logger.warning("task %s: %s", push.task_guid, exc)
            return {"status": "failed", "error_message": str(exc)}
        if record.cancel_event.is_set():
            return {"status": "cancelled", "error_message": "cancelled before it started"}
        job = Job(
            task_guid=push.task_guid,
            package_root=root,
            entrypoint=entrypoint,
            input_json=push.input_json,
            timeout_seconds=push.timeout_seconds,
            home=home,
            cancel_event=record.cancel_event,
        )
        outcome = self.backends[push.backend].run(job)
        return self._judge(push, outcome)

    def _download(self, push: TaskPush, archive: Path, cancelled: threading.Event) -> None:
        """Fetch the package; failures that may pass are tried again, with the callbacks' backoff.

        Such failures are a controller or its database restarting, or a network blip.
        """
        delay = self.config.callback_backoff_initial
        for attempt in range(1, self.config.download_attempts + 1):
            try:
                download_package(
                    self.http, push.download_url, push.content_hash, archive, self.limits
                )
                return
            except TransientPackageError as exc:
                if attempt == self.config.download_attempts:
                    raise
                logger.warning(
                    "task %s: %s (attempt %d); retrying in %.1f s",
                    push.task_guid,
                    exc,
                    attempt,
                    delay,
                )
            if cancelled.wait(delay):
                return  # the caller checks the cancellation
            delay = min(delay * 2, self.config.callback_backoff_max)

    def _judge(self, push: TaskPush, outcome: RunOutcome) -> dict[str, Any]:
        """Turn a run outcome into the final callback fields (uploading a good result)."""
        if outcome.start_error:
            return {"status": "failed", "error_message": outcome.start_error}
        exit_code = outcome.exit_code if (outcome.exit_code or 0) >= 0 else None
        if outcome.cancelled:
            return {"status": "cancelled", "exit_code": exit_code, "error_message": "cancelled"}
        if outcome.timed_out:
            return {
                "status": "failed",
                "exit_code": exit_code,
                "error_message": f"timed out after {_seconds(push.timeout_seconds)} s",
            }
        if outcome.output_overflow:
            return {
                "status": "failed",
                "exit_code": exit_code,
                "error_message": (
                    f"output is larger than the {self.config.max_output_bytes} byte limit"
                ),
            }
        stderr_tail = outcome.stderr_tail.decode("utf-8", "replace").strip()
        if outcome.exit_code is None or outcome.exit_code != 0:
            if outcome.exit_code is None:
                what = "killed by a signal"
            elif outcome.exit_code < 0:
                what = f"killed by {_signal_name(-outcome.exit_code)}"
            else:
                what = f"exited with code {outcome.exit_code}"
            message = what + (f"; stderr tail:\n{stderr_tail}" if stderr_tail else "")
            return {"status": "failed", "exit_code": exit_code, "error_message": message}
        try:
            json.loads(outcome.stdout.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return {
                "status": "failed",
                "exit_code": 0,
                "error_message": f"stdout is not valid JSON: {exc}",
            }
        try:
            self._upload(push, outcome.stdout)
        except UploadError as exc:
            return {"status": "failed", "exit_code": 0, "error_message": str(exc)}
        return {
            "status": "completed",
            "exit_code": 0,
            "result_key": push.result_key,
            "result_metadata": {
                "content_type": "application/json",
                "size_bytes": len(outcome.stdout),
                "sha256": hashlib.sha256(outcome.stdout).hexdigest(),
                "duration_seconds": round(outcome.duration_seconds, 3),
            },
        }

    def _upload(self, push: TaskPush, data: bytes) -> None:
        """Send the result exactly as the push said: its method, URL and headers only."""
        delay = self.config.callback_backoff_initial
        problem = ""
        for attempt in range(1, self.config.upload_attempts + 1):
            try:
                response = self.http.request(
                    push.result_method,
                    push.result_upload_url,
                    content=data,
                    headers=push.result_headers,
                )
            except httpx.HTTPError as exc:
                problem = transport_problem(exc, push.result_upload_url)
            else:
                if 200 <= response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break
            logger.warning(
                "task %s: result upload attempt %d failed (%s)", push.task_guid, attempt, problem
            )
            if attempt < self.config.upload_attempts:
                time.sleep(delay)
                delay = min(delay * 2, self.config.callback_backoff_max)
        raise UploadError(f"result upload failed: {problem}")

    # -- shutdown -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Refuse new pushes, stop running tasks, and give queued callbacks a moment."""
        with self._lock:
            self._accepting = False
            records = list(self._reported.values())
        for record in records:
            if record.executing:
                record.cancel_event.set()
                self.backends[record.push.backend].cancel(record.push.task_guid)
        deadline = time.monotonic() + self.config.shutdown_grace
        for record in records:
            if record.sender is not None:
                record.sender.join(max(0.0, deadline - time.monotonic()))
        for record in records:
            if record.sender is not None:
                record.sender.abandon()


class UploadError(Exception):
    """The result could not be uploaded."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
