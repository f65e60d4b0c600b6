"""The OpenAPI document tells the truth: every status code an operation answers is declared.

One representative request per case goes through the test client; the answer's status code
must be among the responses the served document lists for that path template and method.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.db import OperationalError
from django.utils import timezone

from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.signing import sign_request
from kohakku_controller.skills import services as skill_services
from kohakku_controller.skills.models import Skill, SkillVersion
from kohakku_controller.storage import get_storage
from kohakku_controller.tasks.models import Task, TaskStatus, hash_callback_token
from kohakku_controller.workflows.models import Workflow

from .skills.zips import package

pytestmark = pytest.mark.django_db

GITHUB_SECRET = "schema-truth-github"
TOKEN = "schema-truth-callback-token"
CHUNKED = {"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""}
IDEMPOTENT = {"HTTP_IDEMPOTENCY_KEY": "truth-key"}
TINY = {"RESULT_MAX_BYTES": 4}
CHECKIN = {"name": "truth", "endpoint_url": "http://dispatcher:8080", "backends": ["local"]}
CHECKIN_NEW = {"name": "new", "endpoint_url": "http://dispatcher:8081"}


@pytest.fixture(scope="module")
def document(django_db_blocker: Any) -> dict[str, Any]:
    from rest_framework.test import APIClient

    with django_db_blocker.unblock():
        response = APIClient().get(
            "/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
        )
    assert response.status_code == 200
    return response.json()


def template_for(document: dict[str, Any], path: str) -> str:
    """The document's path template ``path`` matches; literal segments win over parameters."""
    matches = [
        template
        for template in document["paths"]
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path)
    ]
    assert matches, f"{path} matches no path of the document"
    return max(matches, key=lambda template: len(re.sub(r"\{[^}]+\}", "", template)))


def github(body: bytes, event: str = "push") -> dict[str, str]:
    digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "HTTP_X_GITHUB_EVENT": event,
        "HTTP_X_GITHUB_DELIVERY": str(uuid.uuid4()),
        "HTTP_X_HUB_SIGNATURE_256": f"sha256={digest}",
    }


def signed(body: bytes, secret: str, token: str = TOKEN) -> dict[str, str]:
    headers = sign_request(secret, body)
    return {
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_X_KOHAKKU_TIMESTAMP": headers["X-Kohakku-Timestamp"],
        "HTTP_X_KOHAKKU_SIGNATURE": headers["X-Kohakku-Signature"],
    }


@pytest.fixture
def world(settings, filesystem_storage, staff_client, oauth_client, api_client) -> SimpleNamespace:
    """One of everything, reached through the API where that is as cheap. On filesystem
    storage whatever storage the run uses: the controller serves downloads and signed URLs
    itself there (on S3 it redirects to presigned URLs, a 302 the rows below do not expect).
    """
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "WEBHOOK_SECRETS": {"github": [GITHUB_SECRET]},
        "ALLOW_UNSIGNED_WEBHOOKS": False,
    }
    w = SimpleNamespace(staff=staff_client, anon=api_client)
    w.dispatcher_client = oauth_client("dispatchers")
    w.reader = oauth_client("tasks:read", "skills:read", "workflows:read")
    checkin = w.dispatcher_client.post(
        "/api/v1/dispatchers/checkin/", CHECKIN, format="json"
    ).json()
    w.dispatcher, w.secret = checkin["dispatcher_guid"], checkin["signing_secret"]
    w.skill = skill_services.create_skill(name="Truth").slug
    upload = staff_client.post(
        f"/api/v1/skills/{w.skill}/upload/",
        {"file": ContentFile(package(w.skill), name="p.zip")},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    w.etag = f'"{upload.json()["content_hash"]}"'
    version = SkillVersion.objects.get(skill__slug=w.skill, version_number=1)
    w.signed = skill_services.package_download_url(version, base_url="").split("?")[1]

    def task(**fields: Any) -> Task:
        body = {"skill": w.skill, **fields.pop("body", {})}
        guid = staff_client.post("/api/v1/tasks/", body, format="json", **fields).json()["guid"]
        return Task.objects.get(guid=guid)

    w.queued = task(HTTP_IDEMPOTENCY_KEY="truth-key")
    running, w.done = task(), task()
    Task.objects.filter(pk=running.pk).update(
        status=TaskStatus.RUNNING,
        dispatcher=Dispatcher.objects.get(guid=w.dispatcher),
        callback_token_hash=hash_callback_token(TOKEN),
        dispatched_at=timezone.now(),
        started_at=timezone.now(),
    )
    w.running = running
    key = f"{w.done.result_prefix}output.json"
    get_storage().save(key, ContentFile(b"{}"))
    Task.objects.filter(pk=w.done.pk).update(
        status=TaskStatus.COMPLETED,
        finished_at=timezone.now(),
        result_key=key,
        callback_token_hash=hash_callback_token(TOKEN),
    )
    skill = Skill.objects.get(slug=w.skill)
    w.workflow = Workflow.objects.create(
        name="Truth flow", slug="truth-flow", skill=skill, source="github"
    ).slug
    body = b'{"ref": "main"}'
    ingest = api_client.generic(
        "POST", "/api/v1/webhooks/", body, "application/json", **github(body)
    )
    w.delivery = ingest.json()["delivery_id"]
    return w


WORKFLOW = {"name": "Other flow", "skill": "{skill}", "source": "github"}
SAMPLE = {"source": "github", "event": "push", "headers": {}, "payload": {"ref": "main"}}
UNKNOWN = uuid.UUID(int=1)
PACKAGES = {"new package": {"extra": {"x.txt": "new"}}, "same package": {}}
NEW_PACKAGE = {"data": {"file": "new package"}, "format": "multipart"}
SAME_PACKAGE = {"data": {"file": "same package"}, "format": "multipart"}

#: (method, URL, expected status, request options). A URL without a leading slash is under
#: /api/v1/; URLs, bodies and headers are formatted with the world's attributes. Options:
#: client (a world attribute; staff by default), data and format, extra (WSGI environ), raw
#: (a body as is, with content_type), callback (a signed callback body), upload (a result
#: upload body), webhook (a signed GitHub delivery), settings (controller settings),
#: fail (a dotted name patched to raise OperationalError).
CASES: list[tuple[str, str, int, dict[str, Any]]] = [
    ("get", "/health/", 200, {"client": "anon"}),
    ("get", "/ready/", 200, {"client": "anon"}),
    # dispatchers
    ("get", "dispatchers/", 200, {}),
    ("get", "dispatchers/", 401, {"client": "anon"}),
    ("get", "dispatchers/", 403, {"client": "reader"}),
    ("get", "dispatchers/?page=2", 404, {}),
    ("get", "dispatchers/?page_size=0", 400, {}),
    ("get", "dispatchers/{dispatcher}/", 200, {}),
    ("get", f"dispatchers/{UNKNOWN}/", 404, {}),
    ("patch", "dispatchers/{dispatcher}/", 200, {"data": {"draining": True}}),
    ("patch", "dispatchers/{dispatcher}/", 400, {"data": {"capacity": "x"}}),
    ("patch", "dispatchers/{dispatcher}/", 415, {"raw": b"x", "content_type": "text/plain"}),
    ("delete", "dispatchers/{dispatcher}/?force=maybe", 400, {}),
    ("delete", "dispatchers/{dispatcher}/?force=true", 204, {}),
    ("post", "dispatchers/{dispatcher}/heartbeat/", 200, {"client": "dispatcher_client"}),
    ("post", "dispatchers/{dispatcher}/heartbeat/", 403, {}),
    ("post", "dispatchers/{dispatcher}/rotate-secret/", 200, {"data": {}}),
    ("post", "dispatchers/{dispatcher}/rotate-secret/", 411, {"extra": CHUNKED}),
    # A chunked body is refused whatever the method, reads and deletions included.
    ("get", "dispatchers/{dispatcher}/", 411, {"extra": CHUNKED}),
    ("delete", "dispatchers/{dispatcher}/", 411, {"extra": CHUNKED}),
    ("post", "dispatchers/checkin/", 201, {"client": "dispatcher_client", "data": CHECKIN_NEW}),
    ("post", "dispatchers/checkin/", 200, {"client": "dispatcher_client", "data": CHECKIN}),
    ("post", "dispatchers/checkin/", 400, {"client": "dispatcher_client", "data": {}}),
    ("post", "dispatchers/checkin/", 403, {"data": CHECKIN}),
    # skills
    ("get", "skills/", 200, {"client": "reader"}),
    ("get", "skills/", 503, {"fail": "kohakku_controller.skills.views.SkillViewSet.get_queryset"}),
    ("post", "skills/", 201, {"data": {"name": "Another"}}),
    ("post", "skills/", 409, {"data": {"name": "Truth"}}),
    ("post", "skills/", 413, {"data": {"name": "Big"}, "settings": {"MAX_JSON_BODY_BYTES": 4}}),
    ("get", "skills/{skill}/", 200, {}),
    ("get", "skills/nope/", 404, {}),
    ("patch", "skills/{skill}/", 200, {"data": {"description": "d"}}),
    ("patch", "skills/{skill}/", 400, {"data": {"name": "renamed"}}),
    ("post", "skills/{skill}/archive/", 200, {}),
    ("post", "skills/{skill}/unarchive/", 409, {}),
    ("post", "skills/{skill}/upload/", 201, NEW_PACKAGE),
    ("post", "skills/{skill}/upload/", 200, SAME_PACKAGE),
    ("post", "skills/{skill}/upload/", 415, {"data": {"file": "x"}}),
    ("get", "skills/{skill}/download/", 200, {}),
    ("get", "skills/{skill}/download/?{signed}", 200, {"client": "anon"}),
    ("get", "skills/{skill}/download/?signature=bad", 403, {"client": "anon"}),
    ("get", "skills/{skill}/download/", 401, {"client": "anon"}),
    ("get", "skills/{skill}/download/", 304, {"extra": {"HTTP_IF_NONE_MATCH": "{etag}"}}),
    ("get", "skills/{skill}/download/?version=x", 400, {}),
    ("get", "skills/{skill}/download/?version=9", 404, {}),
    ("get", "skills/{skill}/versions/", 200, {}),
    ("get", "skills/nope/versions/", 404, {}),
    ("get", "skills/{skill}/versions/1/", 200, {}),
    ("post", "skills/{skill}/versions/1/yank/", 200, {"data": {"reason": "r"}}),
    ("post", "skills/{skill}/versions/1/yank/", 400, {"data": {}}),
    ("post", "skills/{skill}/versions/1/unyank/", 409, {"data": {"reason": "r"}}),
    # tasks
    ("get", "tasks/", 200, {}),
    ("get", "tasks/?status=bogus", 400, {}),
    ("post", "tasks/", 201, {"data": {"skill": "{skill}"}}),
    ("post", "tasks/", 200, {"data": {"skill": "{skill}"}, "extra": IDEMPOTENT}),
    ("post", "tasks/", 409, {"data": {"skill": "{skill}", "priority": 3}, "extra": IDEMPOTENT}),
    ("post", "tasks/", 400, {"data": {"skill": 5}}),
    ("post", "tasks/", 403, {"client": "reader", "data": {"skill": "{skill}"}}),
    ("get", "tasks/{queued.guid}/", 200, {"client": "reader"}),
    ("get", "tasks/{queued.guid}/events/", 200, {}),
    ("get", "tasks/{queued.guid}/events/?page=x", 400, {}),
    ("post", "tasks/{queued.guid}/cancel/", 200, {}),
    ("post", "tasks/{running.guid}/cancel/", 202, {}),
    ("post", "tasks/{done.guid}/cancel/", 409, {}),
    ("get", "tasks/{done.guid}/result/", 200, {}),
    ("get", "tasks/{queued.guid}/result/", 404, {}),
    ("post", "tasks/{running.guid}/callback/", 200, {"callback": {"status": "running"}}),
    ("post", "tasks/{running.guid}/callback/", 400, {"callback": {"status": "nope"}}),
    ("post", "tasks/{running.guid}/callback/", 401, {"data": {"status": "running"}}),
    ("post", f"tasks/{UNKNOWN}/callback/", 404, {"callback": {}}),
    ("put", "tasks/{running.guid}/result/upload/", 201, {"upload": b"{}"}),
    ("put", "tasks/{running.guid}/result/upload/?name=../x", 400, {"upload": b"{}"}),
    ("put", "tasks/{running.guid}/result/upload/", 413, {"upload": b"12345", "settings": TINY}),
    ("put", "tasks/{running.guid}/result/upload/", 401, {"raw": b"{}"}),
    ("put", "tasks/{done.guid}/result/upload/", 409, {"upload": b"{}"}),
    # webhooks
    ("post", "webhooks/", 200, {"client": "anon", "webhook": b'{"ref": "dev"}'}),
    ("post", "webhooks/", 400, {"client": "anon", "raw": b"{}"}),
    ("post", "webhooks/", 415, {"client": "anon", "webhook": b"<x/>", "content_type": "a/xml"}),
    ("get", "webhooks/deliveries/", 200, {}),
    ("get", "webhooks/deliveries/{delivery}/", 200, {"client": "reader"}),
    ("post", "webhooks/deliveries/{delivery}/replay/", 201, {}),
    ("post", "webhooks/deliveries/{delivery}/replay/", 403, {"client": "reader"}),
    # workflows
    ("get", "workflows/", 200, {}),
    ("post", "workflows/", 201, {"data": WORKFLOW}),
    ("post", "workflows/", 400, {"data": {"name": "x"}}),
    ("get", "workflows/{workflow}/", 200, {}),
    ("put", "workflows/{workflow}/", 200, {"data": {**WORKFLOW, "name": "Truth flow"}}),
    ("patch", "workflows/{workflow}/", 200, {"data": {"enabled": False}}),
    ("patch", "workflows/nope/", 404, {"data": {"enabled": False}}),
    ("delete", "workflows/{workflow}/", 204, {}),
    ("post", "workflows/{workflow}/dry-run/", 200, {"data": SAMPLE}),
    ("post", "workflows/dry-run/", 200, {"data": SAMPLE}),
    ("post", "workflows/dry-run/", 400, {"data": {"payload": {}}}),
]


def _format(value: Any, w: SimpleNamespace) -> Any:
    if isinstance(value, str):
        return value.format(**vars(w)) if "{" in value else value
    if isinstance(value, dict):
        return {key: _format(item, w) for key, item in value.items()}
    return value


def _send(w: SimpleNamespace, method: str, url: str, options: dict[str, Any]) -> Any:
    # Dispatchers call back without API credentials (a client's credentials would win).
    default = "anon" if {"callback", "upload"} & set(options) else "staff"
    client = getattr(w, options.get("client", default))
    extra = _format(options.get("extra", {}), w)
    if "callback" in options:
        body = json.dumps(options["callback"]).encode()
        return client.generic(
            method, url, body, "application/json", **signed(body, w.secret), **extra
        )
    if "upload" in options:
        auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
        return client.generic(method, url, options["upload"], "application/octet-stream", **auth)
    if "webhook" in options:
        body = options["webhook"]
        content_type = options.get("content_type", "application/json")
        return client.generic(method, url, body, content_type, **github(body), **extra)
    if "raw" in options:
        content_type = options.get("content_type", "application/json")
        return client.generic(method, url, options["raw"], content_type, **extra)
    data = _format(options.get("data"), w)
    if data and data.get("file") in PACKAGES:
        data["file"] = ContentFile(package(w.skill, **PACKAGES[data["file"]]), name="p.zip")
    return getattr(client, method)(url, data, format=options.get("format", "json"), **extra)


@pytest.mark.parametrize(
    ("method", "url", "expected", "options"),
    CASES,
    ids=[f"{method.upper()} {url} {expected}" for method, url, expected, _ in CASES],
)
def test_answer_is_declared(document, world, settings, method, url, expected, options):
    if options.get("settings"):
        settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, **options["settings"]}
    url = _format(url if url.startswith("/") else f"/api/v1/{url}", world)
    failing = options.get("fail")
    with mock.patch(failing, side_effect=OperationalError) if failing else nullcontext():
        response = _send(world, method, url, options)
    assert response.status_code == expected, getattr(response, "content", b"")[:500]
    template = template_for(document, url.split("?")[0])
    declared = document["paths"][template][method]["responses"]
    assert str(expected) in declared, f"{method.upper()} {template} does not declare {expected}"


def test_every_operation_has_a_case(document):
    """New operations get a row above: the table covers the whole controller API."""
    covered = {
        (template_for(document, re.sub(r"\{[^}]+\}", "x", path).split("?")[0]), method)
        for method, url, _, _ in CASES
        for path in [url if url.startswith("/") else f"/api/v1/{url}"]
    }
    operations = {
        (path, method)
        for path, item in document["paths"].items()
        if not path.startswith(("/test-api/", "/api/v1/schema/", "/api/v1/docs/"))
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert operations <= covered, sorted(operations - covered)
