"""Workflow matching and the task a matched workflow queues.

Matching order: enabled workflows of the event's source whose ``event`` is the event's name
or ``"*"``, tried by ascending ``priority`` (lower numbers first), then by name. The first
whose every condition is truthy wins; later workflows are not tried, even if the winner's
input template then fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify
from rest_framework.exceptions import ValidationError

from ..conf import kohakku_settings
from ..exceptions import Conflict
from ..tasks.services import create_task, json_document_problem
from .expressions import (
    Evaluation,
    ExpressionError,
    check_conditions,
    compile_expression,
    render_input,
)
from .models import ANY_EVENT, Workflow

#: Slugs that would clash with collection-level routes.
RESERVED_SLUGS = frozenset({"dry-run"})


@dataclass
class MatchResult:
    """The outcome of routing one event: the winner (if any) and every evaluation made."""

    workflow: Workflow | None
    evaluation: Evaluation | None
    evaluated: list[tuple[Workflow, Evaluation]]

    @property
    def input(self) -> dict[str, Any] | None:
        return self.evaluation.input if self.evaluation else None

    @property
    def input_error(self) -> str | None:
        return self.evaluation.input_error if self.evaluation else None


def evaluate_workflow(
    workflow: Workflow, source: str, event: str, document: dict[str, Any]
) -> Evaluation:
    """Say whether ``workflow`` matches the event, which condition failed, and its input."""
    source_matched = workflow.source == source
    event_matched = workflow.event in (ANY_EVENT, event)
    evaluation = Evaluation(
        matched=False, source_matched=source_matched, event_matched=event_matched
    )
    if not (source_matched and event_matched):
        return evaluation
    evaluation.conditions = check_conditions(list(workflow.conditions or []), document)
    failed = [result for result in evaluation.conditions if not result.truthy]
    if failed:
        evaluation.failed_condition = failed[0]
        return evaluation
    evaluation.matched = True
    try:
        task_input = render_input(workflow.input_template, document)
    except ExpressionError as exc:
        evaluation.input_error = str(exc)
        return evaluation
    # What the task would refuse (too large, NaN, a NUL character) fails here, so a dry-run
    # reports it as ingest would meet it.
    problem = json_document_problem(task_input, "input", kohakku_settings.TASK_INPUT_MAX_BYTES)
    if problem:
        evaluation.input_error = f"The task input cannot be stored: {problem}"
    else:
        evaluation.input = task_input
    return evaluation


def match_workflow(
    source: str, event: str, document: dict[str, Any], *, candidates: Any = None
) -> MatchResult:
    """Find the first enabled workflow that matches the event (one query)."""
    if candidates is None:
        candidates = Workflow.objects.candidates_for(source, event)
    evaluated = []
    for workflow in candidates:
        evaluation = evaluate_workflow(workflow, source, event, document)
        evaluated.append((workflow, evaluation))
        if evaluation.matched:
            return MatchResult(workflow, evaluation, evaluated)
    return MatchResult(None, None, evaluated)


def queue_task_for_workflow(workflow: Workflow, task_input: dict[str, Any]) -> Any:
    """Create the task a matched workflow asks for (``origin="workflow"``, ref = its slug).

    Raises DRF ``ValidationError`` when the task cannot be created (for example the skill
    has no installable version). Call it inside the caller's transaction.
    """
    return create_task(
        skill=workflow.skill.slug,
        version=workflow.skill_version,
        input=task_input,
        backend=workflow.backend,
        labels=dict(workflow.labels or {}),
        priority=workflow.task_priority,
        timeout_seconds=workflow.timeout_seconds,
        origin="workflow",
        origin_ref=workflow.slug,
    )


def condition_errors(conditions: list[str]) -> dict[str, list[str]]:
    """Compile every condition; return ``{index: [reason]}`` for each bad one."""
    errors = {}
    for index, expression in enumerate(conditions):
        try:
            compile_expression(expression)
        except ExpressionError as exc:
            errors[str(index)] = [str(exc)]
    return errors


def template_error(template: str) -> str | None:
    """Why the input template does not compile, or ``None``."""
    try:
        compile_expression(template)
    except ExpressionError as exc:
        return str(exc)
    return None


def derive_slug(name: str) -> str:
    return slugify(name)[:64].strip("-")


def save_workflow(workflow: Workflow, **fields: Any) -> Workflow:
    """Create or update a workflow from validated fields; a slug or name clash is a 400.

    An update writes only ``fields``, and only if nobody changed the workflow since it was
    read (its ``updated_at`` is unchanged): the fields were validated together with what was
    read, so two concurrent edits never mix into a combination neither request checked, and
    neither silently undoes the other. The later one answers 409; the caller reads again and
    retries.
    """
    read_at = workflow.updated_at
    for name, value in fields.items():
        setattr(workflow, name, value)
    try:
        with transaction.atomic():
            if workflow._state.adding:
                workflow.save()
            else:
                _update_if_unchanged(workflow, read_at, fields)
    except IntegrityError:
        clashes = {}
        if Workflow.objects.filter(slug=workflow.slug).exclude(pk=workflow.pk).exists():
            clashes["slug"] = [f"A workflow with slug {workflow.slug!r} already exists."]
        if Workflow.objects.filter(name=workflow.name).exclude(pk=workflow.pk).exists():
            clashes["name"] = [f"A workflow named {workflow.name!r} already exists."]
        if not clashes:
            raise
        raise ValidationError(clashes) from None
    return workflow


def _update_if_unchanged(workflow: Workflow, read_at: Any, fields: dict[str, Any]) -> None:
    workflow.updated_at = timezone.now()
    changed = Workflow.objects.filter(pk=workflow.pk, updated_at=read_at).update(
        **fields, updated_at=workflow.updated_at
    )
    if not changed:
        raise Conflict(
            "The workflow was changed or deleted by another request since it was read; "
            "read it again and retry."
        )
