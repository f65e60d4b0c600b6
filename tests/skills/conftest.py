"""Fixtures for the skills tests: skills with unique slugs, uploads, stored-object checks."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from kohakku_controller.skills import services
from kohakku_controller.skills.models import Skill
from kohakku_controller.storage import get_storage

from .zips import package


@pytest.fixture
def make_skill(db: Any) -> Callable[..., Skill]:
    def make(name: str | None = None, **kwargs: Any) -> Skill:
        return services.create_skill(name=name or f"pkg-{secrets.token_hex(4)}", **kwargs)

    return make


@pytest.fixture
def skill(make_skill: Callable[..., Skill]) -> Skill:
    return make_skill()


def stored_names(slug: str) -> list[str]:
    """Everything stored under ``skills/<slug>/``."""
    try:
        _, files = get_storage().listdir(f"skills/{slug}")
    except FileNotFoundError:
        return []
    return sorted(files)


def upload_file(data: bytes, name: str = "skill-package.zip") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/zip")


@pytest.fixture
def upload(staff_client: Any) -> Callable[..., Any]:
    """POST a package to a skill through the API as staff."""

    def post(slug: str, data: bytes | None = None, client: Any = None) -> Any:
        body = package(slug) if data is None else data
        return (client or staff_client).post(
            f"/api/v1/skills/{slug}/upload/", {"file": upload_file(body)}, format="multipart"
        )

    return post


@pytest.fixture
def isolated_storage(settings: Any, tmp_path: Any) -> None:
    """The controller's storage, emptied: a fresh folder, or a fresh bucket on S3."""
    current = settings.STORAGES["kohakku"]
    if "S3Storage" in current["BACKEND"]:
        options = {**current["OPTIONS"], "bucket_name": f"kohakku-{secrets.token_hex(6)}"}
        isolated = {**current, "OPTIONS": options}
    else:
        isolated = {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "storage")},
        }
    settings.STORAGES = {**settings.STORAGES, "kohakku": isolated}
