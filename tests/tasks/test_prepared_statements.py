"""The prepared statements of the hot paths read and write exactly what the ORM would."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Model
from django.utils import timezone
from oauth2_provider.models import get_access_token_model
from oauth2_provider.oauth2_validators import OAuth2Validator

from kohakku_controller.db import JoinedLookup, insert_row, update_and_log, update_rows
from kohakku_controller.oauth import create_or_reset_client
from kohakku_controller.oauth_validators import ControllerOAuth2Validator
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.services import create_task

pytestmark = pytest.mark.django_db


def field_values(instance: Model, *, skip: tuple[str, ...] = ()) -> dict[str, object]:
    return {
        field.attname: getattr(instance, field.attname)
        for field in instance._meta.fields
        if field.attname not in skip
    }


def test_task_with_dispatcher_matches_the_orm(skill_version, dispatch, django_assert_num_queries):
    task, _token = dispatch(create_task(skill="code-review", input={"diff": "x" * 50}))
    lookup = JoinedLookup(Task, "guid", related=["dispatcher"], defer=["input"])
    with django_assert_num_queries(1):
        found = lookup.get(str(task.guid))
        dispatcher = found.dispatcher
    expected = Task.objects.select_related("dispatcher").get(pk=task.pk)
    assert found.get_deferred_fields() == {"input"}
    assert field_values(found, skip=("input",)) == field_values(expected, skip=("input",))
    assert field_values(dispatcher) == field_values(expected.dispatcher)
    with django_assert_num_queries(1):  # a deferred field is loaded on first use, as usual
        assert found.input == {"diff": "x" * 50}


def test_fields_of_related_rows_can_be_deferred(skill_version, dispatch, django_assert_num_queries):
    task, _token = dispatch(create_task(skill="code-review"))
    lookup = JoinedLookup(Task, "guid", related=["dispatcher"], defer=["dispatcher__labels"])
    with django_assert_num_queries(1):
        found = lookup.get(task.guid)
        assert found.dispatcher.get_deferred_fields() == {"labels"}
        assert found.dispatcher.name == task.dispatcher.name
    with django_assert_num_queries(1):
        assert found.dispatcher.labels == task.dispatcher.labels


def test_missing_rows_and_empty_relations(skill_version, django_assert_num_queries):
    lookup = JoinedLookup(Task, "guid", related=["dispatcher"])
    assert lookup.get(uuid.uuid4()) is None
    queued = create_task(skill="code-review")
    with django_assert_num_queries(1):
        found = lookup.get(queued.guid)
        assert found.dispatcher is None  # no join match, and no extra query for it
    with pytest.raises(ValidationError):
        lookup.get("not-a-uuid")


@pytest.fixture
def access_token():
    def make(*, user=None, expired=False):
        client = create_or_reset_client(f"client-{secrets.token_hex(3)}", ["tasks:read"])
        return get_access_token_model().objects.create(
            application=client.application,
            user=user,
            token=secrets.token_urlsafe(24),
            expires=timezone.now() + timedelta(hours=-1 if expired else 1),
            scope="tasks:read",
        )

    return make


@pytest.mark.parametrize("with_user", [False, True])
def test_validator_loads_what_the_stock_validator_loads(
    access_token, with_user, django_assert_num_queries
):
    user = get_user_model().objects.create_user("someone") if with_user else None
    token = access_token(user=user)
    with django_assert_num_queries(1):
        loaded = ControllerOAuth2Validator()._load_access_token(token.token)
        application, owner = loaded.application, loaded.user
    stock = OAuth2Validator()._load_access_token(token.token)
    assert field_values(loaded) == field_values(stock)
    assert field_values(application) == field_values(stock.application)
    assert (owner and field_values(owner)) == (stock.user and field_values(stock.user))
    assert ControllerOAuth2Validator()._load_access_token("no-such-token") is None


def test_validator_checks_expiry_scope_and_revocation(access_token, api_client):
    live, expired = access_token(), access_token(expired=True)
    for token, status in ((live, 200), (expired, 401)):
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.token}")
        assert api_client.get("/api/v1/tasks/").status_code == status
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {live.token}")
    assert api_client.get("/api/v1/skills/").status_code == 403  # no skills:read scope
    live.delete()  # revoked: refused on the very next request
    assert api_client.get("/api/v1/tasks/").status_code == 401


def test_the_example_project_uses_the_controller_validator(settings):
    assert (
        settings.OAUTH2_PROVIDER["OAUTH2_VALIDATOR_CLASS"]
        == "kohakku_controller.oauth_validators.ControllerOAuth2Validator"
    )


def test_update_rows_matches_values_lists_and_nulls(skill_version, django_assert_num_queries):
    first, second, third = (create_task(skill="code-review") for _ in range(3))
    Task.objects.filter(pk=third.pk).update(status="running")
    now = timezone.now()
    with django_assert_num_queries(1):
        count = update_rows(
            Task,
            {"status": ("queued", "dispatched"), "dispatcher": None, "attempt": 0},
            {"status_reason": "held", "updated_at": now, "labels": {"pool": "a"}},
        )
    assert count == 2
    held = Task.objects.filter(status_reason="held")
    assert set(held.values_list("pk", flat=True)) == {first.pk, second.pk}
    assert all(task.labels == {"pool": "a"} and task.updated_at == now for task in held)
    assert update_rows(Task, {"pk": first.pk, "status": ()}, {"status_reason": "x"}) == 0
    assert update_rows(Task, {"pk": third.pk}, {"status_reason": "one"}) == 1
    assert Task.objects.get(pk=third.pk).status_reason == "one"


def test_insert_row_writes_what_save_writes(skill_version, django_assert_num_queries):
    task = create_task(skill="code-review")
    made = {
        "kind": "note",
        "reason": "because",
        "data": {"nested": [1, "two", None]},
        "dispatcher_guid": uuid.uuid4(),
        "created_at": timezone.now(),
    }
    inserted, saved = TaskEvent(task=task, **made), TaskEvent(task=task, **made)
    with django_assert_num_queries(1):
        insert_row(inserted)
    saved.save()
    assert inserted.pk is not None and not inserted._state.adding
    by_insert, by_save = TaskEvent.objects.get(pk=inserted.pk), TaskEvent.objects.get(pk=saved.pk)
    assert field_values(by_insert, skip=("id",)) == field_values(by_save, skip=("id",))


@pytest.mark.postgres
def test_update_and_log_writes_the_event_only_for_a_changed_row(
    skill_version, django_assert_num_queries
):
    task = create_task(skill="code-review")
    now = timezone.now()
    event = TaskEvent(task=task, kind="held", reason="r", data={"a": [1]}, created_at=now)
    where = {"pk": task.pk, "status": ("queued",)}
    with django_assert_num_queries(1):
        changed = update_and_log(Task, where, {"status_reason": "held"}, event, link="task")
    assert changed == 1
    logged = TaskEvent.objects.get(task=task, kind="held")
    assert (logged.reason, logged.data, logged.created_at) == ("r", {"a": [1]}, now)
    assert logged.dispatcher_guid is None  # a typed NULL
    assert Task.objects.get(pk=task.pk).status_reason == "held"
    missed = {"pk": task.pk, "status": ("running",)}
    assert update_and_log(Task, missed, {"status_reason": "x"}, event, link="task") == 0
    assert TaskEvent.objects.filter(task=task, kind="held").count() == 1
