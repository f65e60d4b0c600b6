"""Skill packages: download with a hash check, safe extraction, and the declared entrypoint."""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import yaml

from dispatcher.controller import transport_problem

SKILL_FILE = "SKILL.md"
_CHUNK = 64 * 1024


class PackageError(Exception):
    """The package cannot be used; the message is sent to the controller as the reason."""


class TransientPackageError(PackageError):
    """The download failed in a way that trying again may cure (no answer, 408, 425, 429, 5xx)."""


_TRANSIENT_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True)
class PackageLimits:
    """Caps applied while downloading and extracting (counted, never read from headers)."""

    max_package_bytes: int
    max_extracted_bytes: int
    max_files: int


def download_package(
    http: httpx.Client, url: str, expected_sha256: str, destination: Path, limits: PackageLimits
) -> None:
    """Stream ``url`` into ``destination`` and check its sha256 against ``expected_sha256``.

    Nothing but the URL is sent: the controller gives a presigned or signed URL, and S3
    refuses requests that carry an unexpected ``Authorization`` header.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            http.stream("GET", url, follow_redirects=True) as response,
            open(destination, "wb") as handle,
        ):
            if response.status_code != 200:
                transient = (
                    response.status_code in _TRANSIENT_STATUSES or response.status_code >= 500
                )
                error = TransientPackageError if transient else PackageError
                raise error(f"package download failed with HTTP {response.status_code}")
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > limits.max_package_bytes:
                    raise PackageError(
                        f"package is larger than the {limits.max_package_bytes} byte limit"
                    )
                digest.update(chunk)
                handle.write(chunk)
    except httpx.TransportError as exc:
        raise TransientPackageError(
            f"package download failed: {transport_problem(exc, url)}"
        ) from exc
    except httpx.HTTPError as exc:
        raise PackageError(f"package download failed: {transport_problem(exc, url)}") from exc
    actual = digest.hexdigest()
    if actual != expected_sha256.strip().lower():
        raise PackageError(
            f"package hash mismatch: expected sha256 {expected_sha256}, got {actual}"
        )


def _check_member_name(name: str) -> PurePosixPath:
    if not name or "\\" in name or "\x00" in name:
        raise PackageError(f"package entry {name!r} has an invalid name")
    path = PurePosixPath(name)
    if not path.parts and not name.endswith("/"):
        # "." (or "./."): a file that would be the package root itself.
        raise PackageError(f"package entry {name!r} has an invalid name")
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise PackageError(f"package entry {name!r} is an absolute path")
    if any(part == ".." for part in path.parts):
        raise PackageError(f"package entry {name!r} escapes the package root")
    return path


def extract_package(archive: Path, destination: Path, limits: PackageLimits) -> None:
    """Extract the zip ``archive`` into the empty directory ``destination``, safely.

    Refuses absolute paths, ``..``, backslashes, symlinks and other special files,
    encrypted entries, duplicate names, too many entries, and more uncompressed bytes than
    allowed (counted while decompressing). Files get owner-only permissions; the owner's
    execute bit is kept when the archive sets one.
    """
    root = destination.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"package is not a valid zip file: {exc}") from exc
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_files:
            raise PackageError(f"package has more than {limits.max_files} entries")
        seen: set[str] = set()
        total = 0
        for info in members:
            path = _check_member_name(info.filename)
            key = str(path).lower()
            if key in seen:
                raise PackageError(f"package entry {info.filename!r} is duplicated")
            seen.add(key)
            if info.flag_bits & 0x1:
                raise PackageError(f"package entry {info.filename!r} is encrypted")
            mode = info.external_attr >> 16
            # Only the file-type bits matter: many writers set permissions without a type.
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise PackageError(f"package entry {info.filename!r} is a link or special file")
            target = (root / path).resolve()
            if target != root and root not in target.parents:
                raise PackageError(f"package entry {info.filename!r} escapes the package root")
            file_mode = 0o700 if mode & 0o111 else 0o600
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(target, flags, file_mode)
            except (FileExistsError, NotADirectoryError):
                # "a" and "a/b", or a file over a folder: no local path in the message.
                raise PackageError(
                    f"package entry {info.filename!r} clashes with another entry "
                    "(a file and a folder of the same name)"
                ) from None
            except OSError as exc:
                raise PackageError(
                    f"package entry {info.filename!r} cannot be extracted: {exc.strerror}"
                ) from None
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > limits.max_extracted_bytes:
                            raise PackageError(
                                f"package expands to more than {limits.max_extracted_bytes} bytes"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
                raise PackageError(f"package entry {info.filename!r} is corrupt: {exc}") from exc


def find_package_root(extracted: Path) -> Path:
    """The folder holding ``SKILL.md``: the extraction root or its single top folder."""
    if (extracted / SKILL_FILE).is_file():
        return extracted
    entries = [entry for entry in extracted.iterdir() if entry.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / SKILL_FILE).is_file():
        return entries[0]
    raise PackageError(f"package has no {SKILL_FILE} at its root or under a single top folder")


def read_entrypoint(package_root: Path) -> str:
    """Return ``metadata.entrypoint`` from the YAML front matter of ``SKILL.md``."""
    try:
        text = (package_root / SKILL_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"{SKILL_FILE} cannot be read: {exc}") from exc
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise PackageError(f"{SKILL_FILE} does not start with YAML front matter ('---')")
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        raise PackageError(f"{SKILL_FILE} front matter is not closed with '---'") from None
    try:
        front = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        raise PackageError(f"{SKILL_FILE} front matter is not valid YAML: {exc}") from exc
    metadata = front.get("metadata") if isinstance(front, dict) else None
    entrypoint = metadata.get("entrypoint") if isinstance(metadata, dict) else None
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise PackageError(f"{SKILL_FILE} declares no metadata.entrypoint")
    return entrypoint.strip()
