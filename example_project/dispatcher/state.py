"""The dispatcher's state file: its guid and signing secret, kept across restarts."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE_NAME = "state.json"


@dataclass
class DispatcherState:
    """What the controller told the dispatcher at check-in.

    ``controller_url`` and ``name`` record whom the secret belongs to: a state file
    written for another controller or name is ignored.
    """

    controller_url: str = ""
    name: str = ""
    dispatcher_guid: str = ""
    signing_secret: str = ""


class StateStore:
    """Reads and writes ``<state_dir>/state.json`` with owner-only permissions (0600).

    Writes are atomic (a temporary file renamed over the old one), so a crash never leaves
    a half-written secret behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE_NAME
        self._lock = threading.Lock()

    def load(self, controller_url: str, name: str) -> DispatcherState:
        """Return the stored state for this controller and name, or an empty one."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return DispatcherState(controller_url=controller_url, name=name)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable state file %s: %s", self.path, exc)
            return DispatcherState(controller_url=controller_url, name=name)
        if not isinstance(raw, dict):
            return DispatcherState(controller_url=controller_url, name=name)
        if raw.get("controller_url") != controller_url or raw.get("name") != name:
            logger.warning(
                "state file %s belongs to another controller or name; starting fresh", self.path
            )
            return DispatcherState(controller_url=controller_url, name=name)
        return DispatcherState(
            controller_url=controller_url,
            name=name,
            dispatcher_guid=str(raw.get("dispatcher_guid") or ""),
            signing_secret=str(raw.get("signing_secret") or ""),
        )

    def save(self, state: DispatcherState) -> None:
        """Write ``state`` atomically with mode 0600 (the directory gets 0700)."""
        with self._lock:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(f".{STATE_FILE_NAME}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(asdict(state), handle, indent=2)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
