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


def presigned_url(
    name: str,
    *,
    expires_seconds: int,
    method: str = "get_object",
    params: dict[str, Any] | None = None,
) -> str:
    """A presigned S3 URL for ``name`` (remote storage only).

    The URL is signed for ``STORAGE_PUBLIC_ENDPOINT_URL`` when that is set, for clients that
    reach S3 at another address than the controller does. Signing happens locally; the
    bucket is made sure of first, so a PUT to a fresh bucket does not fail.
    """
    storage: Any = get_storage()
    storage.bucket  # noqa: B018  (our S3Storage creates the bucket on first access)
    client = storage.connection.meta.client
    public_endpoint = kohakku_settings.STORAGE_PUBLIC_ENDPOINT_URL
    if public_endpoint:
        client = storage._create_session().client(
            "s3",
            endpoint_url=public_endpoint,
            region_name=storage.region_name,
            config=storage.client_config,
            verify=storage.verify,
        )
    return client.generate_presigned_url(
        method,
        Params={
            "Bucket": storage.bucket_name,
            "Key": storage._normalize_name(name),
            **(params or {}),
        },
        ExpiresIn=expires_seconds,
    )
