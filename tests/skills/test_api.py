"""The skills API: the seed's shapes, filters, changes, archiving and scopes."""

from __future__ import annotations

import pytest
from django.test import override_settings

from kohakku_controller.skills import services
from kohakku_controller.skills.models import Skill

SEED_LIST_KEYS = ["guid", "name", "slug", "category", "description"]


def test_seed_create_example_verbatim(staff_client):
    response = staff_client.post(
        "/api/v1/skills/",
        {"name": "My Skill", "category": "tool", "description": "What the skill does."},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "my-skill"
    assert body["name"] == "My Skill"
    assert body["category"] == "tool"
    assert body["description"] == "What the skill does."
    assert body["archived"] is False
    assert body["latest_version"] is None
    assert Skill.objects.get(slug="my-skill").guid.hex == body["guid"].replace("-", "")


def test_seed_list_shape_is_a_bare_array(staff_client, make_skill):
    make_skill("code-review", description="Reviews code for quality.")
    response = staff_client.get("/api/v1/skills/")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert list(body[0]) == SEED_LIST_KEYS
    assert body[0]["slug"] == "code-review"
    assert body[0]["description"] == "Reviews code for quality."
    assert 'rel="first"' in response["Link"]
    assert response["X-Total-Count"] == "1"


def test_list_paginates_through_link_header(staff_client, make_skill):
    for index in range(3):
        make_skill(f"skill-{index}")
    response = staff_client.get("/api/v1/skills/?page_size=2")
    assert [item["slug"] for item in response.json()] == ["skill-0", "skill-1"]
    assert 'rel="next"' in response["Link"]
    assert response["X-Total-Count"] == "3"


def test_list_query_budget(staff_client, make_skill, django_assert_num_queries):
    for index in range(5):
        make_skill(f"budget-{index}")
    # token lookup, count, page
    with django_assert_num_queries(3):
        response = staff_client.get("/api/v1/skills/")
    assert len(response.json()) == 5


def test_filters_by_category_and_search(staff_client, make_skill):
    make_skill("code-review", category="tool", description="Reviews pull requests.")
    make_skill("triage-bot", category="agent", description="Sorts issues.")
    make_skill("pr-summary", category="agent", description="Summarises pull requests.")

    by_category = staff_client.get("/api/v1/skills/?category=agent").json()
    assert [item["slug"] for item in by_category] == ["pr-summary", "triage-bot"]
    by_search = staff_client.get("/api/v1/skills/?search=pull").json()
    assert [item["slug"] for item in by_search] == ["code-review", "pr-summary"]
    both = staff_client.get("/api/v1/skills/?search=pull&category=agent").json()
    assert [item["slug"] for item in both] == ["pr-summary"]


def test_bad_filter_value_is_400(staff_client, db):
    response = staff_client.get("/api/v1/skills/?archived=maybe")
    assert response.status_code == 400
    assert "archived" in response.json()


def test_retrieve_by_slug(staff_client, make_skill):
    make_skill("code-review")
    response = staff_client.get("/api/v1/skills/code-review/")
    assert response.status_code == 200
    assert response.json()["slug"] == "code-review"
    assert staff_client.get("/api/v1/skills/nope/").status_code == 404


@pytest.mark.parametrize("name", ["My Skill", "my skill", "my-skill", "MY_SKILL"])
def test_duplicate_name_or_slug_is_409(staff_client, make_skill, name):
    make_skill("My Skill")
    response = staff_client.post("/api/v1/skills/", {"name": name}, format="json")
    assert response.status_code == 409
    assert "name" in response.json()
    assert Skill.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "category": "nonsense"}, "category"),
        ({"category": "tool"}, "name"),
        ({"name": "!!!"}, "name"),
        ({"name": "日本語"}, "name"),
        ({"name": ""}, "name"),
        ({"name": ["a"]}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "description": {"a": 1}}, "description"),
        ({"name": 12345}, "name"),
        ({"name": "ok", "description": 5}, "description"),
        ({"name": "ok", "category": True}, "category"),
    ],
)
def test_bad_create_is_400_naming_the_field(staff_client, db, payload, field):
    response = staff_client.post("/api/v1/skills/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Skill.objects.exists()


def test_malformed_json_is_400(staff_client, db):
    response = staff_client.post("/api/v1/skills/", b'{"name": ', content_type="application/json")
    assert response.status_code == 400


def test_categories_come_from_settings(staff_client, db):
    with override_settings(KOHAKKU_CONTROLLER={"SKILL_CATEGORIES": ["robot"]}):
        refused = staff_client.post(
            "/api/v1/skills/", {"name": "a", "category": "tool"}, format="json"
        )
        accepted = staff_client.post(
            "/api/v1/skills/", {"name": "b", "category": "robot"}, format="json"
        )
    assert refused.status_code == 400
    assert "robot" in refused.json()["category"][0]
    assert accepted.status_code == 201


def test_slug_is_derived_and_limited():
    from kohakku_controller.skills.services import slug_for_name

    assert slug_for_name("Code Review!") == "code-review"
    assert slug_for_name("a__b  -- c") == "a-b-c"
    assert len(slug_for_name("x" * 100)) == 64


def test_patch_description_and_category(staff_client, make_skill):
    make_skill("code-review")
    response = staff_client.patch(
        "/api/v1/skills/code-review/",
        {"description": "New words.", "category": "agent"},
        format="json",
    )
    assert response.status_code == 200
    skill = Skill.objects.get(slug="code-review")
    assert (skill.description, skill.category) == ("New words.", "agent")


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"name": "renamed"}, "name"), ({"slug": "x"}, "slug"), ({"category": "bad"}, "category")],
)
def test_patch_refuses_other_fields(staff_client, make_skill, payload, field):
    make_skill("code-review")
    response = staff_client.patch("/api/v1/skills/code-review/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Skill.objects.get(slug="code-review").name == "code-review"


def test_put_and_delete_are_not_allowed(staff_client, make_skill):
    make_skill("code-review")
    assert staff_client.put("/api/v1/skills/code-review/", {}, format="json").status_code == 405
    assert staff_client.delete("/api/v1/skills/code-review/").status_code == 405


def test_archive_hides_from_list_and_blocks_uploads(staff_client, make_skill, upload):
    make_skill("code-review")
    response = staff_client.post("/api/v1/skills/code-review/archive/")
    assert response.status_code == 200
    assert response.json()["archived"] is True
    assert staff_client.get("/api/v1/skills/").json() == []
    archived = staff_client.get("/api/v1/skills/?archived=true").json()
    assert [item["slug"] for item in archived] == ["code-review"]
    assert staff_client.post("/api/v1/skills/code-review/archive/").status_code == 409
    blocked = upload("code-review")
    assert blocked.status_code == 409
    restored = staff_client.post("/api/v1/skills/code-review/unarchive/")
    assert restored.json()["archived"] is False
    assert upload("code-review").status_code == 201


# --- scopes and permissions -------------------------------------------------------------------


def test_anonymous_is_401(api_client, db):
    assert api_client.get("/api/v1/skills/").status_code == 401


def test_read_scope_reads_but_cannot_write(oauth_client, make_skill, upload):
    make_skill("code-review")
    client = oauth_client("skills:read")
    assert client.get("/api/v1/skills/").status_code == 200
    assert client.get("/api/v1/skills/code-review/").status_code == 200
    assert client.get("/api/v1/skills/code-review/versions/").status_code == 200
    assert client.post("/api/v1/skills/", {"name": "x"}, format="json").status_code == 403
    assert upload("code-review", client=client).status_code == 403
    assert client.post("/api/v1/skills/code-review/archive/").status_code == 403


def test_write_scope_creates_and_uploads(oauth_client, db, upload):
    client = oauth_client("skills:write")
    assert client.post("/api/v1/skills/", {"name": "code-review"}, format="json").status_code == 201
    assert upload("code-review", client=client).status_code == 201


def test_other_scopes_are_refused(oauth_client, db):
    assert oauth_client("tasks:read").get("/api/v1/skills/").status_code == 403


def test_operator_needs_model_permissions(token_client, make_skill):
    make_skill("code-review")
    nobody = token_client("nobody")
    assert nobody.get("/api/v1/skills/").status_code == 403
    viewer = token_client("viewer", perms=("kohakku_controller.view_skill",))
    assert viewer.get("/api/v1/skills/").status_code == 200
    # allowed to read; the skill has no version yet
    assert viewer.get("/api/v1/skills/code-review/download/").status_code == 404
    assert viewer.post("/api/v1/skills/", {"name": "x"}, format="json").status_code == 403
    creator = token_client("creator", perms=("kohakku_controller.add_skill",))
    assert creator.post("/api/v1/skills/", {"name": "x"}, format="json").status_code == 201


def test_reading_versions_needs_view_skill_and_yanking_change_skillversion(
    token_client, skill, upload
):
    upload(skill.slug)
    versions = f"/api/v1/skills/{skill.slug}/versions/"
    viewer = token_client("viewer", perms=("kohakku_controller.view_skill",))
    assert viewer.get(versions).status_code == 200
    assert viewer.get(f"{versions}1/").json()["version_number"] == 1
    assert viewer.post(f"{versions}1/yank/", {"reason": "x"}, format="json").status_code == 403
    yanker = token_client(
        "yanker",
        perms=("kohakku_controller.view_skill", "kohakku_controller.change_skillversion"),
    )
    assert yanker.post(f"{versions}1/yank/", {"reason": "x"}, format="json").status_code == 200
    assert token_client("nobody").get(versions).status_code == 403


@pytest.mark.parametrize("query", ["", "?archived=", "?archived=false", "?archived=0"])
def test_archived_skills_are_left_out_by_default(staff_client, make_skill, query):
    make_skill("kept")
    services.set_skill_archived(make_skill("gone"), True)
    response = staff_client.get(f"/api/v1/skills/{query}")
    assert response.status_code == 200
    assert [item["slug"] for item in response.json()] == ["kept"]


def test_create_refuses_unknown_fields(staff_client, db):
    response = staff_client.post(
        "/api/v1/skills/", {"name": "My Skill", "slug": "mine", "owner": "me"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"slug": ["Unknown field."], "owner": ["Unknown field."]}
    assert not Skill.objects.exists()


def test_schema_documents_conflicts_and_download_errors(client, db):
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    paths = schema.json()["paths"]
    assert "409" in paths["/api/v1/skills/"]["post"]["responses"]
    download = paths["/api/v1/skills/{slug}/download/"]["get"]["responses"]
    assert {"200", "302", "304", "400", "404", "503"} <= set(download)


@pytest.mark.parametrize("reason", ["", "   ", "\n\t", "\u3000"])
def test_a_yank_needs_a_reason_that_is_not_blank(staff_client, skill, upload, reason):
    upload(skill.slug)
    url = f"/api/v1/skills/{skill.slug}/versions/1/yank/"
    response = staff_client.post(url, {"reason": reason}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()
    assert staff_client.get(f"/api/v1/skills/{skill.slug}/versions/1/").json()["yanked"] is False
