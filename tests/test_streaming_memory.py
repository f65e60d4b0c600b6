"""Packages and results stream through the controller in constant memory.

Each transfer moves a payload of some tens of MB through the whole request handling, its
body read from a file on disk as a server would hand it over, and its answer consumed
chunk by chunk. The peak of memory allocated meanwhile (``tracemalloc``) must stay well
below the payload: a view, parser or storage call that held the body whole would exceed it.

Packages go to the run's storage (real S3 with ``KOHAKKU_TEST_S3=1``); results to the
filesystem, the only storage whose results pass through the controller (S3 gets presigned
URLs).
"""

from __future__ import annotations

import io
import os
import shutil
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files import File
from django.test.client import ClientHandler
from rest_framework.authtoken.models import Token

from kohakku_controller.skills import services as skill_services
from kohakku_controller.skills.models import Skill
from kohakku_controller.storage import get_storage
from kohakku_controller.tasks.models import Task
from kohakku_controller.tasks.services import create_task
from tests.skills.zips import manifest_text
from tests.tasks.conftest import dispatch, make_dispatcher, skill_version  # noqa: F401

pytestmark = pytest.mark.django_db

PAYLOAD_BYTES = 48 * 1024 * 1024  # under SKILL_PACKAGE_MAX_BYTES
# What a transfer holds is bounded by settings, not by the payload: the result spool's
# 4 MiB in memory, an 8 MiB part of a multipart upload to S3, 64 KiB reads.
PEAK_LIMIT_BYTES = PAYLOAD_BYTES // 4
BOUNDARY = "kohakku-memory-test"


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        for _ in range(size // (1024 * 1024)):
            handle.write(os.urandom(1024 * 1024))
    return path


def package_file(path: Path, slug: str) -> Path:
    """A valid package of ``PAYLOAD_BYTES`` of incompressible data, written in chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("SKILL.md", manifest_text(slug))
        with archive.open("data.bin", "w", force_zip64=True) as entry:
            for _ in range(PAYLOAD_BYTES // (1024 * 1024)):
                entry.write(os.urandom(1024 * 1024))
    return path


def multipart_file(path: Path, package: Path) -> Path:
    """``package`` as the multipart field ``file``."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    )
    with path.open("wb") as handle, package.open("rb") as source:
        handle.write(head.encode())
        shutil.copyfileobj(source, handle)
        handle.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return path


def send(method: str, path: str, body: Path | None = None, content_type: str = "", **meta: str):
    """One request through Django's whole handler, its body read from ``body`` on disk."""
    length = body.stat().st_size if body else 0
    with body.open("rb") if body else io.BytesIO() as stream:
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SCRIPT_NAME": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(length),
            "wsgi.input": stream,
            "wsgi.errors": io.StringIO(),
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            **meta,
        }
        response = ClientHandler()(environ)
        received = 0
        if response.streaming:
            for chunk in response.streaming_content:
                received += len(chunk)
            response.close()
        return response, received


def peak_while(action: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def staff_token(staff_client: Any) -> str:
    return f"Token {Token.objects.get(user=staff_client.user).key}"


@pytest.fixture
def skill_package(tmp_path: Path, settings: Any) -> tuple[str, Path]:
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "SKILL_DOWNLOAD_REDIRECT": False}
    skill = skill_services.create_skill(name="big-package")
    # Made once per process, an S3 client loads some 20 MB of models: not the transfer's.
    get_storage().exists(f"skills/{skill.slug}/warm-up")
    return skill.slug, package_file(tmp_path / "package.zip", skill.slug)


@pytest.fixture
def running_task(filesystem_storage: Any, request: pytest.FixtureRequest) -> tuple[Task, str]:
    request.getfixturevalue("skill_version")
    return request.getfixturevalue("dispatch")(create_task(skill="code-review"))


def skill_upload(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    slug, package = request.getfixturevalue("skill_package")
    body = multipart_file(tmp_path / "body", package)
    token = request.getfixturevalue("staff_token")
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    url = f"/api/v1/skills/{slug}/upload/"
    return lambda: send("POST", url, body, content_type, HTTP_AUTHORIZATION=token)


def skill_download(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    slug, package = request.getfixturevalue("skill_package")
    with package.open("rb") as handle:
        skill_services.upload_package(Skill.objects.get(slug=slug), handle)
    token = request.getfixturevalue("staff_token")
    url = f"/api/v1/skills/{slug}/download/"
    return lambda: send("GET", url, HTTP_AUTHORIZATION=token)


def result_upload(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    task, token = request.getfixturevalue("running_task")
    body = random_file(tmp_path / "result", PAYLOAD_BYTES)
    url = f"/api/v1/tasks/{task.guid}/result/upload/?name=out.bin"
    return lambda: send(
        "PUT", url, body, "application/octet-stream", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def result_download(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    task, _ = request.getfixturevalue("running_task")
    with random_file(tmp_path / "result", PAYLOAD_BYTES).open("rb") as handle:
        key = get_storage().save(f"{task.result_prefix}out.bin", File(handle))
    Task.objects.filter(pk=task.pk).update(result_key=key)
    token = request.getfixturevalue("staff_token")
    return lambda: send("GET", f"/api/v1/tasks/{task.guid}/result/", HTTP_AUTHORIZATION=token)


@pytest.mark.parametrize(
    "arrange",
    [skill_upload, skill_download, result_upload, result_download],
    ids=lambda arrange: arrange.__name__.replace("_", " "),
)
def test_transfer_peak_memory_is_well_below_the_payload(arrange, request, tmp_path):
    send_request = arrange(request, tmp_path)
    (response, received), peak = peak_while(send_request)
    assert response.status_code in (200, 201), response.content
    if response.streaming:
        assert received >= PAYLOAD_BYTES
    assert peak < PEAK_LIMIT_BYTES, f"peak {peak} bytes for a payload of {PAYLOAD_BYTES}"
