"""The kohakku_prune_blobs command: unreferenced, old blobs go; referenced ones never do."""

from __future__ import annotations

import io

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from kohakku_controller.storage import get_storage

from .conftest import stored_names
from .zips import package


@pytest.fixture
def referenced_and_orphan(isolated_storage, skill, upload):
    referenced = upload(skill.slug, package(skill.slug)).json()["storage_ref"]
    orphan = f"skills/{skill.slug}/{'0' * 64}.zip"
    get_storage().save(orphan, ContentFile(b"left behind by a rolled-back upload"))
    return skill, referenced, orphan


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("kohakku_prune_blobs", *args, stdout=out)
    return out.getvalue()


def test_prune_deletes_only_unreferenced_blobs_past_the_grace(referenced_and_orphan):
    skill, referenced, orphan = referenced_and_orphan

    output = _run("--grace-seconds", "0")

    assert f"deleted {orphan}" in output
    assert stored_names(skill.slug) == [referenced.rsplit("/", 1)[1]]
    assert get_storage().exists(referenced)


def test_prune_keeps_young_blobs(referenced_and_orphan):
    _skill, _, orphan = referenced_and_orphan
    output = _run()  # default grace: a day
    assert output.strip() == ("deleted 0 blob(s); kept 1 referenced and 1 within the grace period.")
    assert get_storage().exists(orphan)


def test_prune_dry_run_deletes_nothing(referenced_and_orphan):
    _skill, referenced, orphan = referenced_and_orphan
    output = _run("--grace-seconds", "0", "--dry-run")
    assert f"would delete {orphan}" in output
    assert get_storage().exists(orphan)
    assert get_storage().exists(referenced)


def test_prune_with_nothing_stored(db, isolated_storage):
    assert "deleted 0 blob(s)" in _run("--grace-seconds", "0")


def test_prune_refuses_negative_grace(db):
    with pytest.raises(CommandError, match="--grace-seconds: must be between 0"):
        call_command("kohakku_prune_blobs", "--grace-seconds", "-1", stderr=io.StringIO())


def test_prune_checks_the_grace_setting(db, settings):
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "SKILL_BLOB_GRACE_SECONDS": 10**11,
    }
    with pytest.raises(CommandError, match="SKILL_BLOB_GRACE_SECONDS must be between"):
        call_command("kohakku_prune_blobs", stdout=io.StringIO())


def test_prune_accepts_the_longest_grace(db, isolated_storage):
    assert "deleted 0 blob(s)" in _run("--grace-seconds", "3153600000")


def test_a_blob_deleted_by_a_concurrent_run_is_skipped(referenced_and_orphan, monkeypatch):
    skill, referenced, orphan = referenced_and_orphan
    storage = get_storage()
    read_time = storage.get_modified_time

    def deleted_meanwhile(name):
        if name == orphan:
            storage.delete(name)  # another run got there between listing and this check
        return read_time(name)

    monkeypatch.setattr(storage, "get_modified_time", deleted_meanwhile)
    output = _run("--grace-seconds", "0")
    assert output.strip() == "deleted 0 blob(s); kept 1 referenced and 0 within the grace period."
    assert stored_names(skill.slug) == [referenced.rsplit("/", 1)[1]]
