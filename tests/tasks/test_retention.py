"""kohakku_prune_tasks: finished tasks go after the retention period, with events and results."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.utils import timezone

from kohakku_controller.storage import get_storage, storage_is_remote
from kohakku_controller.tasks.models import Task, TaskEvent
from kohakku_controller.tasks.retention import prune_tasks
from kohakku_controller.tasks.services import create_task, record_event

from ..concurrency import run_together

DAY = timedelta(days=1)


@pytest.fixture
def task_in(skill_version: Any) -> Callable[..., Task]:
    """A task in ``status``, ended ``ended_ago`` (None: not ended), with an event."""

    def make(status: str, ended_ago: timedelta | None = None, *, results: int = 0) -> Task:
        task = create_task(skill="code-review")
        finished_at = None if ended_ago is None else timezone.now() - ended_ago
        Task.objects.filter(pk=task.pk).update(status=status, finished_at=finished_at)
        task.refresh_from_db()
        record_event(task, status, to_status=status, reason="for the retention test")
        for index in range(results):
            name = "output.json" if index == 0 else f"logs/part-{index}.txt"
            get_storage().save(f"{task.result_prefix}{name}", ContentFile(b"{}"))
        return task

    return make


def run(*args: str) -> str:
    out = StringIO()
    call_command("kohakku_prune_tasks", *args, stdout=out)
    return out.getvalue()


def result_names(task: Task) -> list[str]:
    storage = get_storage()
    try:
        directories, files = storage.listdir(task.result_prefix)
    except FileNotFoundError:
        return []
    nested = [name for d in directories for name in storage.listdir(f"{task.result_prefix}{d}/")[1]]
    return files + nested


@pytest.mark.django_db
def test_finished_tasks_past_the_retention_go_with_their_events_and_results(task_in):
    old = [
        task_in("completed", 100 * DAY, results=2),
        task_in("failed", 91 * DAY, results=1),
        task_in("cancelled", 365 * DAY),
        task_in("timed_out", 120 * DAY),
    ]
    kept = [
        task_in("completed", 89 * DAY, results=1),
        task_in("queued"),  # however old, unfinished tasks stay
        task_in("running"),
    ]
    Task.objects.filter(pk__in=[t.pk for t in kept[1:]]).update(
        created_at=timezone.now() - 400 * DAY
    )
    assert sorted(result_names(old[0])) == ["output.json", "part-1.txt"]

    output = run()

    assert "Deleted 4 finished tasks older than 90 days." in output
    assert "Deleted 3 result file(s)." in output
    assert set(Task.objects.values_list("pk", flat=True)) == {t.pk for t in kept}
    assert not TaskEvent.objects.filter(task_id__in=[t.pk for t in old]).exists()
    assert TaskEvent.objects.filter(task_id__in=[t.pk for t in kept]).count() == 6  # 2 each
    assert all(result_names(task) == [] for task in old)
    assert result_names(kept[0]) == ["output.json"]
    if not storage_is_remote():
        assert not os.path.exists(get_storage().path(old[0].result_prefix))


@pytest.mark.django_db
def test_dry_run_counts_and_deletes_nothing(task_in):
    task = task_in("completed", 100 * DAY, results=1)

    assert run("--dry-run") == "Would delete 1 finished tasks older than 90 days.\n"

    assert Task.objects.filter(pk=task.pk).exists()
    assert result_names(task) == ["output.json"]


@pytest.mark.django_db
def test_days_come_from_the_option_or_the_setting(task_in, settings):
    recent = task_in("completed", 2 * DAY)
    assert "Deleted 0 finished tasks older than 90 days." in run()
    settings.KOHAKKU_CONTROLLER = {**settings.KOHAKKU_CONTROLLER, "TASK_RETENTION_DAYS": 1}
    assert "Deleted 1 finished tasks older than 1 days." in run()
    assert not Task.objects.filter(pk=recent.pk).exists()
    just_ended = task_in("failed", timedelta(seconds=1))
    assert "Deleted 1 finished tasks older than 0 days." in run("--days", "0")
    assert not Task.objects.filter(pk=just_ended.pk).exists()


@pytest.mark.django_db
def test_a_timed_out_task_stays_until_its_cancel_request_is_sent(task_in, make_dispatcher):
    task = task_in("timed_out", timedelta(seconds=1))
    Task.objects.filter(pk=task.pk).update(dispatcher=make_dispatcher())
    assert "Deleted 0 finished tasks" in run("--days", "0")
    Task.objects.filter(pk=task.pk).update(cancel_sent_at=timezone.now())
    assert "Deleted 1 finished tasks" in run("--days", "0")


@pytest.mark.django_db
@pytest.mark.parametrize("days", ["-1", "nan", "inf", "36501", "ten"])
def test_a_bad_retention_is_refused_before_anything_is_deleted(task_in, days):
    task = task_in("completed", 100 * DAY)
    with pytest.raises(CommandError, match="--days"):
        run("--days", days)
    assert Task.objects.filter(pk=task.pk).exists()


@pytest.mark.django_db
def test_batches_follow_each_other_through_tasks_that_ended_at_the_same_moment(task_in):
    tasks = [task_in("completed", 100 * DAY) for _ in range(7)]
    Task.objects.update(finished_at=tasks[0].finished_at)

    report = prune_tasks(older_than=90 * DAY, batch_size=2)

    assert report.tasks == 7
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_task_whose_result_file_cannot_be_deleted_is_kept_for_the_next_run(task_in, monkeypatch):
    stuck = task_in("completed", 100 * DAY, results=1)
    task_in("failed", 100 * DAY)
    storage = get_storage()
    real_delete = storage.delete

    def delete(name: str) -> None:
        if name.startswith(stuck.result_prefix):
            raise OSError("storage is read-only")
        real_delete(name)

    monkeypatch.setattr(storage, "delete", delete)
    out = StringIO()
    with pytest.raises(CommandError, match=f"1 result file.*{stuck.result_prefix}output.json"):
        call_command("kohakku_prune_tasks", stdout=out)
    assert "Deleted 1 finished tasks" in out.getvalue()
    assert set(Task.objects.values_list("pk", flat=True)) == {stuck.pk}
    assert result_names(stuck) == ["output.json"]

    monkeypatch.setattr(storage, "delete", real_delete)
    assert "Deleted 1 finished tasks" in run()
    assert not Task.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_share_the_work(task_in):
    tasks = [task_in("completed", 100 * DAY, results=1) for _ in range(30)]

    reports = run_together(3, lambda _: prune_tasks(older_than=90 * DAY, batch_size=4))

    assert not [r for r in reports if isinstance(r, Exception)], reports
    assert sum(report.tasks for report in reports) == 30
    assert not Task.objects.exists()
    assert all(result_names(task) == [] for task in tasks)
