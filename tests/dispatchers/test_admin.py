"""The dispatcher admin: derived status, operator controls only, secrets never shown."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from kohakku_controller.dispatchers import services
from kohakku_controller.dispatchers.models import Dispatcher
from kohakku_controller.dispatchers.secrets import current_signing_secret

from ..admin_pages import opened_version

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/kohakku_controller/dispatcher/"


def test_changelist_shows_the_derived_status(admin_browser, register):
    register("alive")
    stale = register("stale", heartbeat_interval_seconds=10)
    Dispatcher.objects.filter(pk=stale.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    response = admin_browser.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<td class="field-status">online</td>' in html
    assert '<td class="field-status">offline</td>' in html
    offline = admin_browser.get(CHANGELIST, {"status": "offline"}).content.decode()
    assert "stale" in offline and ">alive<" not in offline


def test_change_page_never_shows_secrets(admin_browser, register):
    dispatcher = register()
    previous = current_signing_secret(dispatcher)
    current = services.rotate_signing_secret(dispatcher)
    dispatcher.refresh_from_db()
    html = admin_browser.get(f"{CHANGELIST}{dispatcher.pk}/change/").content.decode()
    assert "local-dev" in html
    for secret in (
        previous,
        current,
        dispatcher.signing_secret_encrypted,
        dispatcher.previous_signing_secret_encrypted,
    ):
        assert secret not in html
    assert 'name="signing_secret' not in html


def test_change_form_saves_only_operator_controls(admin_browser, register):
    dispatcher = register()
    url = f"{CHANGELIST}{dispatcher.pk}/change/"
    response = admin_browser.post(
        url,
        {
            "enabled": "on",
            "draining": "on",
            "capacity": "12",
            "name": "renamed",
            **opened_version(admin_browser, url),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    dispatcher.refresh_from_db()
    assert (dispatcher.name, dispatcher.draining, dispatcher.capacity) == ("local-dev", True, 12)


def test_actions_drain_and_disable(admin_browser, register):
    first, second = register("a"), register("b")
    admin_browser.post(
        CHANGELIST, {"action": "start_draining", "_selected_action": [first.pk, second.pk]}
    )
    assert set(Dispatcher.objects.values_list("draining", flat=True)) == {True}
    admin_browser.post(CHANGELIST, {"action": "disable", "_selected_action": [first.pk]})
    assert Dispatcher.objects.get(pk=first.pk).status() == "disabled"


def test_no_add_or_delete_in_the_admin(admin_browser, register):
    dispatcher = register()
    assert admin_browser.get(f"{CHANGELIST}add/").status_code == 403
    assert (
        admin_browser.post(f"{CHANGELIST}{dispatcher.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert Dispatcher.objects.filter(pk=dispatcher.pk).exists()


@pytest.mark.parametrize("capacity", ["0", "10001", "20000"])
def test_change_form_refuses_capacity_outside_the_api_bounds(admin_browser, register, capacity):
    dispatcher = register(capacity=4)
    response = admin_browser.post(
        f"{CHANGELIST}{dispatcher.pk}/change/", {"enabled": "on", "capacity": capacity}
    )
    assert response.status_code == 200
    assert "capacity" in response.context["adminform"].form.errors
    dispatcher.refresh_from_db()
    assert dispatcher.capacity == 4
