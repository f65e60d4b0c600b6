"""The scheduler's sweeps read their rows through partial indexes, not the whole task table.

With sequential scans priced out, PostgreSQL's plan names the index a query can use; a
sweep whose filter stopped matching its index's condition would fall back to the
status index (every task in that status, ever) and fail here.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from kohakku_controller.tasks.models import Task
from kohakku_controller.tasks.retention import next_batch

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def plan_with_indexes_preferred(db):
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")

    def plan(queryset) -> str:
        return queryset.explain()

    return plan


def test_each_sweep_uses_its_own_partial_index(plan_with_indexes_preferred):
    now = timezone.now()
    sweeps = {
        "kohakku_task_claim_idx": Task.objects.claimable(now),
        "kohakku_task_deadline_idx": Task.objects.overdue(now),
        "kohakku_task_lease_idx": Task.objects.expired_leases(now),
        "kohakku_task_cancel_idx": Task.objects.cancel_requested().filter(
            cancel_requested_at__lt=now
        ),
        "kohakku_task_unsent_cancel_idx": Task.objects.timed_out_cancel_unsent(
            now - timedelta(minutes=5)
        ),
        "kohakku_task_finished_idx": Task.objects.finished_before(now - timedelta(days=90)),
    }
    for index, queryset in sweeps.items():
        # As the scheduler reads them: with the dispatcher joined, a batch at a time.
        plan = plan_with_indexes_preferred(queryset.select_related("dispatcher")[:100])
        assert index in plan, f"{index} not used:\n{plan}"


def test_each_retention_batch_starts_its_index_scan_after_the_last(plan_with_indexes_preferred):
    expired = Task.objects.finished_before(timezone.now() - timedelta(days=90))
    after = (timezone.now() - timedelta(days=400), 1234)
    plan = plan_with_indexes_preferred(next_batch(expired, after, 500))
    assert "kohakku_task_finished_idx" in plan, plan
    scan = next(line for line in plan.splitlines() if "Index Cond" in line)
    assert "finished_at >=" in scan and "finished_at <" in scan, plan  # a bounded range
    assert "Sort" not in plan, plan  # read in index order, not sorted each batch


def test_a_claim_reading_past_waiting_tasks_stays_on_the_claim_index(
    plan_with_indexes_preferred,
):
    # The read after tasks that wait for full dispatchers (Scheduler.claim_and_assign).
    skipped = Q(pk__in=[1, 2]) | Q(backend="local", labels={"gpu": "a100"})
    queryset = Task.objects.claimable(timezone.now()).exclude(skipped)
    plan = plan_with_indexes_preferred(queryset.select_for_update(skip_locked=True)[:100])
    assert "kohakku_task_claim_idx" in plan, plan
    assert "Sort" not in plan, plan  # still in claim order straight from the index


def test_pending_cancels_not_yet_sent_use_the_cancel_index(plan_with_indexes_preferred):
    queryset = Task.objects.cancel_requested().filter(cancel_sent_at__isnull=True)
    assert "kohakku_task_cancel_idx" in plan_with_indexes_preferred(queryset)


def test_a_task_list_page_is_read_in_order_from_the_created_index(plan_with_indexes_preferred):
    from kohakku_controller.tasks.views import TaskViewSet

    # Whether a sort is cheaper depends on the table's statistics; priced out, the plan shows
    # whether an index can give the list's order at all.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
    # As the API lists them: newest first, with version, skill and dispatcher, a page at a time.
    newest_first = TaskViewSet.queryset.order_by(*Task._meta.ordering)
    plan = plan_with_indexes_preferred(newest_first[:50])
    assert "kohakku_task_created_idx" in plan, plan
    assert "Sort" not in plan, plan  # not the whole table sorted for each page
    since = newest_first.filter(created_at__gte=timezone.now() - timedelta(days=1))
    assert "kohakku_task_created_idx" in plan_with_indexes_preferred(since[:50])
