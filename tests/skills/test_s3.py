"""Packages on real S3 (SeaweedFS): where objects land, streaming, presigned URLs, redirects."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import httpx
import pytest
from django.test import override_settings

from kohakku_controller.skills import services
from kohakku_controller.skills.models import SkillVersion

from .zips import package

BUCKET = "kohakku-skills-s3"


@pytest.fixture
def s3_storage(s3_server, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "kohakku": {
            "BACKEND": "kohakku_controller.s3.S3Storage",
            "OPTIONS": {
                "endpoint_url": s3_server.endpoint_url,
                "bucket_name": BUCKET,
                "access_key": s3_server.access_key,
                "secret_key": s3_server.secret_key,
                "region_name": "us-east-1",
            },
        },
    }
    return s3_server


@pytest.fixture
def uploaded(s3_storage, skill, upload):
    data = package(skill.slug, extra={"data.bin": bytes(range(256)) * 4096})
    response = upload(skill.slug, data)
    assert response.status_code == 201, response.content
    return skill, data, response.json()


def test_object_lands_where_storage_ref_says(uploaded, s3_storage):
    skill, data, body = uploaded
    head = s3_storage.client().head_object(Bucket=BUCKET, Key=body["storage_ref"])
    assert body["storage_ref"] == f"skills/{skill.slug}/{hashlib.sha256(data).hexdigest()}.zip"
    assert head["ContentType"] == "application/zip"
    assert head["ContentLength"] == len(data)
    stored = s3_storage.client().get_object(Bucket=BUCKET, Key=body["storage_ref"])["Body"].read()
    assert stored == data


def test_refused_upload_leaves_no_object(s3_storage, skill, upload):
    response = upload(skill.slug, b"not a zip at all")
    assert response.status_code == 400
    listed = s3_storage.client().list_objects_v2(Bucket=BUCKET, Prefix=f"skills/{skill.slug}/")
    assert listed.get("KeyCount", 0) == 0


def test_download_streams_from_s3(uploaded, staff_client):
    skill, data, body = uploaded
    response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/")
    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == data
    assert response["Content-Length"] == str(len(data))
    assert response["ETag"] == f'"{body["content_hash"]}"'


def test_presigned_download_url_fetches_the_package(uploaded):
    skill, data, _ = uploaded
    version = SkillVersion.objects.get(skill=skill)
    url = services.package_download_url(version, base_url="http://controller.invalid")
    assert "X-Amz-Signature=" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["content-disposition"] == f"attachment; filename={skill.slug}-1.zip"


def test_presigned_url_is_signed_for_the_public_endpoint(uploaded, s3_storage):
    skill, data, _ = uploaded
    version = SkillVersion.objects.get(skill=skill)
    port = urlsplit(s3_storage.endpoint_url).port
    public = f"http://localhost:{port}"
    with override_settings(KOHAKKU_CONTROLLER={"STORAGE_PUBLIC_ENDPOINT_URL": public}):
        url = services.package_download_url(version, base_url="http://x", expires_seconds=60)
    assert url.startswith(f"{public}/{BUCKET}/skills/{skill.slug}/")
    assert "X-Amz-Expires=60" in url
    assert httpx.get(url).content == data


def test_download_redirect_setting(uploaded, staff_client):
    skill, data, _ = uploaded
    with override_settings(KOHAKKU_CONTROLLER={"SKILL_DOWNLOAD_REDIRECT": True}):
        response = staff_client.get(f"/api/v1/skills/{skill.slug}/download/")
    assert response.status_code == 302
    assert response["X-Content-Hash"] == hashlib.sha256(data).hexdigest()
    assert httpx.get(response["Location"]).content == data


def test_prune_on_s3_keeps_referenced(uploaded, s3_storage):
    import io

    from django.core.management import call_command

    skill, _, body = uploaded
    orphan = f"skills/{skill.slug}/{'f' * 64}.zip"
    s3_storage.client().put_object(Bucket=BUCKET, Key=orphan, Body=b"orphan")
    out = io.StringIO()
    call_command("kohakku_prune_blobs", "--grace-seconds", "0", stdout=out)
    client = s3_storage.client()
    keys = {
        o["Key"]
        for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"skills/{skill.slug}/")["Contents"]
    }
    assert keys == {body["storage_ref"]}
