"""The admin pages, and the services used outside HTTP."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.files import File
from django.test import Client, override_settings

from kohakku_controller.exceptions import PayloadTooLarge
from kohakku_controller.skills import services
from kohakku_controller.skills.models import SkillVersion

from .conftest import stored_names
from .zips import package


@pytest.fixture
def admin_client(db):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_admin_pages_render(admin_client, skill, upload):
    upload(skill.slug)
    version = SkillVersion.objects.get(skill=skill)
    for url in (
        "/admin/kohakku_controller/skill/",
        f"/admin/kohakku_controller/skill/{skill.pk}/change/",
        "/admin/kohakku_controller/skillversion/",
        f"/admin/kohakku_controller/skillversion/{version.pk}/change/",
    ):
        assert admin_client.get(url).status_code == 200, url


def test_admin_yank_action(admin_client, skill, upload):
    upload(skill.slug)
    version = SkillVersion.objects.get(skill=skill)
    response = admin_client.post(
        "/admin/kohakku_controller/skillversion/",
        {"action": "yank_versions", "_selected_action": [version.pk]},
    )
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.yanked
    assert "admin" in version.yank_reason


def test_upload_package_from_a_plain_file(skill):
    result = services.upload_package(skill, File(io.BytesIO(package(skill.slug)), name="p.zip"))
    assert result.version.version_number == 1
    assert not result.deduplicated
    assert stored_names(skill.slug) == [f"{result.version.content_hash}.zip"]


def test_upload_package_from_a_plain_file_over_the_limit(skill):
    limit = override_settings(KOHAKKU_CONTROLLER={"SKILL_PACKAGE_MAX_BYTES": 100})
    with limit, pytest.raises(PayloadTooLarge):
        services.upload_package(skill, File(io.BytesIO(package(skill.slug)), name="p.zip"))
    assert stored_names(skill.slug) == []
