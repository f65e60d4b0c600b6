"""POST /api/v1/webhooks/: detection, verification, parsing, handshakes, dedupe, routing."""

from __future__ import annotations

import io
import json
import time
from urllib.parse import urlencode

import pytest
from rest_framework.test import APIClient

from kohakku_controller.tasks.models import Task
from kohakku_controller.webhooks.models import Delivery
from tests.webhooks.conftest import (
    GITHUB_OLD_SECRET,
    URL,
    as_body,
    custom_headers,
    github_headers,
    slack_headers,
)

pytestmark = pytest.mark.django_db

PR_PAYLOAD = {
    "action": "opened",
    "number": 7,
    "pull_request": {"base": {"ref": "main"}, "title": "Fix it"},
    "repository": {"full_name": "org/repo"},
}
TRIAGE = {
    "conditions": [
        "payload.action == 'opened'",
        "starts_with(payload.pull_request.base.ref, 'main')",
    ],
    "input_template": "{repo: payload.repository.full_name, number: payload.number}",
}


def only_delivery() -> Delivery:
    assert Delivery.objects.count() == 1
    return Delivery.objects.get()


class TestRouting:
    def test_github_json_delivery_creates_the_task_of_the_matching_workflow(
        self, post_webhook, make_workflow
    ):
        make_workflow(
            "triage-prs", labels={"team": "a"}, task_priority=5, timeout_seconds=60, **TRIAGE
        )
        body = as_body(PR_PAYLOAD)
        response = post_webhook(body, github_headers(body, "pull_request"))

        assert response.status_code == 200
        data = response.json()
        task = Task.objects.get()
        assert data == {
            "status": "ok",
            "routed_to": "triage-prs",
            "delivery_id": data["delivery_id"],
            "task_guid": str(task.guid),
        }
        assert task.input == {"repo": "org/repo", "number": 7}
        assert (task.origin, task.origin_ref) == ("workflow", "triage-prs")
        assert (task.labels, task.priority, task.timeout_seconds) == ({"team": "a"}, 5, 60)
        delivery = only_delivery()
        assert str(delivery.guid) == data["delivery_id"]
        assert delivery.status == "routed"
        assert delivery.verification == "verified"
        assert delivery.task_guid == task.guid
        assert (delivery.source, delivery.event, delivery.status_code) == (
            "github",
            "pull_request",
            200,
        )
        assert delivery.latency_ms is not None

    def test_github_form_encoded_payload(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = urlencode({"payload": json.dumps(PR_PAYLOAD)}).encode()
        response = post_webhook(
            body,
            github_headers(body, "pull_request"),
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 200
        assert response.json()["routed_to"] == "triage-prs"
        assert Task.objects.get().input == {"repo": "org/repo", "number": 7}

    def test_no_matching_workflow_answers_null_and_creates_nothing(
        self, post_webhook, make_workflow
    ):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body({**PR_PAYLOAD, "action": "closed"})
        response = post_webhook(body, github_headers(body, "pull_request"))
        assert response.status_code == 200
        assert response.json()["routed_to"] is None
        assert response.json()["task_guid"] is None
        assert Task.objects.count() == 0
        delivery = only_delivery()
        assert delivery.status == "unrouted"
        assert "condition 0" in delivery.detail

    def test_rotated_out_secret_still_verifies(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request", secret=GITHUB_OLD_SECRET)
        assert post_webhook(body, headers).json()["routed_to"] == "triage-prs"

    def test_lower_priority_number_wins_then_name(self, post_webhook, make_workflow):
        make_workflow("late", name="A late", priority=200, event="*")
        make_workflow("b-early", name="B early", priority=10)
        make_workflow("a-early", name="A early", priority=10)
        make_workflow("disabled", name="0 disabled", priority=0, enabled=False)
        make_workflow("slack-one", name="Slack", priority=0, source="slack", event="*")
        body = as_body(PR_PAYLOAD)
        response = post_webhook(body, github_headers(body, "pull_request"))
        assert response.json()["routed_to"] == "a-early"

    def test_wildcard_event_matches_any_event(self, post_webhook, make_workflow):
        make_workflow("anything", event="*", input_template="{event: event}")
        body = as_body({"zen": "x", "hook_id": 1, "action": "created"})
        response = post_webhook(body, github_headers(body, "star"))
        assert response.json()["routed_to"] == "anything"
        assert Task.objects.get().input == {"event": "star"}

    def test_conditions_see_headers_but_not_credentials(self, post_webhook, make_workflow):
        make_workflow(
            "by-hook",
            conditions=["headers.\"x-github-hook-id\" == '4242'"],
            input_template='{signature: headers."x-hub-signature-256"}',
        )
        body = as_body(PR_PAYLOAD)
        response = post_webhook(body, github_headers(body, "pull_request"))
        assert response.json()["routed_to"] == "by-hook"
        assert Task.objects.get().input == {"signature": "[redacted]"}

    def test_no_api_credentials_are_needed_or_checked(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        headers = {**github_headers(body, "pull_request"), "Authorization": "Token bogus"}
        response = post_webhook(body, headers)
        assert response.status_code == 200
        assert response.json()["routed_to"] == "triage-prs"


class TestTemplateAndTaskFailures:
    """A matching workflow that cannot queue a task: recorded as failed, answered 200."""

    def test_template_failing_on_the_payload(self, post_webhook, make_workflow):
        make_workflow("bad-template", input_template="{n: abs(payload.action)}")
        body = as_body(PR_PAYLOAD)
        response = post_webhook(body, github_headers(body, "pull_request"))
        assert response.status_code == 200
        data = response.json()
        assert data["status"] == "failed"
        assert data["routed_to"] == "bad-template"
        assert data["task_guid"] is None
        assert "input template failed" in data["detail"]
        assert Task.objects.count() == 0
        delivery = only_delivery()
        assert delivery.status == "failed"
        assert "abs()" in delivery.detail

    def test_template_yielding_a_non_object(self, post_webhook, make_workflow):
        make_workflow("scalar", input_template="payload.number")
        body = as_body(PR_PAYLOAD)
        data = post_webhook(body, github_headers(body, "pull_request")).json()
        assert data["status"] == "failed"
        assert "must yield a JSON object, got a number" in data["detail"]
        assert Task.objects.count() == 0

    def test_skill_without_installable_version(self, post_webhook, make_workflow, make_skill):
        skill = make_skill("yanked-only", versions=1, yanked=(1,))
        make_workflow("no-version", skill=skill)
        body = as_body(PR_PAYLOAD)
        data = post_webhook(body, github_headers(body, "pull_request")).json()
        assert data["status"] == "failed"
        assert "task could not be created" in data["detail"]
        assert Task.objects.count() == 0
        assert only_delivery().status == "failed"

    def test_failed_delivery_still_claims_its_id(self, post_webhook, make_workflow):
        make_workflow("scalar", input_template="payload.number")
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request")
        post_webhook(body, headers)
        again = post_webhook(body, headers).json()
        assert again["duplicate"] is True
        assert again["status"] == "failed"
        assert Task.objects.count() == 0


class TestRejections:
    def test_bad_signature_is_401_recorded_and_not_routed(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        response = post_webhook(body, github_headers(body, "pull_request", secret="wrong"))
        assert response.status_code == 401
        assert response.json()["reason"] == "signature_mismatch"
        assert Task.objects.count() == 0
        delivery = only_delivery()
        assert (delivery.status, delivery.verification, delivery.status_code) == (
            "rejected",
            "failed",
            401,
        )
        assert str(delivery.guid) == response.json()["delivery_id"]

    def test_tampered_body_is_401(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request")
        tampered = body.replace(b"org/repo", b"org/evil")
        assert post_webhook(tampered, headers).status_code == 401
        assert Task.objects.count() == 0

    def test_missing_signature_is_401(self, post_webhook):
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request")
        del headers["X-Hub-Signature-256"]
        response = post_webhook(body, headers)
        assert response.status_code == 401
        assert response.json()["reason"] == "signature_missing"

    def test_stale_slack_signature_is_401(self, post_webhook):
        body = as_body({"type": "event_callback", "event_id": "Ev1", "event": {}})
        headers = slack_headers(body, timestamp=int(time.time()) - 301)
        response = post_webhook(body, headers)
        assert response.status_code == 401
        assert response.json()["reason"] == "signature_expired"
        assert only_delivery().source == "slack"

    def test_replayed_signature_with_other_body_is_401(self, post_webhook):
        body = as_body({"type": "event_callback", "event_id": "Ev1", "event": {}})
        headers = slack_headers(body)
        other = as_body({"type": "event_callback", "event_id": "Ev2", "event": {}})
        assert post_webhook(other, headers).status_code == 401

    def test_custom_signature_with_unknown_key_is_401(self, post_webhook):
        body = as_body({"type": "build.done"})
        headers = custom_headers(body, key=b"another-key-another-key-another!")
        assert post_webhook(body, headers).status_code == 401

    def test_unknown_source_is_400_and_recorded(self, post_webhook):
        response = post_webhook(b"{}", {"X-Webhook-Source": "gitlab"})
        assert response.status_code == 400
        assert response.json()["reason"] == "unknown_source"
        delivery = only_delivery()
        assert (delivery.status, delivery.status_code, delivery.source) == ("rejected", 400, "")

    def test_missing_source_is_400(self, post_webhook):
        response = post_webhook(b"{}", {})
        assert response.status_code == 400
        assert "X-Webhook-Source" in response.json()["detail"]
        assert only_delivery().status == "rejected"

    def test_source_without_secret_is_refused(self, post_webhook, settings):
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "WEBHOOK_SECRETS": {"github": [], "slack": [], "custom": []},
        }
        body = as_body(PR_PAYLOAD)
        response = post_webhook(body, github_headers(body, "pull_request"))
        assert response.status_code == 403
        assert response.json()["reason"] == "source_not_configured"

    def test_unsigned_allowed_for_development(self, post_webhook, make_workflow, settings):
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "WEBHOOK_SECRETS": {"github": [], "slack": [], "custom": []},
            "ALLOW_UNSIGNED_WEBHOOKS": True,
        }
        make_workflow("custom-any", source="custom", event="*")
        response = post_webhook(b'{"type": "ping"}', {"X-Webhook-Source": "custom"})
        assert response.status_code == 200
        assert response.json()["routed_to"] == "custom-any"
        assert only_delivery().verification == "unsigned"

    def test_unsigned_setting_does_not_bypass_a_configured_secret(self, post_webhook, settings):
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "ALLOW_UNSIGNED_WEBHOOKS": True,
        }
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request")
        del headers["X-Hub-Signature-256"]
        assert post_webhook(body, headers).status_code == 401

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            (b'{"action": "opened"', "application/json"),
            (b'{"n": NaN}', "application/json"),
            (b"[" * 100_000 + b"]" * 100_000, "application/json"),
            (b"\xff\xfe\x00garbage", "application/json"),
            (b'{"ref": "main\\u0000"}', "application/json"),
            (b'{"title": "\\ud83d"}', "application/json"),
            (b'{"score": 1e400}', "application/json"),
            (b"payload=%7Bnot-json", "application/x-www-form-urlencoded"),
            (b"command=%2Fdeploy&text=a%00b", "application/x-www-form-urlencoded"),
            (b"payload=%7B%22a%22%3A%22%5Cu0000%22%7D", "application/x-www-form-urlencoded"),
            (b"a=%ff%fe", "application/x-www-form-urlencoded"),
        ],
    )
    def test_malformed_body_after_valid_signature_is_400_and_recorded(
        self, post_webhook, body, content_type
    ):
        response = post_webhook(body, github_headers(body, "push"), content_type=content_type)
        assert response.status_code == 400
        assert response.json()["reason"] == "malformed_body"
        delivery = only_delivery()
        assert (delivery.status, delivery.verification) == ("rejected", "verified")

    def test_too_many_form_fields_is_400(self, post_webhook):
        body = "&".join(f"f{i}=1" for i in range(1001)).encode()
        response = post_webhook(
            body, github_headers(body, "push"), content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code == 400

    def test_unsupported_content_type_is_415(self, post_webhook):
        body = b"<xml/>"
        response = post_webhook(body, github_headers(body, "push"), content_type="application/xml")
        assert response.status_code == 415
        assert only_delivery().status_code == 415

    def test_body_over_the_cap_is_413_and_recorded(self, post_webhook, settings):
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "WEBHOOK_MAX_BODY_BYTES": 1000,
        }
        body = as_body({"blob": "x" * 2000})
        response = post_webhook(body, github_headers(body, "push"))
        assert response.status_code == 413
        assert response.json()["reason"] == "too_large"
        delivery = only_delivery()
        assert (delivery.status_code, delivery.body_truncated, bytes(delivery.body)) == (
            413,
            True,
            b"",
        )
        assert delivery.event == "push"

    def test_body_at_the_cap_is_accepted(self, post_webhook, settings):
        body = as_body({"blob": "x" * 100})
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "WEBHOOK_MAX_BODY_BYTES": len(body),
        }
        assert post_webhook(body, github_headers(body, "push")).status_code == 200

    def test_absurd_declared_length_is_413_and_recorded(self, post_webhook):
        body = b"{}"
        for declared in (2**63, 10**30):
            response = post_webhook(
                body, {**github_headers(body, "push"), "Content-Length": str(declared)}
            )
            assert response.status_code == 413
            assert response.json()["reason"] == "too_large"
        assert list(Delivery.objects.values_list("body_size", flat=True)) == [2**63 - 1] * 2

    def test_compressed_body_is_415_and_recorded_unread(self, post_webhook, make_workflow):
        make_workflow("push", source="github", event="push")
        body = as_body({"ref": "main"})
        headers = {**github_headers(body, "push"), "Content-Encoding": "gzip"}
        response = post_webhook(body, headers)
        assert response.status_code == 415
        answer = response.json()
        assert answer["reason"] == "unsupported_content_encoding"
        delivery = Delivery.objects.get(guid=answer["delivery_id"])
        assert (delivery.status, delivery.status_code, delivery.event) == ("rejected", 415, "push")
        assert not Task.objects.exists()

    def test_body_shorter_than_its_content_length_is_400_and_recorded(
        self, post_webhook, make_workflow
    ):
        # The sender's connection ended early: what arrived is not the delivery it signed.
        make_workflow("push", source="github", event="push")
        body = as_body({"ref": "main"})
        headers = {**github_headers(body, "push"), "Content-Length": str(len(body) + 10)}
        response = post_webhook(body, headers, stream=io.BytesIO(body))
        assert response.status_code == 400
        answer = response.json()
        assert answer["reason"] == "incomplete_body"
        assert "ended after" in answer["detail"]
        delivery = Delivery.objects.get(guid=answer["delivery_id"])
        assert (delivery.status, delivery.status_code) == ("rejected", 400)
        assert not Task.objects.exists()

    def test_chunked_body_is_411_and_recorded_unread(self, post_webhook, make_workflow):
        # Django cannot read a body sent without Content-Length: it would look empty.
        make_workflow("push", source="github", event="push")
        response = post_webhook(b"", {"X-GitHub-Event": "push", "Transfer-Encoding": "chunked"})
        assert response.status_code == 411
        answer = response.json()
        assert "Content-Length" in answer["detail"]
        assert answer["reason"] == "length_required"
        delivery = Delivery.objects.get(guid=answer["delivery_id"])
        assert (delivery.status, delivery.status_code) == ("rejected", 411)
        assert (delivery.source, delivery.event, delivery.body_truncated) == (
            "github",
            "push",
            True,
        )
        assert delivery.task_guid is None

    @pytest.mark.parametrize("depth", [65, 950])
    def test_payload_nested_past_the_limit_is_400(self, post_webhook, make_workflow, depth):
        make_workflow("deep", source="custom", event="deep", input_template="payload")
        body = b'{"type": "deep", "a": ' + b"[" * depth + b"]" * depth + b"}"
        response = post_webhook(body, custom_headers(body))
        assert response.status_code == 400
        assert response.json()["reason"] == "malformed_body"
        assert "more than 64 levels" in response.json()["detail"]
        assert not Task.objects.exists()

    def test_payload_at_the_nesting_limit_is_routed(self, post_webhook, make_workflow):
        make_workflow("deep", source="custom", event="deep", input_template="payload")
        depth = 63  # and the payload object itself: 64 levels
        body = b'{"type": "deep", "a": ' + b"[" * depth + b"]" * depth + b"}"
        response = post_webhook(body, custom_headers(body))
        assert response.json()["routed_to"] == "deep"
        assert Task.objects.count() == 1

    def test_overlong_event_name_is_400(self, post_webhook):
        body = b"{}"
        assert post_webhook(body, github_headers(body, "e" * 101)).status_code == 400


class TestHandshakes:
    def test_slack_url_verification_answers_the_challenge(self, post_webhook, make_workflow):
        make_workflow("slack-all", source="slack", event="*")
        body = as_body(
            {
                "token": "t",
                "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                "type": "url_verification",
            }
        )
        response = post_webhook(body, slack_headers(body))
        assert response.status_code == 200
        assert response.json() == {
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
        }
        assert Task.objects.count() == 0
        assert only_delivery().status == "handshake"

    def test_slack_url_verification_needs_a_valid_signature(self, post_webhook):
        body = as_body({"challenge": "c", "type": "url_verification"})
        response = post_webhook(body, slack_headers(body, secret="wrong"))
        assert response.status_code == 401
        assert "challenge" not in response.json()

    def test_github_ping_is_acknowledged_and_not_routed(self, post_webhook, make_workflow):
        make_workflow("github-all", event="*")
        body = as_body({"zen": "Keep it logically awesome.", "hook_id": 1})
        response = post_webhook(body, github_headers(body, "ping"))
        assert response.status_code == 200
        assert response.json()["routed_to"] is None
        assert Task.objects.count() == 0
        assert only_delivery().status == "handshake"


class TestSlack:
    def test_event_callback_routes_and_retry_is_a_duplicate(self, post_webhook, make_workflow):
        make_workflow(
            "mentions",
            source="slack",
            event="event_callback",
            conditions=["payload.event.type == 'app_mention'"],
            input_template="{text: payload.event.text, channel: payload.event.channel}",
        )
        body = as_body(
            {
                "type": "event_callback",
                "event_id": "Ev08MFMKH6",
                "event": {"type": "app_mention", "text": "<@U1> deploy", "channel": "C1"},
            }
        )
        first = post_webhook(body, slack_headers(body))
        assert first.json()["routed_to"] == "mentions"
        retry_headers = {
            **slack_headers(body),
            "X-Slack-Retry-Num": "1",
            "X-Slack-Retry-Reason": "http_timeout",
        }
        retry = post_webhook(body, retry_headers)
        assert retry.status_code == 200
        assert retry.json()["routed_to"] == "mentions"
        assert retry.json()["task_guid"] == first.json()["task_guid"]
        assert retry.json()["duplicate"] is True
        assert Task.objects.count() == 1
        duplicate = Delivery.objects.get(guid=retry.json()["delivery_id"])
        assert (duplicate.status, duplicate.retry_num, duplicate.retry_reason) == (
            "duplicate",
            1,
            "http_timeout",
        )
        assert str(duplicate.duplicate_of.guid) == first.json()["delivery_id"]

    def test_slash_command_form_fields_are_the_payload(self, post_webhook, make_workflow):
        make_workflow(
            "deploy-command",
            source="slack",
            event="slash_command",
            conditions=["payload.command == '/deploy'"],
            input_template="{args: payload.text, user: payload.user_name}",
        )
        body = urlencode(
            {"command": "/deploy", "text": "api prod", "user_name": "ann", "team_id": "T1"}
        ).encode()
        response = post_webhook(
            body, slack_headers(body), content_type="application/x-www-form-urlencoded"
        )
        assert response.json()["routed_to"] == "deploy-command"
        assert Task.objects.get().input == {"args": "api prod", "user": "ann"}

    def test_interactive_payload_form(self, post_webhook, make_workflow):
        make_workflow(
            "buttons",
            source="slack",
            event="block_actions",
            input_template="{action: payload.actions[0].action_id}",
        )
        interaction = {"type": "block_actions", "actions": [{"action_id": "approve"}]}
        body = urlencode({"payload": json.dumps(interaction)}).encode()
        response = post_webhook(
            body, slack_headers(body), content_type="application/x-www-form-urlencoded"
        )
        assert response.json()["routed_to"] == "buttons"
        assert Task.objects.get().input == {"action": "approve"}


class TestCustomSender:
    def test_standard_webhooks_delivery_routes_by_payload_type(self, post_webhook, make_workflow):
        make_workflow(
            "builds",
            source="custom",
            event="build.finished",
            input_template="{id: payload.data.id}",
        )
        body = as_body({"type": "build.finished", "data": {"id": "b-1"}})
        response = post_webhook(body, custom_headers(body))
        assert response.json()["routed_to"] == "builds"
        assert Task.objects.get().input == {"id": "b-1"}

    def test_event_header_overrides_payload_type(self, post_webhook, make_workflow):
        make_workflow("named", source="custom", event="deploy")
        body = as_body({"type": "something-else"})
        assert post_webhook(body, custom_headers(body, event="deploy")).json()["routed_to"] == (
            "named"
        )

    def test_custom_is_detected_from_standard_webhooks_headers(self, post_webhook, make_workflow):
        make_workflow("builds", source="custom", event="*")
        body = as_body({"type": "x"})
        headers = custom_headers(body)
        del headers["X-Webhook-Source"]
        assert post_webhook(body, headers).json()["routed_to"] == "builds"

    def test_same_webhook_id_is_a_duplicate(self, post_webhook, make_workflow):
        make_workflow("builds", source="custom", event="*")
        body = as_body({"type": "x"})
        first = post_webhook(body, custom_headers(body, msg_id="msg_1")).json()
        second = post_webhook(body, custom_headers(body, msg_id="msg_1")).json()
        assert second["duplicate"] is True
        assert second["task_guid"] == first["task_guid"]
        assert Task.objects.count() == 1

    def test_long_ids_that_differ_past_the_kept_part_are_two_deliveries(
        self, post_webhook, make_workflow
    ):
        make_workflow("builds", source="custom", event="*")
        prefix = "msg_" + "x" * 300
        answers = []
        for suffix, kind in (("1", "a"), ("2", "b")):
            body = as_body({"type": kind})
            answers.append(post_webhook(body, custom_headers(body, msg_id=prefix + suffix)).json())
        assert [answer.get("duplicate", False) for answer in answers] == [False, False]
        assert Task.objects.count() == 2
        # The same long id again is still a duplicate.
        body = as_body({"type": "a"})
        again = post_webhook(body, custom_headers(body, msg_id=prefix + "1")).json()
        assert again["duplicate"] is True
        assert Task.objects.count() == 2


class TestGitHubDedupe:
    def test_same_hook_and_delivery_is_a_duplicate(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request", delivery="d-1")
        first = post_webhook(body, headers).json()
        second = post_webhook(body, headers)
        assert second.status_code == 200
        assert second.json()["routed_to"] == "triage-prs"
        assert second.json()["task_guid"] == first["task_guid"]
        assert Task.objects.count() == 1
        assert Delivery.objects.filter(status="duplicate").count() == 1

    def test_same_delivery_from_another_hook_is_not_a_duplicate(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        post_webhook(body, github_headers(body, "pull_request", delivery="d-1", hook_id="1"))
        post_webhook(body, github_headers(body, "pull_request", delivery="d-1", hook_id="2"))
        assert Task.objects.count() == 2

    def test_a_rejected_delivery_does_not_claim_the_id(self, post_webhook, make_workflow):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        bad = github_headers(body, "pull_request", delivery="d-9", secret="wrong")
        assert post_webhook(body, bad).status_code == 401
        good = github_headers(body, "pull_request", delivery="d-9")
        assert post_webhook(body, good).json()["routed_to"] == "triage-prs"
        assert Task.objects.count() == 1


class TestDeliveryRecord:
    def test_credentials_are_redacted_in_the_stored_headers(self, post_webhook):
        body = as_body(PR_PAYLOAD)
        headers = {
            **github_headers(body, "pull_request"),
            "Cookie": "session=cookie-secret-value",
            "Authorization": "Bearer bearer-secret-value",
            "X-Api-Key": "api-key-secret-value",
            "X-Auth": "auth-secret-value",
            "X-Credential": "credential-secret-value",
            "X-Private-Key": "private-secret-value",
            "X-Api-Sig": "sig-secret-value",
        }
        post_webhook(body, headers)
        stored = only_delivery().headers
        for name in (
            "x-hub-signature-256",
            "cookie",
            "authorization",
            "x-api-key",
            "x-auth",
            "x-credential",
            "x-private-key",
            "x-api-sig",
        ):
            assert stored[name] == "[redacted]"
        assert stored["x-github-event"] == "pull_request"
        dumped = json.dumps(stored)
        for name in ("cookie", "bearer", "api-key", "auth", "credential", "private", "sig"):
            assert f"{name}-secret-value" not in dumped

    def test_odd_retry_header_is_recorded_as_no_retry(self, post_webhook):
        body = as_body({"type": "event_callback", "event_id": "Ev9", "event": {}})
        headers = {
            **slack_headers(body),
            "X-Slack-Retry-Num": "\u00b2",
            "X-Slack-Retry-Reason": "x",
        }
        assert post_webhook(body, headers).status_code == 200
        delivery = only_delivery()
        assert (delivery.retry_num, delivery.retry_reason) == (None, "x")

    def test_long_body_is_stored_truncated(self, post_webhook, settings):
        settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "WEBHOOK_LOG_BODY_BYTES": 64}
        body = as_body({"blob": "x" * 500})
        post_webhook(body, github_headers(body, "push"))
        delivery = only_delivery()
        assert bytes(delivery.body) == body[:64]
        assert (delivery.body_size, delivery.body_truncated) == (len(body), True)


class TestQueryBudget:
    # The tests run inside a transaction, so each atomic block adds SAVEPOINT and RELEASE;
    # a real request in autocommit mode runs two queries fewer.

    @pytest.fixture(autouse=True, params=[1, 25], ids=lambda count: f"{count}-workflows")
    def earlier_workflows(self, request, make_skill, make_workflow):
        """Workflows tried before triage-prs, none matching, each on a skill of its own: the
        budgets are the same with one workflow as with 25."""
        for index in range(request.param - 1):
            make_workflow(
                f"earlier-{index}",
                skill=make_skill(f"skill-{index}"),
                priority=0,
                conditions=["`false`"],
            )

    def test_routed_delivery(self, post_webhook, make_workflow, django_assert_num_queries):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request")
        # dedupe look-up, workflows, savepoint; create_task: the version with its skill, the
        # task, its first event, (PostgreSQL: the scheduler's NOTIFY); delivery insert, release
        from django.db import connection

        budget = 9 if connection.vendor == "postgresql" else 8
        with django_assert_num_queries(budget):
            assert post_webhook(body, headers).json()["routed_to"] == "triage-prs"

    def test_unrouted_delivery(self, post_webhook, make_workflow, django_assert_num_queries):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body({**PR_PAYLOAD, "action": "closed"})
        headers = github_headers(body, "pull_request")
        # dedupe look-up, workflows, savepoint, delivery insert, release
        with django_assert_num_queries(5):
            assert post_webhook(body, headers).json()["routed_to"] is None

    def test_duplicate_delivery(self, post_webhook, make_workflow, django_assert_num_queries):
        make_workflow("triage-prs", **TRIAGE)
        body = as_body(PR_PAYLOAD)
        headers = github_headers(body, "pull_request")
        post_webhook(body, headers)
        # dedupe look-up, savepoint, delivery insert, release (the savepoint pair is the
        # test's transaction; in production the insert is one transaction of its own)
        with django_assert_num_queries(4):
            assert post_webhook(body, headers).json()["duplicate"] is True

    def test_rejected_delivery(self, post_webhook, django_assert_num_queries):
        body = as_body(PR_PAYLOAD)
        with django_assert_num_queries(1):
            post_webhook(body, github_headers(body, "pull_request", secret="x"))


@pytest.mark.parametrize("accept", ["text/html", "text/*"])
def test_a_delivery_asking_for_html_is_refused_before_it_is_processed(
    webhook_secrets, make_workflow, accept
):
    make_workflow("triage-prs", input_template="{n: payload.number}")
    body = as_body({"action": "opened", "number": 1, "repository": {"full_name": "org/repo"}})
    headers = {**github_headers(body, "pull_request"), "Accept": accept}
    response = APIClient().generic(
        "POST", URL, body, content_type="application/json", headers=headers
    )
    assert response.status_code == 406
    assert response.json()["detail"]
    assert not Task.objects.exists()
    assert not Delivery.objects.exists()
