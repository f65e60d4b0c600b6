"""Dispatcher signing secrets: generated, encrypted at rest, rotated with a grace period.

The key that encrypts them comes from ``KOHAKKU_CONTROLLER["SECRET_ENCRYPTION_KEY"]`` or,
when that is unset, is derived from ``settings.SECRET_KEY``. Changing that key makes the
stored secrets unreadable, so dispatchers would have to check in again with ``rotate``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import secrets
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.utils import timezone

from ..conf import kohakku_settings

SECRET_BYTES = 32

logger = logging.getLogger(__name__)


def _key_material() -> str:
    return kohakku_settings.SECRET_ENCRYPTION_KEY or settings.SECRET_KEY


@functools.lru_cache(maxsize=8)
def _fernet(material: str) -> Fernet:
    key = hashlib.sha256(b"kohakku-controller/dispatcher-secrets/" + material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def generate_signing_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def encrypt_secret(secret: str) -> str:
    return _fernet(_key_material()).encrypt(secret.encode()).decode()


def decrypt_secret(ciphertext: str) -> str:
    """Decrypt a stored secret; raises ``ValueError`` if the key changed or data is corrupt."""
    return _decrypt(ciphertext, _key_material())


@functools.lru_cache(maxsize=4096)
def _decrypt(ciphertext: str, material: str) -> str:
    # Every callback and push needs its dispatcher's secret; a ciphertext always decrypts to
    # the same secret under the same key, so each is decrypted once per process.
    try:
        return _fernet(material).decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("signing secret cannot be decrypted with the current key") from exc


def valid_signing_secrets(dispatcher, now: datetime | None = None) -> list[str]:
    """The secrets a dispatcher may sign with now: current, plus previous during its grace.

    A secret the current key cannot decrypt (the key changed) is left out and logged, so
    signatures are checked against what is left, and nothing when nothing is: the
    dispatcher must then check in with ``rotate_secret``.
    """
    now = now or timezone.now()
    stored = [("current", dispatcher.signing_secret_encrypted)]
    if (
        dispatcher.previous_signing_secret_encrypted
        and dispatcher.previous_secret_valid_until
        and dispatcher.previous_secret_valid_until > now
    ):
        stored.append(("previous", dispatcher.previous_signing_secret_encrypted))
    found = []
    for which, ciphertext in stored:
        try:
            found.append(decrypt_secret(ciphertext))
        except ValueError:
            _warn_unreadable(str(dispatcher.guid), which, ciphertext)
    return found


@functools.lru_cache(maxsize=1024)
def _warn_unreadable(guid: str, which: str, ciphertext: str) -> None:
    # Once per secret and process: every callback of that dispatcher would log it again.
    logger.warning(
        "the %s signing secret of dispatcher %s cannot be decrypted with the current key "
        "(SECRET_ENCRYPTION_KEY or SECRET_KEY changed); it is ignored until the dispatcher "
        "checks in with rotate_secret",
        which,
        guid,
    )


def is_readable(ciphertext: str) -> bool:
    """Whether the current key decrypts ``ciphertext``."""
    try:
        decrypt_secret(ciphertext)
    except ValueError:
        return False
    return True


def current_signing_secret(dispatcher) -> str:
    """The secret the controller signs pushes to this dispatcher with."""
    return decrypt_secret(dispatcher.signing_secret_encrypted)
