"""Execution backends. A backend runs one prepared skill package and reports how it ended.

Only ``local`` (a child process on this machine) exists. Another backend (a container
runtime, a Kubernetes job) implements the same two methods and is added to
:data:`BACKENDS`; the rest of the dispatcher does not change.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from dispatcher.config import DispatcherConfig


@dataclass
class Job:
    """One run of a prepared package."""

    task_guid: str
    package_root: Path
    entrypoint: str
    input_json: bytes
    timeout_seconds: float
    # A private scratch directory, given to the skill as HOME.
    home: Path
    # Set by the dispatcher to stop the run (checked by the backend while it waits).
    cancel_event: threading.Event = field(default_factory=threading.Event)
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunOutcome:
    """How a run ended.

    ``exit_code`` is the process's return code: negative (``-signal``) when a signal ended
    it, None when it never started.
    """

    exit_code: int | None
    stdout: bytes
    stderr_tail: bytes
    duration_seconds: float
    timed_out: bool = False
    cancelled: bool = False
    output_overflow: bool = False
    start_error: str = ""


class Backend(Protocol):
    """What the dispatcher needs from a backend."""

    name: str

    def run(self, job: Job) -> RunOutcome:
        """Run ``job`` to its end (blocking) and report the outcome."""
        ...

    def cancel(self, task_guid: str) -> bool:
        """Stop the run of ``task_guid`` if one is going; return whether one was."""
        ...


class _Capped:
    """Reads a pipe to its end, keeping the first ``limit`` bytes or the last ``limit``."""

    def __init__(
        self, stream: IO[bytes], limit: int, *, tail: bool, on_overflow: Callable[[], None]
    ) -> None:
        self.stream = stream
        self.limit = limit
        self.tail = tail
        self.on_overflow = on_overflow
        self.data = bytearray()
        self.overflow = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with self.stream:
            while chunk := self.stream.read1(65536):  # type: ignore[attr-defined]
                if self.tail:
                    self.data += chunk
                    del self.data[: max(0, len(self.data) - self.limit)]
                    continue
                if self.overflow:
                    continue  # keep draining so the child never blocks on a full pipe
                room = self.limit - len(self.data)
                self.data += chunk[: max(room, 0)]
                if len(chunk) > room:
                    self.overflow = True
                    self.on_overflow()


class LocalBackend:
    """Runs the entrypoint as a child process in its own process group.

    The child gets the package root as working directory, the task input as JSON on
    stdin, and a clean environment: ``PATH``, ``HOME`` (a private temporary directory),
    ``LANG`` and ``KOHAKKU_TASK_GUID``. On timeout, cancel or oversize output the whole
    process group gets SIGTERM, then SIGKILL after the grace period; leftovers of the
    group are killed when the entrypoint exits too.
    """

    name = "local"

    def __init__(self, config: DispatcherConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._running: dict[str, _LocalRun] = {}

    def run(self, job: Job) -> RunOutcome:
        try:
            argv = shlex.split(job.entrypoint)
        except ValueError as exc:
            return RunOutcome(None, b"", b"", 0.0, start_error=f"entrypoint is malformed: {exc}")
        env = {
            "PATH": self.config.skill_path,
            "HOME": str(job.home),
            "LANG": os.environ.get("LANG") or "C.UTF-8",
            "KOHAKKU_TASK_GUID": job.task_guid,
            **job.extra_env,
        }
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                cwd=job.package_root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return RunOutcome(None, b"", b"", 0.0, start_error=f"entrypoint could not start: {exc}")
        run = _LocalRun(process, self.config.kill_grace)
        with self._lock:
            self._running[job.task_guid] = run
        try:
            return run.wait(job, self.config, started)
        finally:
            with self._lock:
                # A newer attempt of the same task may have registered meanwhile.
                if self._running.get(job.task_guid) is run:
                    del self._running[job.task_guid]

    def cancel(self, task_guid: str) -> bool:
        with self._lock:
            run = self._running.get(task_guid)
        if run is None:
            return False
        run.stop("cancelled")
        return True


class _LocalRun:
    def __init__(self, process: subprocess.Popen[bytes], kill_grace: float) -> None:
        self.process = process
        self.kill_grace = kill_grace
        self.reason = ""
        self._lock = threading.Lock()
        self._exited = threading.Event()

    def stop(self, reason: str) -> None:
        """Terminate the process group once; SIGKILL follows after the grace period."""
        with self._lock:
            if self.reason:
                return
            self.reason = reason
        threading.Thread(target=self._terminate, daemon=True).start()

    def _terminate(self) -> None:
        self._signal_group(signal.SIGTERM)
        if not self._exited.wait(self.kill_grace):
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        # The group id is the child's pid (start_new_session). It cannot be reused while
        # the child is unreaped, and wait() below reaps only after the group is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _has_exited(self) -> bool:
        # WNOWAIT: look without reaping, so the pid (the group id) stays ours.
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def wait(self, job: Job, config: DispatcherConfig, started: float) -> RunOutcome:
        process = self.process
        stdout = _Capped(
            process.stdout,  # type: ignore[arg-type]
            config.max_output_bytes,
            tail=False,
            on_overflow=lambda: self.stop("output_overflow"),
        )
        stderr = _Capped(
            process.stderr,  # type: ignore[arg-type]
            config.stderr_tail_bytes,
            tail=True,
            on_overflow=lambda: None,
        )
        writer = threading.Thread(target=self._feed_stdin, args=(job.input_json,), daemon=True)
        writer.start()
        deadline = started + job.timeout_seconds
        poll = 0.01
        while not self._has_exited():
            if job.cancel_event.is_set():
                self.stop("cancelled")
            elif time.monotonic() >= deadline:
                self.stop("timed_out")
            time.sleep(poll)
            poll = min(poll * 2, 0.1)
        self._exited.set()
        # Kill whatever the entrypoint left running in its group, then reap it.
        self._signal_group(signal.SIGKILL)
        process.wait()
        # A grandchild that left the group may still hold the pipes open: do not wait for it.
        stdout.thread.join(timeout=2)
        stderr.thread.join(timeout=2)
        writer.join(timeout=1)
        reason = self.reason
        return RunOutcome(
            exit_code=process.returncode,
            stdout=bytes(stdout.data),
            stderr_tail=bytes(stderr.data),
            duration_seconds=time.monotonic() - started,
            timed_out=reason == "timed_out",
            cancelled=reason == "cancelled",
            output_overflow=reason == "output_overflow" or stdout.overflow,
        )

    def _feed_stdin(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        # A skill that does not read its input (or exits early) is not an error.
        with contextlib.suppress(BrokenPipeError, OSError):
            stdin.write(data)
        with contextlib.suppress(BrokenPipeError, OSError):
            stdin.close()


BACKENDS: dict[str, Callable[[DispatcherConfig], Backend]] = {"local": LocalBackend}
