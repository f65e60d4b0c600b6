"""Uploading packages (versioning, dedupe, storage) and downloading them (headers, caching)."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import urlsplit

import pytest
from django.core.files.base import ContentFile
from django.db import DatabaseError

from kohakku_controller.skills import services
from kohakku_controller.skills.models import SkillVersion, SkillVersionQuerySet
from kohakku_controller.skills.packages import UploadDigest
from kohakku_controller.storage import get_storage

from .conftest import stored_names, upload_file
from .zips import build_zip, manifest_text, package


def test_seed_upload_example(skill, upload):
    data = package(skill.slug)
    digest = hashlib.sha256(data).hexdigest()

    response = upload(skill.slug, data)

    assert response.status_code == 201
    assert response.json() == {
        "slug": skill.slug,
        "storage_ref": f"skills/{skill.slug}/{digest}.zip",
        "content_hash": digest,
        "version_number": 1,
        "deduplicated": False,
    }
    version = SkillVersion.objects.get(skill=skill)
    assert version.size == len(data)
    assert version.manifest["name"] == skill.slug
    assert version.manifest["description"] == "Reviews code for quality."
    assert version.entrypoint == "python run.py"
    assert version.uploaded_by.username == "staff"
    with get_storage().open(version.storage_ref, "rb") as stored:
        assert stored.read() == data


def test_same_bytes_are_deduplicated_and_new_bytes_get_the_next_version(skill, upload):
    first = package(skill.slug)
    second = package(skill.slug, extra={"notes.txt": "v2"})

    one = upload(skill.slug, first).json()
    again = upload(skill.slug, first)
    two = upload(skill.slug, second).json()

    assert again.status_code == 200
    assert again.json() == {**one, "deduplicated": True}
    assert two["version_number"] == 2
    assert two["deduplicated"] is False
    assert SkillVersion.objects.filter(skill=skill).count() == 2
    assert stored_names(skill.slug) == sorted(
        [f"{one['content_hash']}.zip", f"{two['content_hash']}.zip"]
    )


def test_package_under_a_single_top_folder(skill, upload):
    response = upload(skill.slug, package(skill.slug, root=f"{skill.slug}/"))
    assert response.status_code == 201, response.content
    assert SkillVersion.objects.get(skill=skill).entrypoint == "python run.py"


def test_manifest_keeps_yaml_scalars_json_safe(skill, upload):
    extra = "released: 2024-05-01\nscore: .nan\n1: one\nmetadata:\n  tags: [a, b]\n"
    data = build_zip({"SKILL.md": manifest_text(skill.slug, extra=extra)})
    assert upload(skill.slug, data).status_code == 201
    manifest = SkillVersion.objects.get(skill=skill).manifest
    assert manifest["released"] == "2024-05-01"
    assert manifest["score"] == "nan"
    assert manifest["1"] == "one"
    assert manifest["metadata"] == {"tags": ["a", "b"]}


def test_version_numbers_are_never_reused(skill, upload):
    upload(skill.slug, package(skill.slug))
    SkillVersion.objects.filter(skill=skill).delete()  # e.g. removed by hand in the database
    response = upload(skill.slug, package(skill.slug, extra={"x": "y"}))
    assert response.json()["version_number"] == 2


def test_blob_written_by_a_failed_transaction_is_removed(skill, monkeypatch):
    def failing_create(self, **kwargs):
        raise DatabaseError("simulated database failure")

    monkeypatch.setattr(SkillVersionQuerySet, "create", failing_create)
    with pytest.raises(DatabaseError):
        services.upload_package(skill, upload_file(package(skill.slug)))
    assert stored_names(skill.slug) == []
    skill.refresh_from_db()
    assert skill.last_version_number == 0


def test_orphan_blob_is_reused_and_kept_when_the_transaction_fails(skill, monkeypatch):
    data = package(skill.slug)
    digest = UploadDigest(hashlib.sha256(data).hexdigest(), len(data))
    ref = services.storage_ref_for(skill.slug, digest.content_hash)
    services._store_blob(ref, upload_file(data), digest)

    monkeypatch.setattr(
        SkillVersionQuerySet, "create", lambda self, **kw: (_ for _ in ()).throw(DatabaseError("x"))
    )
    with pytest.raises(DatabaseError):
        services.upload_package(skill, upload_file(data))
    monkeypatch.undo()
    # The blob was not ours to delete; a later upload references it.
    assert stored_names(skill.slug) == [ref.rsplit("/", 1)[1]]
    result = services.upload_package(skill, upload_file(data))
    assert result.version.storage_ref == ref
    assert stored_names(skill.slug) == [ref.rsplit("/", 1)[1]]


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: data[::-1]],
    ids=["truncated", "same-size-other-bytes"],
)
def test_a_damaged_object_at_the_content_address_is_rewritten(skill, upload, staff_client, damage):
    """An object a crash cut short is not trusted: the next upload of the bytes replaces it."""
    data = package(skill.slug)
    ref = services.storage_ref_for(skill.slug, hashlib.sha256(data).hexdigest())
    assert get_storage().save(ref, ContentFile(damage(data))) == ref

    response = upload(skill.slug, data)

    assert response.status_code == 201, response.content
    download = staff_client.get(f"/api/v1/skills/{skill.slug}/download/")
    assert _body(download) == data
    with get_storage().open(ref, "rb") as stored:
        assert stored.read() == data
    assert stored_names(skill.slug) == [ref.rsplit("/", 1)[1]]


def test_an_object_that_cannot_be_read_back_is_written_again(skill, upload, monkeypatch):
    """Gone between the existence check and the read (a racing prune, an S3 error)."""
    data = package(skill.slug)
    ref = services.storage_ref_for(skill.slug, hashlib.sha256(data).hexdigest())
    get_storage().save(ref, ContentFile(data))

    def unreadable(self, name):
        raise RuntimeError(f"cannot read {name}")

    monkeypatch.setattr(type(get_storage()), "size", unreadable)
    response = upload(skill.slug, data)
    assert response.status_code == 201, response.content
    with get_storage().open(ref, "rb") as stored:
        assert stored.read() == data


def test_a_whole_object_at_the_content_address_is_reused(skill, monkeypatch):
    data = package(skill.slug)
    ref = services.storage_ref_for(skill.slug, hashlib.sha256(data).hexdigest())
    get_storage().save(ref, ContentFile(data))
    monkeypatch.setattr(
        type(get_storage()), "save", lambda *a, **kw: pytest.fail("the object was written again")
    )
    result = services.upload_package(skill, upload_file(data))
    assert result.version.storage_ref == ref


# --- download ---------------------------------------------------------------------------------


@pytest.fixture
def two_versions(skill, upload):
    first, second = package(skill.slug), package(skill.slug, extra={"v": "2"})
    upload(skill.slug, first)
    upload(skill.slug, second)
    return skill, first, second


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_download_latest_streams_with_headers(two_versions, staff_client):
    skill, _, second = two_versions
    digest = hashlib.sha256(second).hexdigest()

    response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["X-Content-Hash"] == digest
    assert response["ETag"] == f'"{digest}"'
    assert response["Content-Length"] == str(len(second))
    assert response["Content-Disposition"] == f"attachment; filename={skill.slug}-2.zip"
    assert response["Cache-Control"] == "private, no-cache"
    assert _body(response) == second


def test_download_pinned_version(two_versions, staff_client):
    skill, first, _ = two_versions
    response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/?version=1")
    assert response.status_code == 200
    assert _body(response) == first
    assert response["Content-Disposition"] == f"attachment; filename={skill.slug}-1.zip"
    assert "immutable" in response["Cache-Control"]


def test_if_none_match_answers_304(two_versions, staff_client):
    skill, _, second = two_versions
    etag = f'"{hashlib.sha256(second).hexdigest()}"'
    url = f"/api/v1/skills/{skill.slug}/download/"
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = staff_client.get(url, HTTP_IF_NONE_MATCH=header)
        assert response.status_code == 304, header
        assert response["ETag"] == etag
        assert response.content == b""
    stale = staff_client.get(url, HTTP_IF_NONE_MATCH='"0000"')
    assert stale.status_code == 200


def test_head_answers_headers_only(two_versions, staff_client):
    skill, _, second = two_versions
    response = staff_client.head(f"/api/v1/skills/{skill.slug}/download/")
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(second))
    assert response["X-Content-Hash"] == hashlib.sha256(second).hexdigest()
    assert response.content == b""


def test_download_accepts_any_accept_header(two_versions, staff_client):
    skill, _, _ = two_versions
    response = staff_client.get(
        f"/api/v1/skills/{skill.slug}/download/", HTTP_ACCEPT="application/zip"
    )
    assert response.status_code == 200


def test_download_query_budget(two_versions, staff_client, django_assert_num_queries):
    skill, _, _ = two_versions
    # token lookup, the skill (the caller may see it), version with its skill
    with django_assert_num_queries(3):
        response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/?version=1")
    assert response.status_code == 200
    with django_assert_num_queries(3):
        assert staff_client.get(f"/api/v1/skills/{skill.slug}/download/").status_code == 200


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?version=9", 404),
        ("?version=x", 400),
        ("?version=0", 400),
        ("?version=-1", 400),
        ("?version=%C2%B2", 400),  # superscript two: a digit to str.isdigit(), not to int()
        ("?version=%D9%A1", 400),  # Arabic-Indic one
        ("?version=%EF%BC%91", 400),  # full-width one
        ("?version=1.0", 400),
        ("?version=%201", 400),
        ("?version=2147483648", 400),
        ("?version=" + "9" * 5000, 400),
    ],
)
def test_download_bad_version(two_versions, staff_client, query, status):
    skill, _, _ = two_versions
    response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/{query}")
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    if status == 400:
        assert response.json() == {"version": ["Must be a positive integer."]}


def test_empty_version_is_the_latest(two_versions, staff_client):
    skill, _, second = two_versions
    response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/?version=")
    assert response.status_code == 200
    assert _body(response) == second
    assert response["Cache-Control"] == "private, no-cache"


def test_download_unknown_skill_or_no_version(skill, staff_client):
    assert staff_client.get("/api/v1/skills/nope/download/").status_code == 404
    assert staff_client.get(f"/api/v1/skills/{skill.slug}/download/").status_code == 404


def test_download_missing_blob_is_503(two_versions, staff_client):
    skill, _, _ = two_versions
    get_storage().delete(SkillVersion.objects.get(skill=skill, version_number=2).storage_ref)
    response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/")
    assert response.status_code == 503


# --- signed download URLs (filesystem storage) -------------------------------------------------


@pytest.fixture
def filesystem_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "kohakku": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "storage")},
        },
    }


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_signed_url_works_without_credentials(filesystem_storage, two_versions, api_client):
    skill, first, _ = two_versions
    version = SkillVersion.objects.get(skill=skill, version_number=1)

    url = services.package_download_url(version, base_url="http://127.0.0.1:8000/")

    assert url.startswith(f"http://127.0.0.1:8000/api/v1/skills/{skill.slug}/download/?version=1&")
    response = api_client.get(_path_and_query(url))
    assert response.status_code == 200
    assert _body(response) == first
    # A signed URL ignores whatever credential comes along.
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert api_client.get(_path_and_query(url)).status_code == 200


def test_signed_url_cannot_be_altered(filesystem_storage, two_versions, api_client):
    skill, _, _ = two_versions
    version = SkillVersion.objects.get(skill=skill, version_number=1)
    url = _path_and_query(services.package_download_url(version, base_url="http://x"))
    for altered in (
        url.replace("version=1", "version=2"),
        url.replace("signature=", "signature=0"),
        url.replace(f"/{skill.slug}/", "/other-skill/"),
        url.split("&signature")[0] + "&signature=",
        url.replace("expires=", "expires=1"),
        # The same numbers written another way are not the URL that was signed.
        url.replace("expires=", "expires=%2B"),
        url.replace("expires=", "expires=0"),
        url.replace("version=1", "version=%201"),
        url.replace("version=1", "version=%EF%BC%91"),  # a full-width digit one
    ):
        response = api_client.get(altered)
        assert response.status_code in (403, 404), altered
        assert response.status_code == 403 or "other-skill" in altered


def test_signed_url_expires(filesystem_storage, two_versions, api_client, monkeypatch):
    skill, _, _ = two_versions
    version = SkillVersion.objects.get(skill=skill, version_number=1)
    url = _path_and_query(
        services.package_download_url(version, base_url="http://x", expires_seconds=60)
    )
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 120)
    response = api_client.get(url)
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]


# --- resolving versions -------------------------------------------------------------------------


def test_resolve_version_latest_pinned_and_yanked(two_versions):
    from rest_framework.exceptions import ValidationError

    skill, _, _ = two_versions
    assert services.resolve_version(skill.slug).version_number == 2
    assert services.resolve_version(skill.slug, 1).version_number == 1
    services.set_version_yanked(
        SkillVersion.objects.get(skill=skill, version_number=2), True, reason="broken"
    )
    assert services.resolve_version(skill.slug).version_number == 1
    with pytest.raises(ValidationError) as excinfo:
        services.resolve_version(skill.slug, 2)
    assert "yanked" in str(excinfo.value.detail["version"][0])
    assert services.resolve_version(skill.slug, 2, allow_yanked=True).version_number == 2
    for bad_slug, bad_version, field in [
        ("nope", None, "skill"),
        (skill.slug, 7, "version"),
        (skill.slug, True, "version"),
        (skill.slug, "1", "version"),
    ]:
        with pytest.raises(ValidationError) as excinfo:
            services.resolve_version(bad_slug, bad_version)
        assert list(excinfo.value.detail) == [field]


def test_resolve_version_refuses_archived_and_empty(make_skill, skill):
    from rest_framework.exceptions import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        services.resolve_version(skill.slug)
    assert list(excinfo.value.detail) == ["version"]
    services.set_skill_archived(skill, True)
    with pytest.raises(ValidationError) as excinfo:
        services.resolve_version(skill.slug)
    assert list(excinfo.value.detail) == ["skill"]
