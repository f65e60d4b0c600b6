"""/api/v1/workflows/: the pinned request shape, validation, scopes and dry-runs."""

from __future__ import annotations

import pytest

from kohakku_controller.workflows.models import Workflow

pytestmark = pytest.mark.django_db

URL = "/api/v1/workflows/"
PINNED = {
    "name": "Triage opened PRs",
    "slug": "triage-prs",
    "enabled": True,
    "priority": 100,
    "source": "github",
    "event": "pull_request",
    "conditions": [
        "payload.action == 'opened'",
        "starts_with(payload.pull_request.base.ref, 'main')",
    ],
    "skill": "triage",
    "skill_version": None,
    "input_template": "{repo: payload.repository.full_name, number: payload.number}",
    "backend": "local",
    "labels": {},
    "task_priority": 0,
    "timeout_seconds": 600,
}
PR_EVENT = {
    "source": "github",
    "event": "pull_request",
    "payload": {
        "action": "opened",
        "number": 9,
        "pull_request": {"base": {"ref": "main"}},
        "repository": {"full_name": "org/repo"},
    },
}


@pytest.fixture
def skill(make_skill):
    return make_skill("triage", versions=2)


class TestCreate:
    def test_pinned_shape_is_accepted(self, staff_client, skill):
        response = staff_client.post(URL, PINNED, format="json")
        assert response.status_code == 201, response.json()
        data = response.json()
        for key, value in PINNED.items():
            assert data[key] == value, key
        assert data["guid"]
        assert Workflow.objects.get(slug="triage-prs").skill == skill

    def test_defaults_and_derived_slug(self, staff_client, skill):
        response = staff_client.post(
            URL, {"name": "Any GitHub Event!", "source": "github", "skill": "triage"}, format="json"
        )
        assert response.status_code == 201, response.json()
        data = response.json()
        assert data["slug"] == "any-github-event"
        assert data["event"] == "*"
        assert data["conditions"] == []
        assert data["input_template"] == "payload"
        assert data["enabled"] is True
        assert data["skill_version"] is None

    def test_pinned_skill_version(self, staff_client, skill):
        response = staff_client.post(URL, {**PINNED, "skill_version": 2}, format="json")
        assert response.status_code == 201
        assert response.json()["skill_version"] == 2

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"skill": "nope"}, "skill"),
            ({"skill_version": 3}, "skill_version"),
            ({"skill_version": 0}, "skill_version"),
            ({"source": "gitlab"}, "source"),
            ({"event": "e" * 101}, "event"),
            ({"conditions": "payload.action == 'opened'"}, "conditions"),
            ({"conditions": [1]}, "conditions"),
            ({"conditions": ["a"] * 33}, "conditions"),
            ({"input_template": "{a: "}, "input_template"),
            ({"input_template": ""}, "input_template"),
            ({"labels": ["gpu"]}, "labels"),
            ({"labels": {"gpu": {"x": 1}}}, "labels"),
            ({"labels": {"bad key": "x"}}, "labels"),
            ({"timeout_seconds": 0}, "timeout_seconds"),
            ({"priority": "high"}, "priority"),
            # Strictly typed, as every body of the API: no silent conversion.
            ({"priority": "1"}, "priority"),
            ({"task_priority": 1.0}, "task_priority"),
            ({"enabled": "true"}, "enabled"),
            ({"name": 12345}, "name"),
            ({"event": 7}, "event"),
            ({"backend": True}, "backend"),
            ({"timeout_seconds": "60"}, "timeout_seconds"),
            ({"skill_version": "1"}, "skill_version"),
            ({"input_template": 5}, "input_template"),
            ({"slug": "Not A Slug"}, "slug"),
            ({"slug": "dry-run"}, "slug"),
            ({"name": ""}, "name"),
            ({"name": "!!!", "slug": None}, "slug"),
            ({"name": "a\u0001b"}, "name"),
            ({"event": "push\nmerge"}, "event"),
            ({"conditions": ["(" * 2000 + "a" + ")" * 2000]}, "conditions"),
            ({"input_template": "[" * 1500 + "a" + "]" * 1500}, "input_template"),
            # What every task of the workflow would be refused for is refused at once.
            ({"task_priority": 5000}, "task_priority"),
            ({"backend": "bad name!"}, "backend"),
            ({"labels": {f"k{i}": "v" for i in range(40)}}, "labels"),
            ({"bogus": 1}, "bogus"),
        ],
    )
    def test_invalid_fields_are_400_naming_the_field(self, staff_client, skill, change, field):
        body = {**PINNED, **change}
        body = {
            key: value
            for key, value in body.items()
            if value is not None
            or key
            in (
                "skill_version",
                "timeout_seconds",
            )
        }
        response = staff_client.post(URL, body, format="json")
        assert response.status_code == 400
        assert field in response.json()
        assert Workflow.objects.count() == 0

    def test_task_settings_follow_the_task_settings(self, staff_client, skill, settings):
        settings.KOHAKKU_CONTROLLER = {
            **settings.KOHAKKU_CONTROLLER,
            "TASK_MAX_TIMEOUT_SECONDS": 60,
        }
        response = staff_client.post(URL, PINNED, format="json")  # timeout_seconds 600
        assert response.status_code == 400
        assert response.json()["timeout_seconds"] == ["Must be an integer from 1 to 60."]

    def test_a_resource_read_back_can_be_sent_back(self, staff_client, skill):
        created = staff_client.post(URL, PINNED, format="json").json()
        response = staff_client.put(f"{URL}triage-prs/", created, format="json")
        assert response.status_code == 200, response.json()

    def test_bad_condition_is_named_by_index(self, staff_client, skill):
        body = {**PINNED, "conditions": ["payload.action == 'opened'", "payload.[", "ok"]}
        response = staff_client.post(URL, body, format="json")
        assert response.status_code == 400
        errors = response.json()["conditions"]
        assert list(errors) == ["1"]
        assert "Invalid JMESPath expression" in errors["1"][0]

    @pytest.mark.parametrize("archived", [False, True], ids=["unknown", "archived"])
    def test_a_skill_that_cannot_be_used_is_named(self, staff_client, skill, archived):
        if archived:
            type(skill).objects.filter(pk=skill.pk).update(archived=True)
        body = {**PINNED, "skill": "triage" if archived else "nope"}
        response = staff_client.post(URL, body, format="json")
        assert response.status_code == 400
        slug = body["skill"]
        assert response.json() == {
            "skill": [f"No skill with the slug {slug!r}, or it is archived."]
        }

    def test_a_template_nested_too_deeply_to_evaluate_is_400(self, staff_client, skill):
        body = {**PINNED, "input_template": "|".join(["payload"] * 500)}
        response = staff_client.post(URL, body, format="json")
        assert response.status_code == 400
        assert "nested too deeply" in response.json()["input_template"][0]

    def test_duplicate_slug_and_name(self, staff_client, skill):
        assert staff_client.post(URL, PINNED, format="json").status_code == 201
        again = staff_client.post(URL, {**PINNED, "name": "Other"}, format="json")
        assert again.status_code == 400
        assert "slug" in again.json()
        same_name = staff_client.post(URL, {**PINNED, "slug": "other"}, format="json")
        assert same_name.status_code == 400
        assert "name" in same_name.json()

    def test_derived_slug_clash(self, staff_client, skill):
        staff_client.post(URL, {**PINNED, "slug": "my-flow"}, format="json")
        response = staff_client.post(
            URL, {**PINNED, "name": "My Flow", "slug": None} | {}, format="json"
        )
        assert response.status_code == 400
        assert "slug" in response.json()

    def test_malformed_json_is_400(self, staff_client, skill):
        response = staff_client.generic("POST", URL, b'{"name": ', content_type="application/json")
        assert response.status_code == 400


class TestReadUpdateDelete:
    def test_lookup_by_slug_update_and_delete(self, staff_client, skill):
        staff_client.post(URL, PINNED, format="json")
        detail = f"{URL}triage-prs/"
        assert staff_client.get(detail).json()["name"] == "Triage opened PRs"
        patched = staff_client.patch(detail, {"enabled": False, "priority": 5}, format="json")
        assert patched.status_code == 200
        assert (patched.json()["enabled"], patched.json()["priority"]) == (False, 5)
        bad = staff_client.patch(detail, {"conditions": ["ok", "x ||"]}, format="json")
        assert bad.status_code == 400
        assert list(bad.json()["conditions"]) == ["1"]
        assert staff_client.patch(detail, {"slug": "renamed"}, format="json").status_code == 400
        assert staff_client.delete(detail).status_code == 204
        assert staff_client.get(detail).status_code == 404

    def test_list_in_match_order_with_filters(self, staff_client, make_workflow):
        make_workflow("b", name="B", priority=1)
        make_workflow("a", name="A", priority=1, source="slack", event="*")
        make_workflow("c", name="C", priority=0, enabled=False)
        assert [w["slug"] for w in staff_client.get(URL).json()] == ["c", "a", "b"]
        assert [w["slug"] for w in staff_client.get(URL, {"source": "slack"}).json()] == ["a"]
        assert [w["slug"] for w in staff_client.get(URL, {"enabled": "false"}).json()] == ["c"]
        assert [w["slug"] for w in staff_client.get(URL, {"enabled": "true"}).json()] == ["a", "b"]
        assert len(staff_client.get(URL, {"enabled": ""}).json()) == 3
        # The other spellings django-filter reads are read alike.
        assert [w["slug"] for w in staff_client.get(URL, {"enabled": "0"}).json()] == ["c"]
        assert [w["slug"] for w in staff_client.get(URL, {"enabled": "True"}).json()] == ["a", "b"]
        assert [w["slug"] for w in staff_client.get(URL, {"skill": "triage"}).json()] == [
            "c",
            "a",
            "b",
        ]

    @pytest.mark.parametrize("value", ["maybe", "yes", "FALSE", "2", "true "])
    def test_a_boolean_filter_it_cannot_read_is_400(self, staff_client, make_workflow, value):
        make_workflow("a")
        response = staff_client.get(URL, {"enabled": value})
        assert response.status_code == 400
        assert list(response.json()) == ["enabled"]

    def test_list_query_budget(self, staff_client, make_workflow, django_assert_max_num_queries):
        for index in range(5):
            make_workflow(f"w{index}")
        with django_assert_max_num_queries(5):
            assert len(staff_client.get(URL).json()) == 5


class TestScopes:
    def test_read_and_write_scopes(self, oauth_client, skill):
        reader = oauth_client("workflows:read")
        writer = oauth_client("workflows:write")
        assert reader.post(URL, PINNED, format="json").status_code == 403
        assert writer.post(URL, PINNED, format="json").status_code == 201
        assert reader.get(URL).status_code == 200
        assert oauth_client("tasks:read").get(URL).status_code == 403
        assert reader.post(f"{URL}triage-prs/dry-run/", PR_EVENT, format="json").status_code == 403
        assert writer.post(f"{URL}triage-prs/dry-run/", PR_EVENT, format="json").status_code == 200

    def test_operator_permissions(self, token_client, make_workflow):
        make_workflow("triage-prs")
        viewer = token_client("viewer", perms=("kohakku_controller.view_workflow",))
        assert viewer.get(URL).status_code == 200
        # A dry-run changes nothing: the view permission is enough.
        assert viewer.post(f"{URL}triage-prs/dry-run/", PR_EVENT, format="json").status_code == 200
        assert (
            viewer.patch(f"{URL}triage-prs/", {"enabled": False}, format="json").status_code == 403
        )
        assert token_client("nobody").get(URL).status_code == 403

    def test_anonymous(self, api_client, db):
        assert api_client.get(URL).status_code == 401


class TestDryRun:
    @pytest.fixture
    def triage(self, staff_client, skill):
        assert staff_client.post(URL, PINNED, format="json").status_code == 201

    def test_match_renders_the_input(self, staff_client, triage):
        data = staff_client.post(f"{URL}triage-prs/dry-run/", PR_EVENT, format="json").json()
        assert data["matched"] is True
        assert data["reason"] == "matched"
        assert data["input"] == {"repo": "org/repo", "number": 9}
        assert [c["truthy"] for c in data["conditions"]] == [True, True]
        assert data["failed_condition"] is None

    def test_source_and_event_default_to_the_workflows(self, staff_client, triage):
        data = staff_client.post(
            f"{URL}triage-prs/dry-run/", {"payload": PR_EVENT["payload"]}, format="json"
        ).json()
        assert data["matched"] is True

    def test_failed_condition_is_named_with_its_value(self, staff_client, triage):
        event = {**PR_EVENT, "payload": {**PR_EVENT["payload"], "action": "closed"}}
        data = staff_client.post(f"{URL}triage-prs/dry-run/", event, format="json").json()
        assert data["matched"] is False
        assert data["failed_condition"]["index"] == 0
        assert data["failed_condition"]["value"] is False
        assert "condition 0" in data["reason"]
        assert data["input"] is None

    def test_condition_error_is_reported(self, staff_client, triage):
        event = {**PR_EVENT, "payload": {"action": "opened"}}
        data = staff_client.post(f"{URL}triage-prs/dry-run/", event, format="json").json()
        assert data["failed_condition"]["index"] == 1
        assert "starts_with" in data["failed_condition"]["error"]

    def test_template_error_is_reported(self, staff_client, make_workflow):
        make_workflow("scalar", input_template="payload.number")
        data = staff_client.post(f"{URL}scalar/dry-run/", PR_EVENT, format="json").json()
        assert data["matched"] is True
        assert data["input"] is None
        assert "must yield a JSON object" in data["input_error"]

    @pytest.mark.parametrize(
        ("template", "payload"),
        [
            ("{x: to_number(payload.x)}", {"x": "inf"}),
            ("{x: sum(payload.a)}", {"a": [1e308, 1e308]}),
        ],
    )
    def test_input_no_task_could_hold_is_an_input_error(
        self, staff_client, make_workflow, template, payload
    ):
        make_workflow("calc", input_template=template)
        event = {"payload": payload}
        response = staff_client.post(f"{URL}calc/dry-run/", event, format="json")
        assert response.status_code == 200
        data = response.json()
        assert (data["matched"], data["input"]) == (True, None)
        assert data["input_error"].startswith("The task input cannot be stored")

    @pytest.mark.parametrize(
        ("condition", "payload", "truthy"),
        [
            ("to_number(payload.x)", {"x": "nan"}, True),
            ("ceil(to_number(payload.x)) > `0`", {"x": "1e999"}, False),
        ],
    )
    def test_condition_values_json_cannot_hold(
        self, staff_client, make_workflow, condition, payload, truthy
    ):
        make_workflow("calc", conditions=[condition])
        response = staff_client.post(f"{URL}calc/dry-run/", {"payload": payload}, format="json")
        assert response.status_code == 200
        result = response.json()["conditions"][0]
        assert (result["truthy"], result["value"]) == (truthy, None)
        assert "JSON cannot hold" in result["reason"] or result["error"]

    def test_event_mismatch(self, staff_client, triage):
        data = staff_client.post(
            f"{URL}triage-prs/dry-run/", {**PR_EVENT, "event": "push"}, format="json"
        ).json()
        assert (data["matched"], data["event_matched"], data["reason"]) == (
            False,
            False,
            "event does not match",
        )

    def test_headers_are_visible_but_redacted(self, staff_client, make_workflow):
        make_workflow("hdr", input_template='{d: headers."x-github-delivery", s: headers.cookie}')
        event = {**PR_EVENT, "headers": {"X-GitHub-Delivery": "abc", "Cookie": "secret"}}
        data = staff_client.post(f"{URL}hdr/dry-run/", event, format="json").json()
        assert data["input"] == {"d": "abc", "s": "[redacted]"}

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"source": "github", "event": "x"}, "payload"),
            ({**PR_EVENT, "headers": ["x"]}, "headers"),
            ({**PR_EVENT, "source": "gitlab"}, "source"),
        ],
    )
    def test_bad_sample_is_400(self, staff_client, triage, body, field):
        response = staff_client.post(f"{URL}triage-prs/dry-run/", body, format="json")
        assert response.status_code == 400
        assert field in response.json()

    def test_wildcard_workflow_needs_an_event(self, staff_client, make_workflow):
        make_workflow("any", event="*")
        response = staff_client.post(f"{URL}any/dry-run/", {"payload": {}}, format="json")
        assert response.status_code == 400
        assert "event" in response.json()

    def test_collection_dry_run_finds_the_match(self, staff_client, make_workflow):
        make_workflow("first", priority=1, conditions=["payload.action == 'closed'"])
        make_workflow("second", priority=2, input_template="{n: payload.number}")
        make_workflow("third", priority=3)
        data = staff_client.post(f"{URL}dry-run/", PR_EVENT, format="json").json()
        assert data["matched"] is True
        assert data["routed_to"] == "second"
        assert data["input"] == {"n": 9}
        assert [e["workflow"] for e in data["evaluated"]] == ["first", "second"]
        assert data["evaluated"][0]["failed_condition"]["index"] == 0

    def test_collection_dry_run_without_match(self, staff_client, make_workflow):
        make_workflow("first", conditions=["payload.action == 'closed'"])
        data = staff_client.post(
            f"{URL}dry-run/", {**PR_EVENT, "event": "issues"}, format="json"
        ).json()
        assert (data["matched"], data["routed_to"], data["evaluated"]) == (False, None, [])

    def test_collection_dry_run_needs_source_and_event(self, staff_client, db):
        response = staff_client.post(f"{URL}dry-run/", {"payload": {}}, format="json")
        assert response.status_code == 400
        assert set(response.json()) == {"source", "event"}


def test_workflow_timeout_follows_the_task_timeout_setting(staff_client, make_workflow, settings):
    make_workflow()
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "TASK_MAX_TIMEOUT_SECONDS": 30 * 24 * 3600,
    }
    month = staff_client.patch(
        f"{URL}triage-prs/", {"timeout_seconds": 30 * 24 * 3600}, format="json"
    )
    assert month.status_code == 200, month.json()
    over = staff_client.patch(
        f"{URL}triage-prs/", {"timeout_seconds": 30 * 24 * 3600 + 1}, format="json"
    )
    assert over.status_code == 400
    assert "2592000" in over.json()["timeout_seconds"][0]
