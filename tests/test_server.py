"""What `make run` serves: the example project under gunicorn, with static files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    var_dir = tmp_path_factory.mktemp("var")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "REDIS_URL", "KOHAKKU_", "DJANGO_"))
    }
    env["KOHAKKU_VAR_DIR"] = str(var_dir)
    env["PORT"] = str(_free_port())
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput", "-v0"]):
        subprocess.run([*manage, *command], cwd=EXAMPLE, env=env, check=True)
    gunicorn = Path(sys.executable).parent / "gunicorn"
    server = subprocess.Popen(
        [str(gunicorn), "--config=gunicorn.conf.py"],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/health/", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)
    yield base
    server.terminate()
    server.wait(timeout=10)


def test_probes_answer(served):
    assert httpx.get(f"{served}/health/").json()["status"] == "ok"
    ready = httpx.get(f"{served}/ready/")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) == {"database", "cache", "storage"}


def test_schema_and_docs_ui_with_their_static_files(served):
    schema = httpx.get(f"{served}/api/v1/schema/", headers={"Accept": "application/json"})
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.")
    page = httpx.get(f"{served}/api/v1/docs/")
    assert page.status_code == 200
    bundle = httpx.get(f"{served}/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css")
    assert bundle.status_code == 200
    admin_css = httpx.get(f"{served}/static/admin/css/base.css")
    assert admin_css.status_code == 200


def test_a_chunked_body_is_refused_not_read_as_empty(served):
    """Under a real server a chunked body reaches Django without Content-Length."""

    def chunks():
        yield b'{"zen": '
        yield b'"chunked"}'

    response = httpx.post(
        f"{served}/api/v1/webhooks/",
        content=chunks(),
        headers={"X-GitHub-Event": "ping", "Content-Type": "application/json"},
    )
    assert response.status_code == 411
    assert "Content-Length" in response.json()["detail"]
    assert response.json()["reason"] == "length_required"
