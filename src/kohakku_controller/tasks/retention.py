"""Retention: finished tasks are deleted after a while, with their events and stored results.

Without it the task table, its events and the result files grow for ever, and a skill
version that any task ran can never be deleted (tasks protect the versions they ran).
``kohakku_prune_tasks`` (run it from cron, like ``kohakku_prune_deliveries``) calls
:func:`prune_tasks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.files.storage import Storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..conf import kohakku_settings
from ..storage import get_storage
from .models import Task, cancel_unsent, result_prefix_of

logger = logging.getLogger(__name__)


@dataclass
class PruneReport:
    """What :func:`prune_tasks` deleted (or, on a dry run, would delete)."""

    tasks: int = 0
    result_files: int = 0
    #: Result files (or prefixes) the storage failed to delete or list; their tasks are kept,
    #: for the next run to try again.
    failed_files: list[str] = field(default_factory=list)


def prune_tasks(
    *, older_than: timedelta | None = None, dry_run: bool = False, batch_size: int = 500
) -> PruneReport:
    """Delete the tasks that ended before now - ``older_than`` (default:
    ``TASK_RETENTION_DAYS``), oldest first, with their events and their result files.

    Queued and running tasks are never touched, however old, nor a timed-out task whose
    cancel request the scheduler may still send. For each batch the files under
    the tasks' ``results/<guid>/`` prefixes go first, then, in one transaction, the rows of
    the tasks whose files all went: a task whose files the storage failed to delete (logged
    and listed in the report) is kept for the next run, so no such file is left without its
    task's row. A task's idempotency key is forgotten with it. Concurrent runs go through
    the same batches without failing. With ``dry_run`` only the tasks are counted.
    """
    if older_than is None:
        older_than = timedelta(days=kohakku_settings.TASK_RETENTION_DAYS)
    now = timezone.now()
    # A timed-out task whose dispatcher has not been asked to stop yet stays while the
    # scheduler may still send that request (CANCEL_GRACE_SECONDS), whatever the retention.
    grace = timedelta(seconds=kohakku_settings.CANCEL_GRACE_SECONDS)
    expired = Task.objects.finished_before(now - older_than).exclude(cancel_unsent(now - grace))
    report = PruneReport()
    if dry_run:
        report.tasks = expired.count()
        return report
    storage = get_storage()
    after: tuple[Any, int] | None = None
    while True:
        batch = list(next_batch(expired, after, batch_size))
        if not batch:
            return report
        last_pk, _, last_finished = batch[-1]
        after = (last_finished, last_pk)
        cleared = [
            pk for pk, guid, _ in batch if _delete_tree(storage, result_prefix_of(guid), report)
        ]
        if cleared:
            with transaction.atomic():
                # Only the keys: the events go by one statement, and no task body is loaded.
                _, deleted = Task.objects.filter(pk__in=cleared).only("pk").delete()
            report.tasks += deleted.get(Task._meta.label, 0)


def next_batch(expired: Any, after: tuple[Any, int] | None, size: int) -> Any:
    """The next ``size`` of ``expired`` as (pk, guid, finished_at), after the key ``after``
    ((finished_at, pk) of the last one seen): keyset pagination, which neither skips nor
    repeats a row whatever was deleted meanwhile, and starts its index scan at ``after``."""
    if after is not None:
        finished_at, pk = after
        expired = expired.filter(finished_at__gte=finished_at).filter(
            Q(finished_at__gt=finished_at) | Q(pk__gt=pk)
        )
    return expired.values_list("pk", "guid", "finished_at")[:size]


def _delete_tree(storage: Storage, prefix: str, report: PruneReport) -> bool:
    """Delete every file under ``prefix`` (and, on a local disk, the emptied directories);
    True when nothing is left there."""
    try:
        directories, files = storage.listdir(prefix)
    except FileNotFoundError:
        return True  # a local storage where this task stored nothing
    except Exception:
        logger.exception("could not list the result files under %s", prefix)
        report.failed_files.append(prefix)
        return False
    cleared = True
    for directory in directories:
        cleared = _delete_tree(storage, f"{prefix}{directory}/", report) and cleared
    for name in files:
        try:
            storage.delete(prefix + name)
        except Exception:
            logger.exception("could not delete the result file %s", prefix + name)
            report.failed_files.append(prefix + name)
            cleared = False
        else:
            report.result_files += 1
    with contextlib.suppress(NotImplementedError, OSError):
        os.rmdir(storage.path(prefix))  # object stores have no directories to remove
    return cleared
