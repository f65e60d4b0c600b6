"""Listing, reading, yanking and restoring versions."""

from __future__ import annotations

import pytest

from kohakku_controller.skills.models import SkillVersion

from .zips import package


@pytest.fixture
def versions(skill, upload):
    for index in range(3):
        upload(skill.slug, package(skill.slug, extra={"n": str(index)}))
    return skill


def test_list_versions_newest_first(versions, staff_client):
    response = staff_client.get(f"/api/v1/skills/{versions.slug}/versions/")
    assert response.status_code == 200
    body = response.json()
    assert [item["version_number"] for item in body] == [3, 2, 1]
    assert body[0]["skill"] == versions.slug
    assert body[0]["entrypoint"] == "python run.py"
    assert body[0]["uploaded_by"] == "staff"
    assert response["X-Total-Count"] == "3"


def test_the_uploader_is_named_by_the_user_models_username_field(
    versions, staff_client, monkeypatch
):
    # A host's custom user model may log in by email and have no ``username`` at all.
    user = staff_client.user
    type(user).objects.filter(pk=user.pk).update(email="staff@example.com")
    monkeypatch.setattr(type(user), "USERNAME_FIELD", "email")
    response = staff_client.get(f"/api/v1/skills/{versions.slug}/versions/1/")
    assert response.status_code == 200
    assert response.json()["uploaded_by"] == "staff@example.com"
    SkillVersion.objects.filter(skill=versions).update(uploaded_by=None)  # an OAuth2 client's
    assert (
        staff_client.get(f"/api/v1/skills/{versions.slug}/versions/1/").json()["uploaded_by"]
        is None
    )


def test_versions_list_query_budget(versions, staff_client, django_assert_num_queries):
    # token, skill, count, page (with skill and uploader joined)
    with django_assert_num_queries(4):
        staff_client.get(f"/api/v1/skills/{versions.slug}/versions/")


def test_retrieve_version(versions, staff_client):
    response = staff_client.get(f"/api/v1/skills/{versions.slug}/versions/2/")
    assert response.status_code == 200
    assert response.json()["version_number"] == 2
    assert staff_client.get(f"/api/v1/skills/{versions.slug}/versions/9/").status_code == 404
    assert staff_client.get("/api/v1/skills/nope/versions/").status_code == 404
    assert staff_client.get(f"/api/v1/skills/{versions.slug}/versions/x/").status_code == 404


def test_yank_hides_from_latest_but_pinned_download_works(versions, staff_client):
    url = f"/api/v1/skills/{versions.slug}/versions/3/yank/"
    response = staff_client.post(url, {"reason": "leaks tokens"}, format="json")
    assert response.status_code == 200
    assert response.json()["yanked"] is True
    assert response.json()["yank_reason"] == "leaks tokens"

    latest = staff_client.get(f"/api/v1/skills/{versions.slug}/download/")
    assert latest["Content-Disposition"].endswith(f"{versions.slug}-2.zip")
    pinned = staff_client.get(f"/api/v1/skills/{versions.slug}/download/?version=3")
    assert pinned.status_code == 200
    assert staff_client.get(f"/api/v1/skills/{versions.slug}/").json()["latest_version"] == 2

    again = staff_client.post(url, {"reason": "again"}, format="json")
    assert again.status_code == 409


def test_unyank_restores(versions, staff_client):
    base = f"/api/v1/skills/{versions.slug}/versions/3"
    staff_client.post(f"{base}/yank/", {"reason": "oops"}, format="json")
    response = staff_client.post(f"{base}/unyank/", {"reason": "false alarm"}, format="json")
    assert response.status_code == 200
    assert response.json()["yanked"] is False
    assert response.json()["unyank_reason"] == "false alarm"
    assert staff_client.post(f"{base}/unyank/", {"reason": "x"}, format="json").status_code == 409


@pytest.mark.parametrize("payload", [{}, {"reason": ""}, {"reason": "x" * 501}, {"reason": ["a"]}])
def test_yank_needs_a_reason(versions, staff_client, payload):
    response = staff_client.post(
        f"/api/v1/skills/{versions.slug}/versions/1/yank/", payload, format="json"
    )
    assert response.status_code == 400
    assert "reason" in response.json()
    assert not SkillVersion.objects.get(skill=versions, version_number=1).yanked


def test_yank_needs_write_scope(versions, oauth_client):
    reader = oauth_client("skills:read")
    url = f"/api/v1/skills/{versions.slug}/versions/1/yank/"
    assert reader.post(url, {"reason": "x"}, format="json").status_code == 403
    writer = oauth_client("skills:write")
    assert writer.post(url, {"reason": "x"}, format="json").status_code == 200


def test_all_yanked_means_no_latest(versions, staff_client):
    for number in (1, 2, 3):
        staff_client.post(
            f"/api/v1/skills/{versions.slug}/versions/{number}/yank/",
            {"reason": "x"},
            format="json",
        )
    assert staff_client.get(f"/api/v1/skills/{versions.slug}/download/").status_code == 404
