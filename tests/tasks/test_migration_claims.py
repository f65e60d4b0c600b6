"""Migrations 0013 and 0014 (``Task.claims``) on a database that already holds tasks."""

from __future__ import annotations

import pytest

from ..migrating import latest, migrate

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("kohakku_controller", "0012_list_indexes")]
AFTER = [("kohakku_controller", "0014_count_task_claims")]


@pytest.fixture
def old_apps():
    newest = latest()
    try:
        yield migrate(BEFORE)
    finally:
        migrate(newest)


def make_task(apps, version, status, attempt):
    return apps.get_model("kohakku_controller", "Task").objects.create(
        skill_version=version, timeout_seconds=60, max_attempts=3, status=status, attempt=attempt
    )


def test_unfinished_tasks_count_a_claim_more_than_their_attempts(old_apps):
    skill = old_apps.get_model("kohakku_controller", "Skill").objects.create(
        name="Triage", slug="triage"
    )
    version = old_apps.get_model("kohakku_controller", "SkillVersion").objects.create(
        skill=skill, version_number=1, content_hash="a" * 64, size=1
    )
    refused_before = make_task(old_apps, version, "queued", 0)
    running = make_task(old_apps, version, "running", 2)
    done = make_task(old_apps, version, "completed", 1)

    new_apps = migrate(AFTER)
    claims = dict(
        new_apps.get_model("kohakku_controller", "Task").objects.values_list("pk", "claims")
    )
    # The queued task's next claim (attempt 1) is told a key of its own: a dispatcher that
    # refused its push before the upgrade may hold a URL for output.json.
    assert claims == {refused_before.pk: 1, running.pk: 3, done.pk: 0}

    # Code from before the column (a rolling deploy) still creates tasks.
    late = make_task(old_apps, version, "queued", 0)
    assert new_apps.get_model("kohakku_controller", "Task").objects.get(pk=late.pk).claims == 0
