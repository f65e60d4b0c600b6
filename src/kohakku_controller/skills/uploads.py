"""An upload handler that spools packages to disk and hashes them as the bytes arrive."""

from __future__ import annotations

import hashlib
from typing import Any

from django.core.files.uploadhandler import TemporaryFileUploadHandler

from ..conf import kohakku_settings
from ..exceptions import PayloadTooLarge
from .packages import UploadDigest

#: Attribute set on uploaded files whose digest was computed while they streamed in.
DIGEST_ATTRIBUTE = "kohakku_digest"


class HashingUploadHandler(TemporaryFileUploadHandler):
    """Write each uploaded file to a temporary file, hashing it with sha256 on the way.

    The package never sits whole in memory, whatever its size, and the request is cut off
    with 413 as soon as a file grows past ``SKILL_PACKAGE_MAX_BYTES``.
    """

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._digest = hashlib.sha256()
        self._size = 0
        self._limit = kohakku_settings.SKILL_PACKAGE_MAX_BYTES

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self._size += len(raw_data)
        if self._size > self._limit:
            self.file.close()
            raise PayloadTooLarge(f"The package is larger than {self._limit} bytes.")
        self._digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size: int) -> Any:
        uploaded = super().file_complete(file_size)
        setattr(uploaded, DIGEST_ATTRIBUTE, UploadDigest(self._digest.hexdigest(), self._size))
        return uploaded
