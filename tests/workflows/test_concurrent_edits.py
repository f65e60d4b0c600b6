"""Two edits of one workflow never mix: the later one is refused instead of undoing the first."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from kohakku_controller.exceptions import Conflict
from kohakku_controller.workflows.models import Workflow
from kohakku_controller.workflows.services import save_workflow

DETAIL = "/api/v1/workflows/triage-prs/"


@pytest.mark.django_db
def test_an_edit_of_a_stale_read_is_refused_and_the_first_edit_kept(make_workflow):
    make_workflow(enabled=True, priority=0)
    first_read = Workflow.objects.get(slug="triage-prs")
    second_read = Workflow.objects.get(slug="triage-prs")
    save_workflow(first_read, enabled=False)
    with pytest.raises(Conflict):
        save_workflow(second_read, priority=7)
    stored = Workflow.objects.get(slug="triage-prs")
    assert (stored.enabled, stored.priority) == (False, 0)
    save_workflow(stored, priority=7)  # a retry from a fresh read applies
    stored = Workflow.objects.get(slug="triage-prs")
    assert (stored.enabled, stored.priority) == (False, 7)


@pytest.mark.django_db
def test_an_edit_writes_only_its_own_fields(make_workflow):
    workflow = make_workflow(input_template="payload")
    Workflow.objects.filter(pk=workflow.pk).update(input_template="payload.repository")
    workflow.refresh_from_db(fields=["updated_at"])  # as if read after that change
    save_workflow(workflow, priority=3)
    stored = Workflow.objects.get(pk=workflow.pk)
    assert (stored.input_template, stored.priority) == ("payload.repository", 3)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_patches_never_lose_an_accepted_change(make_workflow, staff_client):
    make_workflow(enabled=True, priority=0, task_priority=0)
    edits = [{"priority": 5}, {"enabled": False}, {"task_priority": 3}, {"priority": 9}]
    barrier = threading.Barrier(len(edits))
    answers: dict[int, int] = {}

    def patch(index: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=staff_client._credentials["HTTP_AUTHORIZATION"])
        try:
            barrier.wait()
            answers[index] = client.patch(DETAIL, edits[index], format="json").status_code
        finally:
            connection.close()

    for _ in range(5):
        threads = [threading.Thread(target=patch, args=(i,)) for i in range(len(edits))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(answers.values()) <= {200, 409}
        assert 200 in answers.values()
        stored = Workflow.objects.get(slug="triage-prs")
        for index, edit in enumerate(edits):
            field, value = next(iter(edit.items()))
            others = [e[field] for i, e in enumerate(edits) if i != index and field in e]
            if answers[index] == 200 and not others:
                assert getattr(stored, field) == value, (answers, edit)
        Workflow.objects.filter(pk=stored.pk).update(enabled=True, priority=0, task_priority=0)
