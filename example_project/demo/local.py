"""Where the demo keeps its local files, and its custom webhook secret.

Used without Django settings by ``run.py`` and ``demo/trigger.py``: both find the ``var``
directory the way the example project's settings do (``KOHAKKU_VAR_DIR``, default ``var/``
at the repository root).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
SECRET_ENV = "KOHAKKU_CUSTOM_WEBHOOK_SECRET"
SECRET_FILE = "demo-webhook-secret"


def var_dir() -> Path:
    """The example project's ``var`` directory."""
    return Path(os.environ.get("KOHAKKU_VAR_DIR", REPOSITORY / "var")).resolve()


def demo_webhook_secret(*, create: bool = False) -> str:
    """The custom (Standard Webhooks) secret of the demo.

    The first of ``KOHAKKU_CUSTOM_WEBHOOK_SECRET`` when it is set; otherwise the secret kept
    in ``var/demo-webhook-secret``, generated there on first use when ``create`` is true.
    """
    configured = [s.strip() for s in os.environ.get(SECRET_ENV, "").split(",") if s.strip()]
    if configured:
        return configured[0]
    path = var_dir() / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise FileNotFoundError(f"no {SECRET_ENV} set and no {path}; start `make run` first")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def demo_credentials() -> dict[str, Any]:
    """What ``manage.py seed_demo`` wrote to ``var/demo-credentials.json``."""
    path = var_dir() / "demo-credentials.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; run `make run` (it seeds the demo)") from None
