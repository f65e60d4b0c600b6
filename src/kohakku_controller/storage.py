"""Access to the object storage and cache the controller is configured to use.

Both are chosen by alias (``STORAGE_ALIAS`` in ``settings.STORAGES``, ``CACHE_ALIAS`` in
``settings.CACHES``) and looked up on every call, so a host can swap them per environment
and tests can override them.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from django.core.files.storage import Storage, storages

from .conf import kohakku_settings


def get_storage() -> Storage:
    """The storage that holds skill packages and task results."""
    return storages[kohakku_settings.STORAGE_ALIAS]


def get_cache() -> Any:
    """The cache used for wake-ups and short-lived coordination data."""
    return caches[kohakku_settings.CACHE_ALIAS]


def storage_is_remote(storage: Storage | None = None) -> bool:
    """True for object stores that can presign URLs (S3 and compatible)."""
    storage = storage or get_storage()
    return hasattr(storage, "bucket_name")
