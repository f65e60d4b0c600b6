"""The delivery log API, replays, and the prune command."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from kohakku_controller.tasks.models import Task
from kohakku_controller.webhooks.models import Delivery
from kohakku_controller.workflows.models import Workflow
from tests.webhooks.conftest import as_body, github_headers

pytestmark = pytest.mark.django_db

LIST = "/api/v1/webhooks/deliveries/"
PAYLOAD = {"action": "opened", "number": 3, "repository": {"full_name": "org/repo"}}


@pytest.fixture
def deliveries(post_webhook, make_workflow):
    """One routed, one unrouted and one rejected delivery."""
    make_workflow(
        "triage-prs",
        conditions=["payload.action == 'opened'"],
        input_template="{number: payload.number}",
    )
    routed = as_body(PAYLOAD)
    unrouted = as_body({**PAYLOAD, "action": "closed"})
    answers = {
        "routed": post_webhook(routed, github_headers(routed, "pull_request")).json(),
        "unrouted": post_webhook(unrouted, github_headers(unrouted, "pull_request")).json(),
        "rejected": post_webhook(routed, github_headers(routed, "push", secret="bad")).json(),
    }
    return {name: answer["delivery_id"] for name, answer in answers.items()}


class TestAccess:
    def test_anonymous_is_refused(self, api_client, deliveries):
        assert api_client.get(LIST).status_code == 401

    def test_oauth_needs_workflows_read(self, oauth_client, deliveries):
        assert oauth_client("tasks:read").get(LIST).status_code == 403
        assert oauth_client("workflows:read").get(LIST).status_code == 200

    def test_operator_needs_the_view_permission(self, token_client, deliveries):
        assert token_client("plain").get(LIST).status_code == 403
        viewer = token_client("viewer", perms=("kohakku_controller.view_delivery",))
        assert viewer.get(LIST).status_code == 200

    def test_replay_needs_workflows_write_and_tasks_write(self, oauth_client, deliveries):
        url = f"{LIST}{deliveries['routed']}/replay/"
        assert oauth_client("workflows:read").post(url).status_code == 403
        # A replay queues tasks on demand: without tasks:write it would be a way around it.
        assert oauth_client("workflows:write").post(url).status_code == 403
        assert oauth_client("tasks:write").post(url).status_code == 403
        assert Task.objects.count() == 1  # the original delivery's task only
        assert oauth_client("workflows:write", "tasks:write").post(url).status_code == 201
        assert Task.objects.count() == 2

    def test_replay_needs_change_delivery_and_add_task(self, token_client, deliveries):
        url = f"{LIST}{deliveries['routed']}/replay/"
        viewer = token_client("viewer", perms=("kohakku_controller.view_delivery",))
        assert viewer.post(url).status_code == 403
        changer = token_client("changer", perms=("kohakku_controller.change_delivery",))
        assert changer.post(url).status_code == 403
        both = ("kohakku_controller.change_delivery", "kohakku_controller.add_task")
        assert token_client("replayer", perms=both).post(url).status_code == 201


class TestList:
    def test_newest_first_as_a_bare_array(self, staff_client, deliveries):
        response = staff_client.get(LIST)
        assert response.status_code == 200
        guids = [row["guid"] for row in response.json()]
        assert guids == [deliveries["rejected"], deliveries["unrouted"], deliveries["routed"]]

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("status=routed", ["routed"]),
            ("status=rejected", ["rejected"]),
            ("verification=failed", ["rejected"]),
            ("event=push", ["rejected"]),
            ("routed_to=triage-prs", ["routed"]),
            ("status_code=401", ["rejected"]),
            ("source=slack", []),
        ],
    )
    def test_filters(self, staff_client, deliveries, query, expected):
        rows = staff_client.get(f"{LIST}?{query}").json()
        assert [row["guid"] for row in rows] == [deliveries[name] for name in expected]

    def test_filter_by_task_and_time(self, staff_client, deliveries):
        task = Task.objects.get()
        rows = staff_client.get(f"{LIST}?task_guid={task.guid}").json()
        assert [row["guid"] for row in rows] == [deliveries["routed"]]
        later = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
        assert staff_client.get(LIST, {"received_after": later}).json() == []
        assert len(staff_client.get(LIST, {"received_before": later}).json()) == 3
        off_the_calendar = staff_client.get(LIST, {"received_after": "9999-12-31T23:59:59-01:00"})
        assert off_the_calendar.status_code == 400
        assert list(off_the_calendar.json()) == ["received_after"]

    def test_rows_leave_the_body_out_and_link_duplicates(
        self, staff_client, post_webhook, deliveries
    ):
        body = as_body(PAYLOAD)
        headers = github_headers(body, "pull_request", delivery="dup")
        original = post_webhook(body, headers).json()["delivery_id"]
        duplicate = post_webhook(body, headers).json()["delivery_id"]
        rows = {row["guid"]: row for row in staff_client.get(LIST).json()}
        assert all("body" not in row for row in rows.values())
        assert rows[duplicate]["duplicate_of"] == original
        assert rows[duplicate]["status"] == "duplicate"
        assert rows[original]["duplicate_of"] is None

    def test_bad_filter_value_is_400(self, staff_client, deliveries):
        response = staff_client.get(f"{LIST}?status=bogus")
        assert response.status_code == 400
        assert "status" in response.json()

    @pytest.mark.parametrize("value", ["-1", "1.5", "99", "600", "4O1", "9" * 30])
    def test_a_status_code_that_is_no_http_status_is_400(self, staff_client, deliveries, value):
        response = staff_client.get(LIST, {"status_code": value})
        assert response.status_code == 400, response.content
        assert list(response.json()) == ["status_code"]

    def test_list_query_budget(self, staff_client, deliveries, django_assert_max_num_queries):
        # token auth (2), count, page
        with django_assert_max_num_queries(5):
            assert len(staff_client.get(LIST).json()) == 3


class TestRetrieve:
    def test_fields(self, staff_client, deliveries):
        data = staff_client.get(f"{LIST}{deliveries['routed']}/").json()
        task = Task.objects.get()
        assert data["source"] == "github"
        assert data["event"] == "pull_request"
        assert data["status"] == "routed"
        assert data["verification"] == "verified"
        assert data["workflow"] == data["routed_to"] == "triage-prs"
        assert data["task_guid"] == str(task.guid)
        assert data["status_code"] == 200
        assert data["headers"]["x-hub-signature-256"] == "[redacted]"
        assert data["body"] == as_body(PAYLOAD).decode()
        assert data["external_id"] == data["headers"]["x-github-delivery"]
        assert isinstance(data["latency_ms"], float)

    def test_rejected_delivery_is_visible(self, staff_client, deliveries):
        data = staff_client.get(f"{LIST}{deliveries['rejected']}/").json()
        assert (data["status"], data["status_code"], data["verification"]) == (
            "rejected",
            401,
            "failed",
        )
        assert "does not match" in data["detail"]

    def test_unknown_guid_is_404(self, staff_client, deliveries):
        assert staff_client.get(f"{LIST}00000000-0000-0000-0000-000000000000/").status_code == 404
        assert staff_client.get(f"{LIST}not-a-uuid/").status_code == 404


class TestReplay:
    def test_replay_routes_again_and_is_recorded_as_a_replay(self, staff_client, deliveries):
        response = staff_client.post(f"{LIST}{deliveries['routed']}/replay/")
        assert response.status_code == 201
        data = response.json()
        assert data["replay_of"] == deliveries["routed"]
        assert data["status"] == "routed"
        assert data["guid"] != deliveries["routed"]
        assert Task.objects.count() == 2
        assert data["task_guid"] == str(Task.objects.order_by("-id").first().guid)

    def test_replay_uses_todays_workflows(self, staff_client, deliveries):
        Workflow.objects.filter(slug="triage-prs").update(conditions=[])
        data = staff_client.post(f"{LIST}{deliveries['unrouted']}/replay/").json()
        assert (data["status"], data["routed_to"]) == ("routed", "triage-prs")
        replayed = staff_client.get(f"{LIST}?is_replay=true").json()
        assert [row["guid"] for row in replayed] == [data["guid"]]
        originals = staff_client.get(f"{LIST}?is_replay=false").json()
        assert data["guid"] not in [row["guid"] for row in originals]
        refused = staff_client.get(f"{LIST}?is_replay=maybe")
        assert refused.status_code == 400
        assert list(refused.json()) == ["is_replay"]

    def test_replay_of_a_template_failure_after_the_fix(
        self, staff_client, post_webhook, make_workflow
    ):
        workflow = make_workflow("broken", input_template="payload.number")
        body = as_body(PAYLOAD)
        failed = post_webhook(body, github_headers(body, "pull_request")).json()
        assert failed["status"] == "failed"
        workflow.input_template = "{n: payload.number}"
        workflow.save()
        data = staff_client.post(f"{LIST}{failed['delivery_id']}/replay/").json()
        assert data["status"] == "routed"
        assert Task.objects.get().input == {"n": 3}

    def test_rejected_delivery_cannot_be_replayed(self, staff_client, deliveries):
        response = staff_client.post(f"{LIST}{deliveries['rejected']}/replay/")
        assert response.status_code == 409
        assert Delivery.objects.count() == 3

    def test_verified_but_rejected_delivery_cannot_be_replayed(
        self, staff_client, post_webhook, make_workflow
    ):
        make_workflow("everything", event="*")
        body = as_body({})
        rejected = post_webhook(body, github_headers(body, "e" * 101)).json()
        assert rejected["reason"] == "malformed_event"
        response = staff_client.post(f"{LIST}{rejected['delivery_id']}/replay/")
        assert response.status_code == 409
        assert "rejected" in response.json()["detail"].lower()
        assert (Delivery.objects.count(), Task.objects.count()) == (1, 0)

    def test_truncated_delivery_cannot_be_replayed(self, staff_client, deliveries):
        Delivery.objects.filter(guid=deliveries["routed"]).update(body_truncated=True)
        assert staff_client.post(f"{LIST}{deliveries['routed']}/replay/").status_code == 409

    def test_handshake_cannot_be_replayed(self, staff_client, post_webhook):
        body = b'{"zen": "z"}'
        ping = post_webhook(body, github_headers(body, "ping")).json()
        assert staff_client.post(f"{LIST}{ping['delivery_id']}/replay/").status_code == 409


class TestPrune:
    def age(self, guid: str, days: int) -> None:
        Delivery.objects.filter(guid=guid).update(received_at=timezone.now() - timedelta(days=days))

    def test_dry_run_counts_and_keeps(self, deliveries):
        self.age(deliveries["routed"], 40)
        out = StringIO()
        call_command("kohakku_prune_deliveries", "--dry-run", stdout=out)
        assert "Would delete 1 deliveries older than 30 days" in out.getvalue()
        assert Delivery.objects.count() == 3

    def test_prunes_past_the_retention_setting(self, deliveries, settings):
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "WEBHOOK_DELIVERY_RETENTION_DAYS": 7,
        }
        self.age(deliveries["routed"], 8)
        self.age(deliveries["unrouted"], 6)
        out = StringIO()
        call_command("kohakku_prune_deliveries", stdout=out)
        assert "Deleted 1 deliveries older than 7 days" in out.getvalue()
        remaining = {str(guid) for guid in Delivery.objects.values_list("guid", flat=True)}
        assert remaining == {deliveries["unrouted"], deliveries["rejected"]}

    def test_days_option_and_replays_of_pruned_deliveries_survive(self, deliveries, staff_client):
        replay = staff_client.post(f"{LIST}{deliveries['routed']}/replay/").json()
        self.age(deliveries["routed"], 3)
        call_command("kohakku_prune_deliveries", "--days", "2", stdout=StringIO())
        survivor = Delivery.objects.get(guid=replay["guid"])
        assert survivor.replay_of is None
        assert not Delivery.objects.filter(guid=deliveries["routed"]).exists()

    def test_negative_days_is_an_error(self, db):
        from django.core.management.base import CommandError

        with pytest.raises(CommandError):
            call_command("kohakku_prune_deliveries", "--days", "-1", stdout=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_replay_committed_while_its_original_is_pruned_does_not_fail_the_prune(
    deliveries, monkeypatch
):
    import threading

    from django.db import connection
    from django.db.models.sql.subqueries import DeleteQuery

    original = Delivery.objects.get(guid=deliveries["routed"])
    Delivery.objects.filter(pk=original.pk).update(received_at=timezone.now() - timedelta(days=40))
    replays: list[Delivery] = []

    def record_replay() -> None:
        try:
            replays.append(
                Delivery.objects.create(
                    source=original.source,
                    event=original.event,
                    status_code=200,
                    replay_of=original,
                )
            )
        finally:
            connection.close()

    delete_batch = DeleteQuery.delete_batch

    def replay_commits_first(self, pk_list, using):
        # After the prune unlinked what referred to the original, before it deletes it.
        if not replays:
            thread = threading.Thread(target=record_replay)
            thread.start()
            thread.join()
        return delete_batch(self, pk_list, using)

    monkeypatch.setattr(DeleteQuery, "delete_batch", replay_commits_first)
    call_command("kohakku_prune_deliveries", stdout=StringIO())
    assert not Delivery.objects.filter(pk=original.pk).exists()
    assert Delivery.objects.get(pk=replays[0].pk).replay_of is None


def test_the_admin_delivery_list_reads_no_bodies_or_headers(admin_browser, deliveries):
    Delivery.objects.update(body=b"x" * 1_000_000)
    with CaptureQueriesContext(connection) as queries:
        response = admin_browser.get("/admin/kohakku_controller/delivery/")
    assert response.status_code == 200
    page = next(q["sql"] for q in queries.captured_queries if "ORDER BY" in q["sql"])
    assert '"body"' not in page and '"headers"' not in page, page
    # The change page still shows them.
    delivery = Delivery.objects.first()
    detail = admin_browser.get(f"/admin/kohakku_controller/delivery/{delivery.pk}/change/")
    assert detail.status_code == 200 and b"xxxxxxxxxx" in detail.content
