"""Concurrent uploads to one skill, on PostgreSQL with real threads and connections."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from kohakku_controller.skills import services
from kohakku_controller.skills.models import Skill, SkillVersion

from ..concurrency import run_together
from .conftest import stored_names, upload_file
from .zips import package

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
THREADS = 6


def _race(skill: Skill, payloads: list[bytes]) -> list[Any]:
    return run_together(
        len(payloads),
        lambda index: services.upload_package(
            Skill.objects.get(pk=skill.pk), upload_file(payloads[index])
        ),
    )


def _api_posts(staff_client: Any, url: str, body: dict[str, Any]) -> list[tuple[int, Any]]:
    """``THREADS`` staff POSTs of ``body`` to ``url`` at once: (status, JSON) of each."""
    authorization = staff_client._credentials["HTTP_AUTHORIZATION"]

    def post(_index: int) -> tuple[int, Any]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=authorization)
        response = client.post(url, body, format="json")
        return response.status_code, response.json()

    results = run_together(THREADS, post)
    assert all(isinstance(result, tuple) for result in results), results
    return results


def _one_winner(results: list[tuple[int, Any]], winner: int, field: str) -> None:
    assert sorted(code for code, _ in results) == [winner] + [409] * (THREADS - 1), results
    assert all(field in body for code, body in results if code == 409), results


def test_racing_uploads_of_different_bytes_get_distinct_numbers():
    skill = services.create_skill(name="race-distinct")
    payloads = [package(skill.slug, extra={"n": str(i)}) for i in range(THREADS)]

    results = _race(skill, payloads)

    assert all(isinstance(r, services.UploadResult) for r in results), results
    numbers = sorted(r.version.version_number for r in results)
    assert numbers == list(range(1, THREADS + 1))
    skill.refresh_from_db()
    assert skill.last_version_number == THREADS
    assert SkillVersion.objects.filter(skill=skill).count() == THREADS
    assert len(stored_names(skill.slug)) == THREADS


def test_racing_uploads_of_the_same_bytes_make_one_version():
    skill = services.create_skill(name="race-same")
    data = package(skill.slug)

    results = _race(skill, [data] * THREADS)

    assert all(isinstance(r, services.UploadResult) for r in results), results
    assert {r.version.version_number for r in results} == {1}
    assert sum(not r.deduplicated for r in results) == 1
    assert SkillVersion.objects.filter(skill=skill).count() == 1
    skill.refresh_from_db()
    assert skill.last_version_number == 1
    # Only the content-addressed blob remains; duplicates written in the race were removed.
    assert stored_names(skill.slug) == [f"{results[0].version.content_hash}.zip"]


def test_racing_creations_of_one_name_make_one_skill(staff_client):
    results = _api_posts(staff_client, "/api/v1/skills/", {"name": "Race Name"})
    _one_winner(results, 201, "name")
    assert Skill.objects.filter(slug="race-name").count() == 1


def test_racing_archives_and_restores_each_apply_once(staff_client):
    skill = services.create_skill(name="race-archive")
    for action, archived in (("archive", True), ("unarchive", False)):
        results = _api_posts(staff_client, f"/api/v1/skills/{skill.slug}/{action}/", {})
        _one_winner(results, 200, "archived")
        assert Skill.objects.get(pk=skill.pk).archived is archived


def test_racing_yanks_and_restores_each_apply_once(staff_client):
    skill = services.create_skill(name="race-yank")
    services.upload_package(skill, upload_file(package(skill.slug)))
    url = f"/api/v1/skills/{skill.slug}/versions/1"
    for action, yanked in (("yank", True), ("unyank", False)):
        results = _api_posts(staff_client, f"{url}/{action}/", {"reason": action})
        _one_winner(results, 200, "yanked")
        assert SkillVersion.objects.get(skill=skill).yanked is yanked
