"""Fixtures for the reference dispatcher: fake controller and store, dispatchers, packages."""

from __future__ import annotations

import io
import os
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Dispatcher, DispatcherConfig
from tests.dispatcher.fakes import CLIENT_ID, CLIENT_SECRET, FakeController, FakeStore

# Skills find the interpreter running the tests first on their PATH.
SKILL_PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


@pytest.fixture
def controller() -> Iterator[FakeController]:
    fake = FakeController()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def store() -> Iterator[FakeStore]:
    fake = FakeStore()
    fake.start()
    yield fake
    fake.stop()


def fast_config(controller: FakeController, state_dir: Path, **overrides: Any) -> DispatcherConfig:
    """A configuration with short timings, listening on a free loopback port."""
    options: dict[str, Any] = {
        "controller_url": controller.url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "name": "test-dispatcher",
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "state_dir": state_dir,
        "capacity": 2,
        "heartbeat_interval": 1,
        "skill_path": SKILL_PATH,
        "kill_grace": 0.5,
        "callback_backoff_initial": 0.05,
        "callback_backoff_max": 0.2,
        "upload_attempts": 2,
        "http_timeout": 5.0,
        "shutdown_grace": 1.0,
        "max_output_bytes": 64 * 1024,
        "stderr_tail_bytes": 200,
    }
    options.update(overrides)
    return DispatcherConfig(**options)


@pytest.fixture
def make_dispatcher(
    controller: FakeController, tmp_path: Path
) -> Iterator[Callable[..., Dispatcher]]:
    """Start a dispatcher (stopped at the end of the test)."""
    started: list[Dispatcher] = []

    def make(**overrides: Any) -> Dispatcher:
        overrides.setdefault("state_dir", tmp_path / "state")
        dispatcher = Dispatcher(fast_config(controller, **overrides)).start()
        started.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in started:
        if dispatcher.server is not None and dispatcher._threads:
            dispatcher.stop()


@pytest.fixture
def dispatcher(make_dispatcher: Callable[..., Dispatcher]) -> Dispatcher:
    return make_dispatcher()


def skill_md(entrypoint: str | None = "python3 run.py", name: str = "test-skill") -> str:
    metadata = f"metadata:\n  entrypoint: {entrypoint}\n" if entrypoint else ""
    return f"---\nname: {name}\ndescription: A test skill.\n{metadata}---\n\n# {name}\n"


def skill_zip(script: str = "", *, files: dict[str, str | bytes] | None = None, top: str = "",
              entrypoint: str | None = "python3 run.py") -> bytes:  # fmt: skip
    """A package with ``SKILL.md`` and ``run.py`` (``script``), optionally under ``top``/."""
    entries: dict[str, str | bytes] = {"SKILL.md": skill_md(entrypoint)}
    if script:
        entries["run.py"] = textwrap.dedent(script)
    entries.update(files or {})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(f"{top}/{name}" if top else name, content)
    return buffer.getvalue()
