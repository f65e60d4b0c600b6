"""Two requests that read the same skill or version, then both write: nothing is lost.

Each test reads first, lets another request change the row, then writes from the stale
read, which is what a race does on any database.
"""

from __future__ import annotations

import pytest
from rest_framework.exceptions import NotFound

from kohakku_controller.admin_forms import stale_message
from kohakku_controller.exceptions import Conflict
from kohakku_controller.skills import admin as skills_admin
from kohakku_controller.skills import services
from kohakku_controller.skills.models import Skill, SkillVersion

from ..admin_pages import messages_of, opened_version
from .conftest import stored_names, upload_file
from .zips import package

pytestmark = pytest.mark.django_db

ADMIN = "/admin/kohakku_controller"
NO_INLINE_FORMS = {"versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0"}


def _upload(skill: Skill, n: int) -> services.UploadResult:
    data = package(skill.slug, extra={"n": str(n)})
    return services.upload_package(Skill.objects.get(pk=skill.pk), upload_file(data))


def test_a_stale_yank_or_archive_is_refused_and_the_first_kept(skill):
    _upload(skill, 1)
    first, second = (SkillVersion.objects.get(skill=skill) for _ in range(2))
    services.set_version_yanked(first, True, reason="broken")
    with pytest.raises(Conflict):
        services.set_version_yanked(second, True, reason="also broken")
    assert SkillVersion.objects.get(skill=skill).yank_reason == "broken"

    first, second = (Skill.objects.get(pk=skill.pk) for _ in range(2))
    services.set_skill_archived(first, True)
    with pytest.raises(Conflict):
        services.set_skill_archived(second, True)
    assert Skill.objects.get(pk=skill.pk).archived


def test_an_admin_change_keeps_a_version_number_issued_since_it_read_the_skill(
    admin_browser, skill, monkeypatch
):
    _upload(skill, 1)
    url = f"{ADMIN}/skill/{skill.pk}/change/"
    opened = opened_version(admin_browser, url)
    stale = Skill.objects.get(pk=skill.pk)  # the admin's read when the form is posted
    _upload(skill, 2)  # an upload commits between that read and the admin's save
    monkeypatch.setattr(skills_admin.SkillAdmin, "get_object", lambda *args, **kwargs: stale)
    response = admin_browser.post(
        url, {"category": skill.category, "description": "edited", **NO_INLINE_FORMS, **opened}
    )
    # Refused: the page showed the skill before the upload; it opens again as it is now.
    assert (response.status_code, response["Location"]) == (302, url)
    assert messages_of(response) == [stale_message(skill)]
    monkeypatch.undo()
    stored = Skill.objects.get(pk=skill.pk)
    assert (stored.description, stored.last_version_number) == ("", 2)
    assert _upload(skill, 3).version.version_number == 3  # never a number already taken


def test_the_admin_yank_action_skips_a_version_yanked_by_another_request(
    admin_browser, skill, monkeypatch
):
    _upload(skill, 1)
    version = SkillVersion.objects.get(skill=skill)
    yank = skills_admin.set_version_yanked

    def yanked_by_another_request_first(stale, *args, **kwargs):
        services.set_version_yanked(
            SkillVersion.objects.get(pk=stale.pk), True, reason="from the API"
        )
        return yank(stale, *args, **kwargs)

    monkeypatch.setattr(skills_admin, "set_version_yanked", yanked_by_another_request_first)
    response = admin_browser.post(
        f"{ADMIN}/skillversion/",
        {"action": "yank_versions", "_selected_action": [version.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "0 version(s) updated." in [str(m) for m in response.context["messages"]]
    assert SkillVersion.objects.get(pk=version.pk).yank_reason == "from the API"


def test_a_change_or_upload_of_a_skill_deleted_since_it_was_read_is_404(skill):
    Skill.objects.filter(pk=skill.pk).delete()  # the admin deletes a skill without versions

    with pytest.raises(NotFound):
        services.update_skill(skill, description="edited")
    with pytest.raises(NotFound):
        services.upload_package(skill, upload_file(package(skill.slug)))

    assert stored_names(skill.slug) == []
