"""Concurrent uploads to one skill, on PostgreSQL with real threads and connections."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from kohakku_controller.skills import services
from kohakku_controller.skills.models import Skill, SkillVersion

from .conftest import stored_names, upload_file
from .zips import package

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
THREADS = 6


def _race(skill: Skill, payloads: list[bytes]) -> list[Any]:
    barrier = threading.Barrier(len(payloads))
    results: list[Any] = [None] * len(payloads)

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = services.upload_package(
                Skill.objects.get(pk=skill.pk), upload_file(payloads[index])
            )
        except Exception as exc:  # reported through the results
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


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
