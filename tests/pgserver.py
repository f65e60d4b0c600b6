"""A PostgreSQL server of the tests' own, so a test can restart it under running processes.

It is built with the PostgreSQL server binaries of this machine (``initdb`` and ``pg_ctl``,
found on ``PATH`` or under ``/usr/lib/postgresql/*/bin``) in a temporary directory, listens
on a free loopback port with trust authentication, and is removed afterwards. PostgreSQL
refuses to run as root, so as root it runs as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def server_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None`` on a machine without them."""
    found = shutil.which("pg_ctl")
    candidates = [str(Path(found).resolve().parent)] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if all(Path(directory, name).exists() for name in ("initdb", "pg_ctl")):
            if os.geteuid() == 0 and not _postgres_user_exists():
                return None
            return Path(directory)
    return None


def _postgres_user_exists() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return shutil.which("runuser") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    binaries: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        _run([str(self.binaries / "pg_ctl"), "-D", str(self.data), *args], timeout=timeout)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            "-c fsync=off -c max_connections=100"
        )
        log = self.data / "server.log"
        self.pg_ctl("-o", options, "-l", str(log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Shut the server down (``fast`` closes every connection cleanly first)."""
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.pg_ctl("-m", mode, "-w", "-t", "60", "stop", timeout=70)


def _run(command: list[str], *, timeout: float) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=timeout)


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    binaries = server_binaries()
    if binaries is None:
        raise RuntimeError("the PostgreSQL server binaries (initdb, pg_ctl) were not found")
    root = Path(tempfile.mkdtemp(prefix="kohakku-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (root, data):
            os.chown(path, account.pw_uid, account.pw_gid)
    server = PostgresServer(binaries, data, _free_port())
    try:
        _run(
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            timeout=120,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
