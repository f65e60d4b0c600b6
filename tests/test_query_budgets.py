"""Query-count budgets of the hot and list endpoints, with one row and with many.

Each case makes ``rows`` rows of what the endpoint reads (tasks for the task list, events
for a task's history, versions for a skill …), then counts the queries of one request. The
budget is the same number for 1 row and for 25: an endpoint whose count grew with the rows
would query once per row (N+1). Endpoints with a budget test of their own in their area
(heartbeat and callback in tests/dispatchers and tests/tasks, webhook ingest in
tests/webhooks/test_ingest.py, the unfiltered dispatcher list in
tests/dispatchers/test_operator_api.py) are not repeated here.

The tests run inside a transaction, so each atomic block of a request adds a SAVEPOINT and
its RELEASE to the count. Budgets that differ on PostgreSQL (the scheduler's NOTIFY) are
given as ``(other databases, PostgreSQL)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from kohakku_controller.skills.models import Skill, SkillVersion
from kohakku_controller.skills.services import package_download_url
from kohakku_controller.storage import get_storage
from kohakku_controller.tasks.models import Task
from kohakku_controller.tasks.services import create_task, record_event
from kohakku_controller.webhooks.models import Delivery
from tests.dispatchers.conftest import checkin_body, dispatcher_client, register  # noqa: F401
from tests.skills.conftest import upload_file
from tests.skills.zips import package
from tests.tasks.conftest import dispatch, make_dispatcher, skill_version  # noqa: F401
from tests.webhooks.conftest import (  # noqa: F401 (fixtures)
    as_body,
    github_headers,
    make_skill,
    make_workflow,
    post_webhook,
    webhook_secrets,
)

pytestmark = pytest.mark.django_db

ROWS = [1, 25]
Send = Callable[[], Any]


@dataclass(frozen=True)
class Case:
    """An endpoint: ``arrange(fixtures, rows)`` makes the rows and returns the request."""

    name: str
    arrange: Callable[[Any, int], Send]
    budget: int | tuple[int, int]
    why: str  # the queries after the caller's token, in order

    def expected(self) -> int:
        if isinstance(self.budget, int):
            return self.budget
        return self.budget[connection.vendor == "postgresql"]


class Fixtures:
    """The fixtures a case asks for, by name, made on first use."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return self._request.getfixturevalue(name)


# --- dispatchers ---------------------------------------------------------------------------


def _checkin(fx: Any, rows: int) -> Send:
    for index in range(rows):
        fx.register(f"other-{index}")
    return lambda: fx.dispatcher_client.post(
        "/api/v1/dispatchers/checkin/", checkin_body("new-one"), format="json"
    )


def _dispatcher_list(query: dict[str, Any]) -> Callable[[Any, int], Send]:
    def arrange(fx: Any, rows: int) -> Send:
        for index in range(rows):
            fx.register(f"d-{index}", labels={"gpu": "a100"}, cloud="aws", backends=["docker"])
        return lambda: fx.staff_client.get("/api/v1/dispatchers/", query)

    return arrange


def _dispatcher_request(suffix: str, method: str, body: Any = None) -> Callable[[Any, int], Send]:
    """A request on the last of ``rows`` dispatchers."""

    def arrange(fx: Any, rows: int) -> Send:
        for index in range(rows):
            dispatcher = fx.register(f"d-{index}", labels={"gpu": "a100"})
        url = f"/api/v1/dispatchers/{dispatcher.guid}/{suffix}"
        return lambda: getattr(fx.staff_client, method)(url, body, format="json")

    return arrange


# --- tasks ---------------------------------------------------------------------------------


def _tasks(fx: Any, rows: int) -> tuple[Task, str]:
    """``rows`` tasks, each dispatched to a dispatcher of its own; the last, with its token."""
    fx.skill_version  # noqa: B018
    for index in range(rows):
        task = create_task(skill="code-review", input={"n": index})
        task, token = fx.dispatch(task, fx.make_dispatcher(f"d{index}"))
    return task, token


def _task_create(fx: Any, rows: int) -> Send:
    _tasks(fx, rows)
    return lambda: fx.staff_client.post(
        "/api/v1/tasks/", {"skill": "code-review"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )


def _task_detail(suffix: str, method: str = "get") -> Callable[[Any, int], Send]:
    """A request on one task (the last of ``rows``), which has ``rows`` extra events."""

    def arrange(fx: Any, rows: int) -> Send:
        task, _ = _tasks(fx, rows)
        for index in range(rows):
            record_event(task, "note", reason=f"note {index}")
        url = f"/api/v1/tasks/{task.guid}/{suffix}"
        return lambda: getattr(fx.staff_client, method)(url)

    return arrange


def _task_list(fx: Any, rows: int) -> Send:
    _tasks(fx, rows)
    return lambda: fx.staff_client.get("/api/v1/tasks/")


def _task_list_for_an_operator(fx: Any, rows: int) -> Send:
    _tasks(fx, rows)
    operator = fx.token_client("viewer", perms=("kohakku_controller.view_task",))
    return lambda: operator.get("/api/v1/tasks/")


def _result_upload(fx: Any, rows: int) -> Send:
    fx.filesystem_storage  # noqa: B018
    task, token = _tasks(fx, rows)
    return lambda: fx.api_client.generic(
        "PUT",
        f"/api/v1/tasks/{task.guid}/result/upload/",
        b'{"ok": true}',
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def _result_download(fx: Any, rows: int) -> Send:
    fx.filesystem_storage  # noqa: B018
    task, _ = _tasks(fx, rows)
    key = get_storage().save(f"{task.result_prefix}output.json", upload_file(b"{}"))
    Task.objects.filter(pk=task.pk).update(result_key=key)
    return lambda: fx.staff_client.get(f"/api/v1/tasks/{task.guid}/result/")


# --- skills --------------------------------------------------------------------------------


def _skill_with_versions(fx: Any, rows: int) -> Skill:
    """A skill with ``rows`` versions, the newest yanked; the blob of the one before stored."""
    fx.filesystem_storage  # noqa: B018
    skill = fx.make_skill("budget", versions=rows + 1, yanked=(rows + 1,))
    SkillVersion.objects.filter(skill=skill).update(uploaded_by=fx.staff_client.user)
    version = SkillVersion.objects.get(skill=skill, version_number=rows)
    get_storage().save(version.storage_ref, upload_file(b"x" * version.size))
    return skill


def _skill_list(fx: Any, rows: int) -> Send:
    for index in range(rows):
        fx.make_skill(f"skill-{index}")
    return lambda: fx.staff_client.get("/api/v1/skills/")


def _skill_request(suffix: str) -> Callable[[Any, int], Send]:
    def arrange(fx: Any, rows: int) -> Send:
        skill = _skill_with_versions(fx, rows)
        return lambda: fx.staff_client.get(f"/api/v1/skills/{skill.slug}/{suffix}")

    return arrange


def _skill_version_yank(fx: Any, rows: int) -> Send:
    skill = _skill_with_versions(fx, rows)
    url = f"/api/v1/skills/{skill.slug}/versions/1/yank/"
    return lambda: fx.staff_client.post(url, {"reason": "broken"}, format="json")


def _signed_skill_download(fx: Any, rows: int) -> Send:
    skill = _skill_with_versions(fx, rows)
    version = SkillVersion.objects.get(skill=skill, version_number=rows)
    url = package_download_url(version, base_url="http://testserver")
    return lambda: fx.api_client.get(url)


def _skill_upload(fx: Any, rows: int) -> Send:
    skill = _skill_with_versions(fx, rows)
    data = package(skill.slug)
    return lambda: fx.staff_client.post(
        f"/api/v1/skills/{skill.slug}/upload/", {"file": upload_file(data)}, format="multipart"
    )


# --- workflows and deliveries --------------------------------------------------------------

SAMPLE = {"action": "opened", "number": 3, "repository": {"full_name": "org/repo"}}


def _workflows(fx: Any, rows: int) -> None:
    """``rows`` workflows for pull requests, each on a skill of its own, the last matching."""
    for index in range(rows):
        fx.make_workflow(
            f"wf-{index}",
            skill=fx.make_skill(f"skill-{index}"),
            priority=index,
            conditions=["payload.action == 'opened'" if index == rows - 1 else "`false`"],
        )


def _workflow_request(path: str, method: str = "get") -> Callable[[Any, int], Send]:
    def arrange(fx: Any, rows: int) -> Send:
        _workflows(fx, rows)
        body = {"source": "github", "event": "pull_request", "payload": SAMPLE}
        url = f"/api/v1/workflows/{path}"
        if method == "get":
            return lambda: fx.staff_client.get(url)
        return lambda: fx.staff_client.post(url, body, format="json")

    return arrange


def _workflow_write(method: str) -> Callable[[Any, int], Send]:
    def arrange(fx: Any, rows: int) -> Send:
        _workflows(fx, rows)
        if method == "post":
            body = {"name": "new", "source": "github", "event": "push", "skill": "skill-0"}
            return lambda: fx.staff_client.post("/api/v1/workflows/", body, format="json")
        url = f"/api/v1/workflows/wf-{rows - 1}/"
        return lambda: getattr(fx.staff_client, method)(url, {"priority": 7}, format="json")

    return arrange


def _deliveries(fx: Any, rows: int) -> Delivery:
    """``rows`` routed deliveries, each a replay of the one before and with a duplicate."""
    _workflows(fx, 1)
    previous = None
    for index in range(rows):
        body = as_body({**SAMPLE, "number": index})
        headers = github_headers(body, "pull_request")
        fx.post_webhook(body, headers)
        fx.post_webhook(body, headers)  # a duplicate
        latest = Delivery.objects.filter(duplicate_of__isnull=True).latest("id")
        Delivery.objects.filter(pk=latest.pk).update(replay_of=previous)
        previous = latest
    return latest


def _delivery_list(fx: Any, rows: int) -> Send:
    _deliveries(fx, rows)
    return lambda: fx.staff_client.get("/api/v1/webhooks/deliveries/")


def _delivery_detail(fx: Any, rows: int) -> Send:
    delivery = _deliveries(fx, rows)
    return lambda: fx.staff_client.get(f"/api/v1/webhooks/deliveries/{delivery.guid}/")


def _delivery_replay(fx: Any, rows: int) -> Send:
    delivery = _deliveries(fx, rows)
    return lambda: fx.staff_client.post(f"/api/v1/webhooks/deliveries/{delivery.guid}/replay/")


CASES = [
    # The first query of each is the caller's token (with its user or application).
    Case("dispatcher check-in", _checkin, 8,
         "savepoint, by name, free slug, savepoint, insert, release, release"),
    Case("dispatcher list ?status=", _dispatcher_list({"status": "online"}), 3,
         "count, page (with the application)"),
    Case("dispatcher list ?backend=", _dispatcher_list({"backend": "docker"}), 3, "count, page"),
    Case("dispatcher list ?cloud=", _dispatcher_list({"cloud": "aws"}), 3, "count, page"),
    Case("dispatcher list ?label=", _dispatcher_list({"label": "gpu=a100"}), 3, "count, page"),
    Case("dispatcher list ?search=", _dispatcher_list({"search": "d-"}), 3, "count, page"),
    Case("dispatcher retrieve", _dispatcher_request("", "get"), 2, "the dispatcher"),
    Case("dispatcher change", _dispatcher_request("", "patch", {"capacity": 3}), 4,
         "the dispatcher, conditional update, the row as the update left it"),
    Case("dispatcher rotate-secret", _dispatcher_request("rotate-secret/", "post"), 6,
         "the dispatcher, savepoint, lock its secret, conditional update, release"),
    Case("task create", _task_create, (7, 8),
         "idempotency key, version with its skill, savepoint, task, event, release; NOTIFY"),
    Case("task list", _task_list, 3, "count, page (with version, skill and dispatcher)"),
    Case("task list (operator)", _task_list_for_an_operator, 5,
         "the user's permissions, their groups' permissions, count, page"),
    Case("task retrieve", _task_detail(""), 2, "the task with version, skill and dispatcher"),
    Case("task events", _task_detail("events/"), 4, "the task, count, page"),
    Case("task cancel", _task_detail("cancel/", "post"), (7, 8),
         "the task, savepoint, conditional update, event, release, the task again; NOTIFY"),
    Case("task result upload", _result_upload, 4, "the task by its callback token (no API token), "
         "savepoint, lock it while still running, release"),
    Case("task result download", _result_download, 2, "the task"),
    Case("skill list", _skill_list, 3, "count, page"),
    Case("skill retrieve", _skill_request(""), 3, "the skill, its latest version"),
    Case("skill versions list", _skill_request("versions/"), 4,
         "the skill, count, page (with skill and uploader)"),
    Case("skill upload", _skill_upload, 9, "the skill, same bytes?, savepoint, lock the skill, "
         "same bytes? again, next number, insert, release"),
    Case("skill download", _skill_request("download/"), 3,
         "the skill (the caller may see it), the version with its skill"),
    Case("skill download (signed URL)", _signed_skill_download, 1,
         "no token: the version with its skill"),
    Case("skill version retrieve", _skill_request("versions/1/"), 3,
         "the skill, the version (with skill and uploader)"),
    Case("skill version yank", _skill_version_yank, 4,
         "the skill, the version, conditional update"),
    Case("workflow list", _workflow_request(""), 3, "count, page (with the skill)"),
    Case("workflow retrieve", _workflow_request("wf-0/"), 2, "the workflow with its skill"),
    Case("workflow dry-run", _workflow_request("wf-0/dry-run/", "post"), 2,
         "the workflow with its skill"),
    Case("workflow dry-run (match)", _workflow_request("dry-run/", "post"), 2,
         "the candidate workflows with their skills"),
    Case("delivery list", _delivery_list, 3,
         "count, page (with workflow, duplicate_of and replay_of)"),
    Case("delivery detail", _delivery_detail, 2, "the delivery"),
    Case("delivery replay", _delivery_replay, (10, 11), "the delivery, the workflow, "
         "savepoint, version, task, event, delivery, release, the new delivery; NOTIFY"),
    Case("workflow create", _workflow_write("post"), 7,
         "name taken?, the skill, slug taken?, savepoint, insert, release"),
    Case("workflow change", _workflow_write("patch"), 5,
         "the workflow, savepoint, conditional update, release"),
    Case("workflow delete", _workflow_write("delete"), 4,
         "the workflow, unlink its deliveries, delete"),
]  # fmt: skip


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_budget_does_not_grow_with_rows(
    case: Case, rows: int, request: pytest.FixtureRequest, staff_client: Any
):
    send = case.arrange(Fixtures(request), rows)
    with CaptureQueriesContext(connection) as queries:
        response = send()
    assert response.status_code < 400, getattr(response, "data", response)
    statements = "\n".join(query["sql"] for query in queries.captured_queries)
    assert len(queries) == case.expected(), f"token, {case.why}:\n{statements}"
