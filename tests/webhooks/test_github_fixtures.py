"""Real GitHub payloads (from @octokit/webhooks-examples) routed by conditions."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from kohakku_controller.tasks.models import Task
from kohakku_controller.webhooks.models import Delivery
from tests.webhooks.conftest import github_headers, load_fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def github_workflows(make_workflow):
    """A realistic set: PR triage, issue triage, branch builds and tag releases."""
    make_workflow(
        "triage-prs",
        priority=10,
        event="pull_request",
        conditions=[
            "payload.repository.full_name == 'Codertocat/Hello-World'",
            "contains(['opened', 'reopened'], payload.action)",
            "payload.pull_request.draft == `false`",
        ],
        input_template=(
            "{repo: payload.repository.full_name, number: payload.number, "
            "title: payload.pull_request.title, base: payload.pull_request.base.ref, "
            "head_sha: payload.pull_request.head.sha, author: payload.sender.login}"
        ),
    )
    make_workflow(
        "triage-issues",
        priority=10,
        event="issues",
        conditions=["contains(['opened', 'reopened'], payload.action)"],
        input_template="{repo: payload.repository.full_name, issue: payload.issue.number}",
    )
    make_workflow(
        "release",
        priority=20,
        event="push",
        conditions=["starts_with(payload.ref, 'refs/tags/')"],
        input_template="{tag: payload.ref, sha: payload.after}",
    )
    make_workflow(
        "build-branch",
        priority=30,
        event="push",
        conditions=["starts_with(payload.ref, 'refs/heads/')", "length(payload.commits) > `0`"],
        input_template=(
            "{ref: payload.ref, commits: payload.commits[*].id, repo: payload.repository.full_name}"
        ),
    )
    make_workflow("everything-else", priority=1000, event="*", input_template="{event: event}")


def send(post_webhook, fixture: str, event: str, *, form: bool = False):
    body = load_fixture(fixture)
    content_type = "application/json"
    if form:
        body = urlencode({"payload": body.decode()}).encode()
        content_type = "application/x-www-form-urlencoded"
    response = post_webhook(body, github_headers(body, event), content_type=content_type)
    assert response.status_code == 200, response.content
    return response.json()


def test_pull_request_opened(post_webhook, github_workflows):
    payload = json.loads(load_fixture("pull_request.opened.json"))
    answer = send(post_webhook, "pull_request.opened.json", "pull_request")
    assert answer["routed_to"] == "triage-prs"
    task = Task.objects.get(guid=answer["task_guid"])
    assert task.input == {
        "repo": "Codertocat/Hello-World",
        "number": payload["number"],
        "title": payload["pull_request"]["title"],
        "base": payload["pull_request"]["base"]["ref"],
        "head_sha": payload["pull_request"]["head"]["sha"],
        "author": payload["sender"]["login"],
    }


def test_pull_request_opened_as_form(post_webhook, github_workflows):
    assert send(post_webhook, "pull_request.opened.json", "pull_request", form=True)[
        "routed_to"
    ] == ("triage-prs")


def test_issues_opened(post_webhook, github_workflows):
    payload = json.loads(load_fixture("issues.opened.json"))
    answer = send(post_webhook, "issues.opened.json", "issues")
    assert answer["routed_to"] == "triage-issues"
    assert Task.objects.get().input == {
        "repo": "Codertocat/Hello-World",
        "issue": payload["issue"]["number"],
    }


def test_tag_push_goes_to_release(post_webhook, github_workflows):
    payload = json.loads(load_fixture("push.tag.json"))
    answer = send(post_webhook, "push.tag.json", "push")
    assert answer["routed_to"] == "release"
    assert Task.objects.get().input == {"tag": "refs/tags/simple-tag", "sha": payload["after"]}


def test_branch_push_goes_to_build(post_webhook, github_workflows):
    payload = json.loads(load_fixture("push.branch.json"))
    answer = send(post_webhook, "push.branch.json", "push")
    assert answer["routed_to"] == "build-branch"
    assert Task.objects.get().input == {
        "ref": "refs/heads/master",
        "commits": [commit["id"] for commit in payload["commits"]],
        "repo": "Codertocat/Hello-World",
    }


def test_ping_fixture_is_a_handshake(post_webhook, github_workflows):
    answer = send(post_webhook, "ping.json", "ping")
    assert answer["routed_to"] is None
    assert Task.objects.count() == 0
    assert Delivery.objects.get().status == "handshake"


def test_other_repository_falls_through_to_the_catch_all(post_webhook, make_workflow):
    make_workflow(
        "only-our-repo",
        priority=1,
        conditions=["payload.repository.full_name == 'org/repo'"],
    )
    make_workflow("catch-all", priority=2, event="*", input_template="{event: event}")
    answer = send(post_webhook, "pull_request.opened.json", "pull_request")
    assert answer["routed_to"] == "catch-all"
    assert Task.objects.get().input == {"event": "pull_request"}
