"""Skill registry services: creating skills, uploading, resolving and serving package versions.

Views, management commands and other domains call these functions; they hold the
transactions and the storage calls. Blobs are content-addressed: a package lives at
``skills/<slug>/<sha256>.zip`` and is never renamed or rewritten under another name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from rest_framework.exceptions import NotFound, ValidationError

from ..conf import kohakku_settings
from ..exceptions import Conflict, PayloadTooLarge
from ..storage import get_storage, presigned_url, storage_is_remote
from .models import Skill, SkillVersion
from .packages import (
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PackageError,
    PackageTooLarge,
    UploadDigest,
    hash_upload,
    validate_package,
)
from .uploads import DIGEST_ATTRIBUTE

logger = logging.getLogger(__name__)

PACKAGE_CONTENT_TYPE = "application/zip"
STREAM_CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class UploadResult:
    """The outcome of :func:`upload_package`: the version, and whether it already existed."""

    version: SkillVersion
    deduplicated: bool


# --- skills ---------------------------------------------------------------------------------


def slug_for_name(name: str) -> str:
    """The slug a skill name gets: lowercase letters, digits and single hyphens, <= 64."""
    slug = slugify(name).replace("_", "-")
    slug = re.sub(r"-{2,}", "-", slug).strip("-")
    return slug[:NAME_MAX_LENGTH].rstrip("-")


def category_problem(category: str) -> str | None:
    """Why ``category`` is not allowed (not in ``SKILL_CATEGORIES``), or ``None``."""
    allowed = list(kohakku_settings.SKILL_CATEGORIES)
    if category in allowed:
        return None
    return f"Must be one of: {', '.join(allowed)}."


def check_category(category: str) -> str:
    """Return ``category`` if it is one of ``SKILL_CATEGORIES``, else raise a 400."""
    problem = category_problem(category)
    if problem:
        raise ValidationError({"category": [problem]})
    return category


def create_skill(*, name: str, category: str | None = None, description: str = "") -> Skill:
    """Create a skill; its slug is derived from ``name`` and never changes.

    ``category`` defaults to the first of ``SKILL_CATEGORIES``.

    Raises ``ValidationError`` (400) for a bad name or category and ``Conflict`` (409) when
    the name or its slug is taken.
    """
    name = name.strip()
    slug = slug_for_name(name)
    if not slug or not NAME_PATTERN.fullmatch(slug):
        raise ValidationError(
            {"name": ["Must contain ASCII letters or digits (a-z, 0-9): the slug is made of them."]}
        )
    if category is None:
        category = next(iter(kohakku_settings.SKILL_CATEGORIES), "tool")
    check_category(category)
    if Skill.objects.filter(name=name).exists() or Skill.objects.filter(slug=slug).exists():
        raise Conflict({"name": [f"A skill with this name or slug ({slug!r}) already exists."]})
    try:
        with transaction.atomic():
            return Skill.objects.create(
                name=name, slug=slug, category=category, description=description
            )
    except IntegrityError:
        raise Conflict(
            {"name": [f"A skill with this name or slug ({slug!r}) already exists."]}
        ) from None


def update_skill(
    skill: Skill, *, description: str | None = None, category: str | None = None
) -> Skill:
    """Change a skill's description and/or category; updates ``skill`` in place.

    Writes only these fields. Raises ``NotFound`` when the skill was deleted meanwhile.
    """
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description
    if category is not None:
        changes["category"] = check_category(category)
    if changes:
        changes["updated_at"] = timezone.now()
        if not Skill.objects.filter(pk=skill.pk).update(**changes):
            raise NotFound("No such skill.")
        for field, value in changes.items():
            setattr(skill, field, value)
    return skill


def set_skill_archived(skill: Skill, archived: bool) -> Skill:
    """Archive (hide from lists and from ``resolve_version``) or restore a skill.

    Conditional: a skill already in the requested state is answered with 409.
    """
    updated = Skill.objects.filter(pk=skill.pk, archived=not archived).update(
        archived=archived, updated_at=timezone.now()
    )
    if not updated:
        state = "archived" if archived else "not archived"
        raise Conflict({"archived": [f"The skill is already {state}."]})
    skill.refresh_from_db()
    return skill


# --- uploads --------------------------------------------------------------------------------


def storage_ref_for(slug: str, content_hash: str) -> str:
    """Where a package is stored: ``skills/<slug>/<sha256>.zip``."""
    return f"skills/{slug}/{content_hash}.zip"


def upload_package(skill: Skill, uploaded_file: IO[bytes], *, user: Any = None) -> UploadResult:
    """Validate ``uploaded_file`` as a package of ``skill``, store it and record a version.

    The same bytes as an existing version of the skill answer that version with
    ``deduplicated=True`` and store nothing. New bytes get the next version number, which
    is never reused. A refused package raises ``ValidationError`` on ``file`` (or
    ``PayloadTooLarge``) and leaves no row and no stored object.
    """
    if skill.archived:
        raise Conflict({"skill": ["The skill is archived; restore it before uploading."]})
    digest: UploadDigest | None = getattr(uploaded_file, DIGEST_ATTRIBUTE, None)
    try:
        if digest is None:
            digest = hash_upload(uploaded_file)
        existing = SkillVersion.objects.filter(
            skill=skill, content_hash=digest.content_hash
        ).first()
        if existing is not None:
            return UploadResult(existing, deduplicated=True)
        info = validate_package(uploaded_file, digest.size, slug=skill.slug)
    except PackageTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except PackageError as exc:
        raise ValidationError({"file": [str(exc)]}) from None

    ref = storage_ref_for(skill.slug, digest.content_hash)
    wrote_blob = _store_blob(ref, uploaded_file, digest)
    try:
        result = _record_version(skill, digest, ref, info.manifest, info.entrypoint, user)
    except BaseException:
        if wrote_blob:
            _delete_blob_if_unreferenced(ref)
        raise
    if not result.deduplicated:
        # The row now references the blob; if a prune removed an old copy in the moment
        # between our existence check and the commit, write it again.
        transaction.on_commit(lambda: _ensure_blob(ref, uploaded_file, digest))
    return result


def _record_version(
    skill: Skill,
    digest: UploadDigest,
    ref: str,
    manifest: dict[str, Any],
    entrypoint: str,
    user: Any,
) -> UploadResult:
    """Take the next version number under the skill's row lock and insert the version."""
    with transaction.atomic():
        locked = (
            Skill.objects.select_for_update()
            .only("pk", "last_version_number", "archived")
            .filter(pk=skill.pk)
            .first()
        )
        if locked is None:
            raise NotFound("No such skill.")
        if locked.archived:
            raise Conflict({"skill": ["The skill is archived; restore it before uploading."]})
        # Re-check under the lock: a racing upload of the same bytes may have won.
        existing = SkillVersion.objects.filter(
            skill=skill, content_hash=digest.content_hash
        ).first()
        if existing is not None:
            return UploadResult(existing, deduplicated=True)
        number = locked.last_version_number + 1
        # Conditional: on databases without row locks a racing upload makes this match 0 rows.
        taken = Skill.objects.filter(
            pk=skill.pk, last_version_number=locked.last_version_number
        ).update(last_version_number=F("last_version_number") + 1, updated_at=timezone.now())
        if taken != 1:
            raise Conflict({"file": ["Another upload to this skill is in progress; retry."]})
        version = SkillVersion.objects.create(
            skill=skill,
            version_number=number,
            content_hash=digest.content_hash,
            size=digest.size,
            storage_ref=ref,
            manifest=manifest,
            entrypoint=entrypoint,
            uploaded_by=user if getattr(user, "is_authenticated", False) else None,
        )
    skill.last_version_number = number
    return UploadResult(version, deduplicated=False)


def _package_file(uploaded_file: IO[bytes]) -> File:
    uploaded_file.seek(0)
    wrapped = File(getattr(uploaded_file, "file", uploaded_file))
    wrapped.content_type = PACKAGE_CONTENT_TYPE  # type: ignore[attr-defined]
    return wrapped


def _store_blob(ref: str, uploaded_file: IO[bytes], digest: UploadDigest) -> bool:
    """Write the package at ``ref`` unless a whole copy is there; True if this call wrote it.

    An object already at ``ref`` (left by an upload that failed, or a racing upload's) is
    trusted only when its size and sha256 are the package's: anything else, such as a copy
    cut short by a crash, is replaced.
    """
    storage = get_storage()
    stale = storage.exists(ref)
    if stale:
        if _blob_holds(storage, ref, digest):
            return False
        logger.warning("package blob %s does not hold its package; writing it again", ref)
    try:
        path = storage.path(ref)
    except NotImplementedError:
        # Object stores (S3) show an object whole or not at all.
        if stale:
            storage.delete(ref)
        saved = storage.save(ref, _package_file(uploaded_file))
        if saved != ref:
            # A racing upload of the same bytes put ``ref`` first; ours is a duplicate.
            storage.delete(saved)
            return False
        return True
    # A local file is written under a name of its own, then renamed into place in one step:
    # ``ref`` never holds part of a package, neither while it is written nor after a crash.
    partial = storage.save(f"{ref}.partial", _package_file(uploaded_file))
    os.replace(storage.path(partial), path)
    return True


def _blob_holds(storage: Any, ref: str, digest: UploadDigest) -> bool:
    """True if the object at ``ref`` has the package's size and sha256.

    An object that cannot be read back (gone since it was seen, or an object store's error)
    is not trusted either: the caller writes the package again, which is always safe at a
    content address.
    """
    try:
        if storage.size(ref) != digest.size:
            return False
        with storage.open(ref, "rb") as stored:
            return hash_upload(stored, max_bytes=digest.size) == digest
    except PackageTooLarge:
        return False
    except Exception:  # FileNotFoundError, botocore's ClientError, ...
        logger.warning("package blob %s could not be read back; writing it again", ref)
        return False


def _ensure_blob(ref: str, uploaded_file: IO[bytes], digest: UploadDigest) -> None:
    storage = get_storage()
    try:
        if not storage.exists(ref):
            logger.warning("package blob %s vanished before commit; writing it again", ref)
            _store_blob(ref, uploaded_file, digest)
    except Exception:
        logger.exception("could not re-check package blob %s", ref)


def _delete_blob_if_unreferenced(ref: str) -> None:
    """Remove a blob this process wrote when no version row ended up referencing it."""
    if not SkillVersion.objects.filter(storage_ref=ref).exists():
        get_storage().delete(ref)


# --- resolving versions ---------------------------------------------------------------------


def resolve_version(
    skill_slug: str, version: int | None = None, *, allow_yanked: bool = False
) -> SkillVersion:
    """The version a task should run: the latest non-yanked one, or version ``version``.

    A pinned yanked version is refused unless ``allow_yanked`` is true. Raises DRF
    ``ValidationError`` naming ``skill`` (unknown or archived skill) or ``version`` (no
    such version, yanked, or no installable version at all). One query (the version with its
    skill) when the version may run; more only to explain a refusal.
    """
    if isinstance(skill_slug, str) and (version is None or _is_version_number(version)):
        versions = SkillVersion.objects.select_related("skill").filter(
            skill__slug=skill_slug, skill__archived=False
        )
        if version is None:
            found = versions.filter(yanked=False).order_by("-version_number").first()
        else:
            found = versions.filter(version_number=version).first()
        if found is not None and (allow_yanked or not found.yanked):
            return found
    raise _unresolvable(skill_slug, version)


def _is_version_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _unresolvable(skill_slug: Any, version: Any) -> ValidationError:
    """Why ``resolve_version`` found nothing to run, as the error to raise."""
    skill = Skill.objects.filter(slug=skill_slug).first() if isinstance(skill_slug, str) else None
    if skill is None:
        return ValidationError({"skill": [f"No skill with slug {skill_slug!r}."]})
    if skill.archived:
        return ValidationError({"skill": [f"The skill {skill_slug!r} is archived."]})
    if version is None:
        return ValidationError(
            {"version": [f"The skill {skill_slug!r} has no version that is not yanked."]}
        )
    if not _is_version_number(version):
        return ValidationError({"version": ["Must be a positive integer."]})
    found = SkillVersion.objects.filter(skill=skill, version_number=version).first()
    if found is None:
        return ValidationError({"version": [f"The skill {skill_slug!r} has no version {version}."]})
    if found.yanked:
        return ValidationError(
            {"version": [f"Version {version} of {skill_slug!r} is yanked: {found.yank_reason}"]}
        )
    return ValidationError({"version": ["The version changed while it was resolved; retry."]})


def version_for_download(slug: str, version: int | None) -> SkillVersion:
    """The version a download serves: pinned (yanked ones included) or latest non-yanked.

    One query when the version exists; raises ``NotFound`` otherwise.
    """
    versions = SkillVersion.objects.select_related("skill").filter(skill__slug=slug)
    if version is None:
        found = versions.filter(yanked=False).order_by("-version_number").first()
    else:
        found = versions.filter(version_number=version).first()
    if found is not None:
        return found
    if not Skill.objects.filter(slug=slug).exists():
        raise NotFound(f"No skill with slug {slug!r}.")
    if version is None:
        raise NotFound("The skill has no version that is not yanked.")
    raise NotFound(f"The skill has no version {version}.")


def set_version_yanked(version: SkillVersion, yanked: bool, *, reason: str) -> SkillVersion:
    """Yank (hide from ``latest``) or restore a version, recording why.

    Conditional: a version already in the requested state is answered with 409.
    """
    now = timezone.now()
    changes: dict[str, Any] = (
        {"yanked": True, "yank_reason": reason, "yanked_at": now}
        if yanked
        else {"yanked": False, "unyank_reason": reason, "unyanked_at": now}
    )
    updated = SkillVersion.objects.filter(pk=version.pk, yanked=not yanked).update(**changes)
    if not updated:
        state = "yanked" if yanked else "not yanked"
        raise Conflict({"yanked": [f"Version {version.version_number} is already {state}."]})
    # Nothing else of a version changes after upload: the update is all there is to read.
    for name, value in changes.items():
        setattr(version, name, value)
    return version


# --- serving packages -----------------------------------------------------------------------


def _download_key() -> bytes:
    return hashlib.sha256(
        b"kohakku-controller/skill-download/" + settings.SECRET_KEY.encode()
    ).digest()


_CANONICAL_INTEGER = re.compile(r"0|[1-9][0-9]*")


def download_signature(slug: str, version_number: int, expires: int) -> str:
    """HMAC-SHA256 (hex) over slug, version and expiry, keyed from ``SECRET_KEY``."""
    message = f"{slug}\n{version_number}\n{expires}".encode()
    return hmac.new(_download_key(), message, hashlib.sha256).hexdigest()


def verify_download_signature(
    slug: str, version: str | None, expires: str | None, signature: str | None
) -> int:
    """Check a signed download URL's query; return the version number it grants.

    Raises ``ValueError`` with the reason when the URL is malformed, expired or forged.
    """
    if not (version and expires and signature):
        raise ValueError("A signed download URL needs version, expires and signature.")
    # Only the numbers as the URL was made (int() alone also reads "+1", " 1", "01", "1_0"
    # and other scripts' digits: other URLs than the one that was signed).
    if not all(_CANONICAL_INTEGER.fullmatch(value) for value in (version, expires)):
        raise ValueError("version and expires must be integers.")
    try:
        version_number, expires_at = int(version), int(expires)
    except ValueError:
        raise ValueError("version and expires must be integers.") from None
    if expires_at < time.time():
        raise ValueError("The download URL has expired.")
    expected = download_signature(slug, version_number, expires_at)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise ValueError("The download URL signature does not match.")
    return version_number


def presigned_package_url(version: SkillVersion, expires_seconds: int) -> str:
    """A presigned S3 GET for the package, signed for ``STORAGE_PUBLIC_ENDPOINT_URL`` if set."""
    slug = version.skill.slug
    return presigned_url(
        version.storage_ref,
        expires_seconds=expires_seconds,
        params={
            "ResponseContentType": PACKAGE_CONTENT_TYPE,
            "ResponseContentDisposition": (
                f"attachment; filename={slug}-{version.version_number}.zip"
            ),
        },
    )


def package_download_url(
    version: SkillVersion, *, base_url: str, expires_seconds: int | None = None
) -> str:
    """A short-lived URL from which a dispatcher fetches ``version``'s package.

    With S3 storage: a presigned GET. Otherwise: the controller's download endpoint with
    ``version``, ``expires`` and an HMAC ``signature``; the endpoint accepts it without any
    other credential. ``base_url`` is the controller's external base, e.g.
    ``http://127.0.0.1:8000``.
    """
    lifetime = expires_seconds or kohakku_settings.SKILL_DOWNLOAD_URL_EXPIRES_SECONDS
    if storage_is_remote():
        return presigned_package_url(version, lifetime)
    slug = version.skill.slug
    expires = int(time.time()) + lifetime
    query = urlencode(
        {
            "version": version.version_number,
            "expires": expires,
            "signature": download_signature(slug, version.version_number, expires),
        }
    )
    path = reverse("kohakku_controller:skill-download", kwargs={"slug": slug})
    return f"{base_url.rstrip('/')}{path}?{query}"


def open_package(version: SkillVersion) -> tuple[Any, Iterator[bytes] | None]:
    """Open a version's blob for streaming.

    Returns ``(file, None)`` for storages with real files (served with the WSGI file
    wrapper) or ``(None, chunks)`` for S3, read straight from the object's body so the
    package never sits in memory or in a temporary file.
    """
    storage = get_storage()
    if storage_is_remote(storage):
        key = storage._normalize_name(version.storage_ref)
        body = storage.bucket.Object(key).get()["Body"]
        return None, _iterate_and_close(body)
    return storage.open(version.storage_ref, "rb"), None


def _iterate_and_close(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(STREAM_CHUNK_SIZE)
    finally:
        body.close()
