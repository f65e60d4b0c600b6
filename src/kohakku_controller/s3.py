"""An S3 storage for MinIO, SeaweedFS and AWS that creates its bucket on first use.

Use it as the backend of the controller's storage alias::

    STORAGES = {
        "kohakku": {
            "BACKEND": "kohakku_controller.s3.S3Storage",
            "OPTIONS": {"bucket_name": "kohakku", "endpoint_url": "http://minio:9000"},
        },
    }

It is django-storages' ``S3Storage`` with defaults that suit S3-compatible servers:
path-style addressing, request checksums only when required, short connect timeouts and
bounded retries. Every ``OPTIONS`` key still overrides them.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from storages.backends.s3 import S3Storage as BaseS3Storage
from storages.utils import clean_name

DEFAULT_CLIENT_CONFIG = Config(
    s3={"addressing_style": "path"},
    signature_version="s3v4",
    connect_timeout=3,
    read_timeout=30,
    retries={"max_attempts": 3, "mode": "standard"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)


def bounded_transfer_config() -> TransferConfig:
    """Multipart transfers that hold at most a few 8 MiB parts in memory at once.

    boto3's default buffers up to ten parts per upload, which would let one large skill
    package cost the web process some 80 MiB.
    """
    config = TransferConfig(
        multipart_threshold=8 * 1024 * 1024,
        multipart_chunksize=8 * 1024 * 1024,
        max_concurrency=2,
    )
    config.max_in_memory_upload_chunks = 2
    return config


def local_file_path(content: Any) -> str | None:
    """The path of the file on local disk behind ``content``, if there is one."""
    if hasattr(content, "temporary_file_path"):
        return content.temporary_file_path()
    fileobj = getattr(content, "file", content)
    name = getattr(fileobj, "name", None)
    if (
        isinstance(name, str)
        and os.path.isabs(name)
        and hasattr(fileobj, "fileno")
        and os.path.isfile(name)
    ):
        return name
    return None


class S3Storage(BaseS3Storage):
    """django-storages' S3 storage that makes its bucket if it does not exist yet."""

    _bucket_lock = threading.Lock()

    def get_default_settings(self) -> dict[str, Any]:
        defaults = super().get_default_settings()
        defaults["client_config"] = DEFAULT_CLIENT_CONFIG
        defaults["file_overwrite"] = False
        defaults["default_acl"] = None
        defaults["querystring_auth"] = True
        defaults["transfer_config"] = bounded_transfer_config()
        return defaults

    @property
    def bucket(self) -> Any:
        if self._bucket is None:
            with self._bucket_lock:
                if self._bucket is None:
                    bucket = self.connection.Bucket(self.bucket_name)
                    self.ensure_bucket(bucket)
                    self._bucket = bucket
        return self._bucket

    def _save(self, name: str, content: Any) -> str:
        # A file already on disk (a spooled upload) is uploaded from its path: s3transfer
        # then reads each part from disk as it sends it instead of buffering parts in memory.
        path = local_file_path(content)
        if path is None or self.gzip:
            return super()._save(name, content)
        cleaned_name = clean_name(name)
        key = self._normalize_name(cleaned_name)
        params = self._get_write_parameters(key, content)
        self.bucket.Object(key).upload_file(path, ExtraArgs=params, Config=self.transfer_config)
        return cleaned_name

    def ensure_bucket(self, bucket: Any) -> None:
        """Create the bucket when a HEAD says it is missing; tolerate a racing creator."""
        client = self.connection.meta.client
        try:
            client.head_bucket(Bucket=bucket.name)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
        try:
            client.create_bucket(Bucket=bucket.name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
