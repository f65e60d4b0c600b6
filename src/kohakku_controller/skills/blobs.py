"""Housekeeping of stored package blobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from ..storage import get_storage
from .models import SkillVersion

BLOB_PREFIX = "skills"


@dataclass
class PruneReport:
    """What a prune run found: blob names deleted (or to delete), and how many were kept."""

    deleted: list[str] = field(default_factory=list)
    referenced: int = 0
    too_young: int = 0


def iter_blob_names() -> list[str]:
    """Every stored name under ``skills/<slug>/``."""
    storage = get_storage()
    try:
        slugs, _ = storage.listdir(BLOB_PREFIX)
    except FileNotFoundError:
        return []
    except Exception as exc:
        # An S3 bucket nothing was ever written to holds no blobs either.
        if _s3_error_code(exc) == "NoSuchBucket":
            return []
        raise
    names = []
    for slug in slugs:
        _, files = storage.listdir(f"{BLOB_PREFIX}/{slug}")
        names.extend(f"{BLOB_PREFIX}/{slug}/{name}" for name in files)
    return names


def prune_unreferenced_blobs(*, grace_seconds: int, dry_run: bool = False) -> PruneReport:
    """Delete blobs no ``SkillVersion.storage_ref`` names that are older than the grace.

    A referenced blob is never deleted: the reference is checked again just before each
    deletion, and the grace period covers uploads whose row is not committed yet.
    """
    storage = get_storage()
    report = PruneReport()
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    names = iter_blob_names()
    referenced = set(
        SkillVersion.objects.filter(storage_ref__in=names).values_list("storage_ref", flat=True)
    )
    for name in sorted(names):
        if name in referenced:
            report.referenced += 1
            continue
        written_at = _modified_time(storage, name)
        if written_at is None:
            continue  # deleted since it was listed, by another prune run
        if written_at > cutoff:
            report.too_young += 1
            continue
        if SkillVersion.objects.filter(storage_ref=name).exists():
            report.referenced += 1
            continue
        if not dry_run:
            storage.delete(name)
        report.deleted.append(name)
    return report


def _modified_time(storage: Any, name: str) -> datetime | None:
    """When ``name`` was written, or None if it no longer exists."""
    try:
        return storage.get_modified_time(name)
    except FileNotFoundError:
        return None
    except Exception as exc:
        if _s3_error_code(exc) in {"404", "NoSuchKey"}:
            return None
        raise


def _s3_error_code(exc: Exception) -> str | None:
    """The error code of an S3 (botocore) error, or None for any other exception."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code")
