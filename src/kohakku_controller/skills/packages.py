"""Validation of skill packages: zip archives with a ``SKILL.md`` manifest.

A package is checked before anything is stored. Nothing in the archive's headers is
trusted to *accept* a package: sizes are counted while decompressing, entry ranges are
checked against each other (Python 3.11's ``zipfile`` does not detect overlapping entries),
and the manifest's YAML is scanned for tags, anchors and depth before it is parsed safely.

The public entry points are :func:`hash_upload` (sha256 and size of a file, read in
chunks) and :func:`validate_package` (the archive checks, returning a :class:`PackageInfo`).
Every refusal raises :class:`PackageError` naming the reason; the API turns it into a 400
on the ``file`` field.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import math
import re
import stat
import struct
import unicodedata
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

import yaml

from ..conf import kohakku_settings
from ..parsers import find_unstorable_text

CHUNK_SIZE = 64 * 1024
MANIFEST_NAME = "SKILL.md"
#: Skill and manifest names: 1-64 lowercase letters and digits, single hyphens inside.
NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
NAME_MAX_LENGTH = 64
DESCRIPTION_MAX_LENGTH = 1024
ENTRYPOINT_MAX_LENGTH = 1024
# Small entries cannot be bombs whatever their ratio; only larger output is ratio-checked.
RATIO_CHECK_MIN_BYTES = 1024 * 1024

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_DATA_DESCRIPTOR_FLAG = 0x08
#: A data descriptor is 12 bytes (CRC and sizes), plus an optional 4-byte signature, plus 8
#: more with zip64 sizes: up to 12 bytes past the 12 every descriptor has. Too few to hide
#: a local header (30 bytes at least).
_DATA_DESCRIPTOR_EXTRA_BYTES = 12
_ZIP64_PLACEHOLDER = 0xFFFFFFFF
_ENCRYPTED_FLAG = 0x01


class PackageError(ValueError):
    """The package was refused; ``str(error)`` says why, in words a user can act on."""


class PackageTooLarge(PackageError):
    """The package is larger than ``SKILL_PACKAGE_MAX_BYTES`` (answered with 413)."""


@dataclass(frozen=True)
class UploadDigest:
    """sha256 (hex) and size in bytes of an upload."""

    content_hash: str
    size: int


@dataclass(frozen=True)
class PackageInfo:
    """What validation learned about a package."""

    manifest: dict[str, Any]
    entrypoint: str
    file_count: int
    uncompressed_size: int
    root: str = ""
    files: list[str] = field(default_factory=list)


def hash_upload(fileobj: IO[bytes], *, max_bytes: int | None = None) -> UploadDigest:
    """Hash ``fileobj`` with sha256 in chunks from its start, never holding it whole.

    Raises :class:`PackageTooLarge` once more than ``max_bytes`` were read.
    """
    limit = kohakku_settings.SKILL_PACKAGE_MAX_BYTES if max_bytes is None else max_bytes
    digest = hashlib.sha256()
    size = 0
    fileobj.seek(0)
    while chunk := fileobj.read(CHUNK_SIZE):
        size += len(chunk)
        if size > limit:
            raise PackageTooLarge(f"The package is larger than {limit} bytes.")
        digest.update(chunk)
    fileobj.seek(0)
    return UploadDigest(digest.hexdigest(), size)


def validate_package(fileobj: IO[bytes], size: int, *, slug: str) -> PackageInfo:
    """Check the zip in ``fileobj`` (``size`` bytes) as a package of the skill ``slug``.

    ``fileobj`` must be seekable. Raises :class:`PackageError` on the first problem.
    """
    if size == 0:
        raise PackageError("The file is empty.")
    max_bytes = kohakku_settings.SKILL_PACKAGE_MAX_BYTES
    if size > max_bytes:
        raise PackageTooLarge(f"The package is larger than {max_bytes} bytes.")
    fileobj.seek(0)
    if not zipfile.is_zipfile(fileobj):
        raise PackageError("The file is not a zip archive.")
    fileobj.seek(0)
    try:
        with zipfile.ZipFile(fileobj) as archive:
            return _validate_archive(archive, fileobj, size, slug)
    except PackageError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, struct.error) as exc:
        raise PackageError(f"The zip archive is corrupt or truncated ({exc}).") from None
    except NotImplementedError as exc:
        raise PackageError(f"The zip archive uses an unsupported feature ({exc}).") from None
    except (ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise PackageError(f"The zip archive could not be read ({exc}).") from None
    finally:
        fileobj.seek(0)


def _validate_archive(
    archive: zipfile.ZipFile, fileobj: IO[bytes], size: int, slug: str
) -> PackageInfo:
    entries = archive.infolist()
    max_files = kohakku_settings.SKILL_PACKAGE_MAX_FILES
    if not entries:
        raise PackageError("The zip archive has no files.")
    if len(entries) > max_files:
        raise PackageError(f"The package has {len(entries)} entries; at most {max_files}.")
    for info in entries:
        _check_entry_header(info)
    _check_names(entries)
    max_total = kohakku_settings.SKILL_PACKAGE_MAX_UNCOMPRESSED_BYTES
    declared = sum(info.file_size for info in entries)
    if declared > max_total:
        raise PackageError(
            f"The package would decompress to {declared} bytes; at most {max_total}."
        )
    _check_entry_ranges(entries, fileobj, archive.start_dir)
    root = _manifest_root(entries)
    manifest_path = f"{root}{MANIFEST_NAME}"
    manifest_head = b""
    total = 0
    for info in entries:
        if info.is_dir():
            continue
        keep = (
            kohakku_settings.SKILL_MANIFEST_MAX_BYTES + 4096
            if info.filename == manifest_path
            else 0
        )
        written, head = _decompress_counting(archive, info, total, max_total, keep)
        total += written
        if keep:
            manifest_head = head
    manifest = parse_manifest(manifest_head, slug=slug)
    metadata = manifest.get("metadata") or {}
    entrypoint = metadata.get("entrypoint", "") if isinstance(metadata, dict) else ""
    return PackageInfo(
        manifest=manifest,
        entrypoint=entrypoint,
        file_count=len(entries),
        uncompressed_size=total,
        root=root,
        files=[info.filename for info in entries],
    )


def _check_entry_header(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise PackageError(f"Entry {name!r} is encrypted; encrypted packages are refused.")
    # Unix mode bits, whatever system the header claims: extractors on Unix honour them even
    # in zips marked as made on FAT or macOS. Zips made on Windows leave them 0.
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise PackageError(f"Entry {name!r} is a symbolic link; links are refused.")
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise PackageError(f"Entry {name!r} is not a regular file or folder.")


def _check_names(entries: list[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    folded: dict[str, str] = {}
    files: set[str] = set()
    for info in entries:
        name = info.filename
        if not name or "\x00" in name:
            raise PackageError("An entry has an empty name or a NUL byte in its name.")
        if "\\" in name:
            raise PackageError(f"Entry {name!r} has a backslash in its name.")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise PackageError(f"Entry {name!r} has an absolute path.")
        parts = name.rstrip("/").split("/")
        if any(part == ".." for part in parts):
            raise PackageError(f"Entry {name!r} has '..' in its path.")
        if any(part in ("", ".") for part in parts):
            raise PackageError(f"Entry {name!r} has an empty or '.' path component.")
        if name in seen:
            raise PackageError(f"Entry {name!r} appears more than once.")
        seen.add(name)
        key = unicodedata.normalize("NFC", name.rstrip("/")).casefold()
        if key in folded and folded[key] != name:
            raise PackageError(
                f"Entries {folded[key]!r} and {name!r} collide when case is ignored."
            )
        folded[key] = name
        if not info.is_dir():
            files.add(key)
    # A name used both as a file and as a folder holding other entries cannot be extracted.
    for key in folded:
        parent = key.rsplit("/", 1)[0] if "/" in key else None
        while parent:
            if parent in files:
                raise PackageError(f"Entry {folded[parent]!r} is a file and also a folder.")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None


def _check_entry_ranges(entries: list[zipfile.ZipInfo], fileobj: IO[bytes], end: int) -> None:
    """The entries must tile the archive up to its central directory, and each local header
    must agree with the directory.

    Overlapping entries are how a small archive can expand many times over while each
    entry's ratio looks harmless; 3.11's zipfile does not refuse them. Bytes before the
    first entry or between entries are how an archive hides a second one: extractors that
    stream the archive from its first byte read local headers, not the directory the checks
    here read, and would find entries nobody checked.
    """
    ranges = []
    disagreeing = None
    for info in entries:
        fileobj.seek(info.header_offset)
        header = fileobj.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise PackageError(f"Entry {info.filename!r} lies beyond the end of the archive.")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_HEADER_SIGNATURE:
            raise PackageError(f"Entry {info.filename!r} has a bad local header.")
        if disagreeing is None and not _local_header_agrees(fields, info):
            disagreeing = info.filename
        name_length, extra_length = fields[10], fields[11]
        start = info.header_offset
        stop = start + _LOCAL_HEADER.size + name_length + extra_length + info.compress_size
        slack = 0
        if info.flag_bits & _DATA_DESCRIPTOR_FLAG:
            stop += 12  # crc, sizes; the optional signature and zip64 sizes may follow
            slack = _DATA_DESCRIPTOR_EXTRA_BYTES
        ranges.append((start, stop, slack, info.filename))
    ranges.sort()
    if ranges and ranges[0][0] != 0:
        raise PackageError("The archive has data before its first entry.")
    bounds = [(start, name) for start, _, _, name in ranges[1:]] + [(end, None)]
    for (_, stop, slack, name), (next_start, next_name) in zip(ranges, bounds, strict=True):
        if next_start < stop:
            if next_name is None:
                raise PackageError(f"Entry {name!r} overlaps the archive's directory.")
            raise PackageError(f"Entries {name!r} and {next_name!r} overlap in the archive.")
        if next_start - stop > slack:
            where = "the archive's directory" if next_name is None else repr(next_name)
            raise PackageError(f"The archive has data between entry {name!r} and {where}.")
    if disagreeing is not None:
        # Extractors that stream the archive read the local headers, not the directory the
        # checks here read: both must describe the same data.
        raise PackageError(
            f"Entry {disagreeing!r}: its local header disagrees with the archive's directory "
            "(compression method, CRC or sizes)."
        )


def _local_header_agrees(fields: tuple[Any, ...], info: zipfile.ZipInfo) -> bool:
    """The local header's method, CRC and sizes are the central directory's.

    With a data descriptor (flag bit 3) the local CRC and sizes are left zero; with zip64
    the sizes are 0xFFFFFFFF placeholders. Neither is a disagreement.
    """
    method, crc, compressed, size = fields[4], fields[7], fields[8], fields[9]
    if method != info.compress_type:
        return False
    if info.flag_bits & _DATA_DESCRIPTOR_FLAG:
        return True
    sizes = ((compressed, info.compress_size), (size, info.file_size))
    return crc == info.CRC and all(
        local in (declared, _ZIP64_PLACEHOLDER) for local, declared in sizes
    )


def _decompress_counting(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, total_so_far: int, max_total: int, keep: int
) -> tuple[int, bytes]:
    """Decompress one entry in chunks, counting real output against the limits.

    Returns the bytes written and, when ``keep`` > 0, the entry's first ``keep`` bytes.
    The whole stream is read, and must yield exactly the size the header declares.
    """
    max_ratio = kohakku_settings.SKILL_PACKAGE_MAX_COMPRESSION_RATIO
    written = 0
    head = bytearray()
    # zipfile stops at the declared size; declaring more than the limits allow lets it read
    # on to the real end of the stream (the limits below stop it first).
    unbounded = copy.copy(info)
    unbounded.file_size = max_total + 1
    with archive.open(unbounded) as member:
        while chunk := member.read(CHUNK_SIZE):
            written += len(chunk)
            if total_so_far + written > max_total:
                raise PackageError(f"The package decompresses to more than {max_total} bytes.")
            if written > RATIO_CHECK_MIN_BYTES and written > max_ratio * max(info.compress_size, 1):
                raise PackageError(
                    f"Entry {info.filename!r} expands more than {max_ratio} times; "
                    "it looks like a zip bomb."
                )
            if len(head) < keep:
                head += chunk[: keep - len(head)]
    if written != info.file_size:
        raise PackageError(
            f"Entry {info.filename!r} decompresses to {written} bytes but its header says "
            f"{info.file_size}; the archive is corrupt."
        )
    return written, bytes(head)


def _manifest_root(entries: list[zipfile.ZipInfo]) -> str:
    """``""`` when SKILL.md is at the root, ``"folder/"`` when all sits under one folder."""
    names = {info.filename for info in entries}
    if MANIFEST_NAME in names:
        return ""
    tops = {info.filename.split("/", 1)[0] for info in entries}
    if len(tops) == 1:
        top = next(iter(tops))
        if f"{top}/{MANIFEST_NAME}" in names:
            return f"{top}/"
    raise PackageError(
        f"The package has no {MANIFEST_NAME} at its root or under a single top-level folder."
    )


# --- SKILL.md front matter -----------------------------------------------------------------


def parse_manifest(content: bytes, *, slug: str) -> dict[str, Any]:
    """Parse and check the YAML front matter of a ``SKILL.md``; return it as JSON-safe data."""
    max_bytes = kohakku_settings.SKILL_MANIFEST_MAX_BYTES
    # Bytes that are not UTF-8 become lone surrogates, refused below if in the front matter:
    # the kept head may end inside a multi-byte character of the text after it.
    text = content.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        raise PackageError(f"{MANIFEST_NAME} must start with YAML front matter ('---').")
    closing = next((i for i, line in enumerate(lines[1:], 1) if line.rstrip("\r\n") == "---"), 0)
    if not closing:
        if len(content) > max_bytes:
            raise PackageError(
                f"The {MANIFEST_NAME} front matter is larger than {max_bytes} bytes."
            )
        raise PackageError(f"The {MANIFEST_NAME} front matter has no closing '---'.")
    front = "".join(lines[1:closing])
    try:
        front_size = len(front.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line = front.count("\n", 0, exc.start) + 2
        raise PackageError(
            f"The {MANIFEST_NAME} front matter is not UTF-8 text (line {line})."
        ) from None
    if front_size > max_bytes:
        raise PackageError(f"The {MANIFEST_NAME} front matter is larger than {max_bytes} bytes.")
    data = _safe_yaml(front)
    return _check_manifest_fields(data, slug)


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` after refusing tags, anchors, aliases and deep nesting."""
    max_depth = kohakku_settings.SKILL_MANIFEST_MAX_DEPTH
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise PackageError(
                    f"The {MANIFEST_NAME} front matter uses YAML anchors or aliases."
                )
            if getattr(event, "tag", None) is not None:
                raise PackageError(f"The {MANIFEST_NAME} front matter uses YAML tags.")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise PackageError(
                        f"The {MANIFEST_NAME} front matter is nested deeper than {max_depth}."
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PackageError(
            f"The {MANIFEST_NAME} front matter is not valid YAML: {problem}."
        ) from None
    except (ValueError, OverflowError) as exc:
        # A value YAML reads but Python cannot hold: a date such as 2026-02-30, an integer
        # of thousands of digits.
        raise PackageError(
            f"The {MANIFEST_NAME} front matter has a value that cannot be read: {exc}."
        ) from None


def _check_manifest_fields(data: Any, slug: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PackageError(f"The {MANIFEST_NAME} front matter must be a mapping.")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise PackageError(f"The {MANIFEST_NAME} front matter needs a 'name'.")
    if len(name) > NAME_MAX_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise PackageError(
            f"The manifest name {name!r} must be 1-64 lowercase letters, digits and single hyphens."
        )
    if name != slug:
        raise PackageError(f"The manifest name {name!r} does not match the skill {slug!r}.")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise PackageError(f"The {MANIFEST_NAME} front matter needs a 'description'.")
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise PackageError(
            f"The manifest description is longer than {DESCRIPTION_MAX_LENGTH} characters."
        )
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise PackageError("The manifest 'metadata' must be a mapping.")
        entrypoint = metadata.get("entrypoint")
        if entrypoint is not None and (
            not isinstance(entrypoint, str)
            or not entrypoint.strip()
            or len(entrypoint) > ENTRYPOINT_MAX_LENGTH
            or len(entrypoint.splitlines()) > 1
        ):
            raise PackageError(
                "The manifest 'metadata.entrypoint' must be a non-empty command line of at "
                f"most {ENTRYPOINT_MAX_LENGTH} characters, on one line."
            )
    manifest = _json_safe(data)
    # PostgreSQL's jsonb holds no NUL character, and no encoder takes half a surrogate pair.
    problem = find_unstorable_text(manifest)
    if problem:
        raise PackageError(f"In the {MANIFEST_NAME} front matter, {problem}.")
    return manifest


def _json_safe(value: Any) -> Any:
    """YAML scalars JSON cannot hold (dates, non-finite floats, odd keys) become strings."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
