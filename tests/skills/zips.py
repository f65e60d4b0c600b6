"""Builders for skill packages, well-formed and hostile, made in memory for each test."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from collections.abc import Iterator


def manifest_text(
    name: str, description: str = "Reviews code for quality.", extra: str = ""
) -> str:
    return (
        f"---\nname: {name}\ndescription: {description}\n{extra}---\n\n# {name}\n\nHow to use it.\n"
    )


def build_zip(
    files: dict[str, bytes | str] | list[tuple[str, bytes | str]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
    mode_bits: dict[str, int] | None = None,
    create_system: int = 3,
) -> bytes:
    """A zip of ``files`` (name -> content); ``mode_bits`` sets Unix st_mode per name.

    ``create_system`` is the system the headers say made the zip (3 Unix, 0 FAT, 19 macOS).
    """
    buffer = io.BytesIO()
    items = files.items() if isinstance(files, dict) else files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are wanted in some tests
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, content in items:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = compression
                info.create_system = create_system
                mode = (mode_bits or {}).get(name, 0o100644)
                info.external_attr = mode << 16
                data = content.encode() if isinstance(content, str) else content
                archive.writestr(info, data)
    return buffer.getvalue()


def package(slug: str, *, root: str = "", extra: dict[str, bytes | str] | None = None) -> bytes:
    """A valid package for the skill ``slug``."""
    files: dict[str, bytes | str] = {
        f"{root}SKILL.md": manifest_text(slug, extra="metadata:\n  entrypoint: python run.py\n"),
        f"{root}run.py": "import json, sys\nprint(json.dumps(json.load(sys.stdin)))\n",
    }
    files.update(extra or {})
    return build_zip(files)


def _central_records(data: bytes) -> list[int]:
    """Offsets of the central directory records in ``data``."""
    offsets, position = [], 0
    while (position := data.find(b"PK\x01\x02", position)) != -1:
        offsets.append(position)
        position += 4
    return offsets


def set_encrypted_flag(data: bytes) -> bytes:
    """Mark every entry as encrypted (bit 0 of the general purpose flags)."""
    out = bytearray(data)
    for offset in _central_records(data):
        (flags,) = struct.unpack_from("<H", out, offset + 8)
        struct.pack_into("<H", out, offset + 8, flags | 0x1)
    position = 0
    while (position := data.find(b"PK\x03\x04", position)) != -1:
        (flags,) = struct.unpack_from("<H", out, position + 6)
        struct.pack_into("<H", out, position + 6, flags | 0x1)
        position += 4
    return bytes(out)


def point_entry_at(data: bytes, name: str, target: str) -> bytes:
    """Make the central record of ``name`` point at the local header of ``target``."""
    out = bytearray(data)
    offsets = {}
    for record in _central_records(data):
        name_length = struct.unpack_from("<H", data, record + 28)[0]
        entry_name = data[record + 46 : record + 46 + name_length].decode()
        offsets[entry_name] = record
    (target_offset,) = struct.unpack_from("<L", data, offsets[target] + 42)
    struct.pack_into("<L", out, offsets[name] + 42, target_offset)
    return bytes(out)


def declare_size(data: bytes, name: str, file_size: int, crc: int) -> bytes:
    """Make both headers (local and central) of ``name`` declare ``file_size`` and ``crc``."""
    out = bytearray(data)
    for record, local in _entries_named(data, name):
        for crc_offset, size_offset in ((record + 16, record + 24), (local + 14, local + 22)):
            struct.pack_into("<L", out, crc_offset, crc)
            struct.pack_into("<L", out, size_offset, file_size)
    return bytes(out)


def patch_local_header(
    data: bytes, name: str, *, method: int | None = None, size: int | None = None
) -> bytes:
    """Change the compression method or the uncompressed size in ``name``'s local header only."""
    out = bytearray(data)
    for _, local in _entries_named(data, name):
        if method is not None:
            struct.pack_into("<H", out, local + 8, method)
        if size is not None:
            struct.pack_into("<L", out, local + 22, size)
    return bytes(out)


def _entries_named(data: bytes, name: str) -> Iterator[tuple[int, int]]:
    """The offsets of the central record and the local header of each entry named ``name``."""
    for record in _central_records(data):
        name_length = struct.unpack_from("<H", data, record + 28)[0]
        if data[record + 46 : record + 46 + name_length] == name.encode():
            yield record, struct.unpack_from("<L", data, record + 42)[0]


def insert_before_entry(data: bytes, name: str, junk: bytes) -> bytes:
    """Insert ``junk`` just before ``name``'s local header, with every offset that follows
    (central records and the directory's own) moved along: a gap nothing lists."""
    (_, local), *_ = _entries_named(data, name)
    out = bytearray(data[:local] + junk + data[local:])
    shift = len(junk)
    for record in _central_records(bytes(out)):
        (offset,) = struct.unpack_from("<L", out, record + 42)
        if offset >= local:
            struct.pack_into("<L", out, record + 42, offset + shift)
    end = out.rfind(b"PK\x05\x06")
    (directory,) = struct.unpack_from("<L", out, end + 16)
    struct.pack_into("<L", out, end + 16, directory + shift)
    return bytes(out)


def streamed(files: dict[str, bytes | str]) -> bytes:
    """A zip written the way streaming writers write one: each entry's CRC and sizes in a
    data descriptor after its data (general purpose flag bit 3)."""

    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, chunk: bytes) -> int:  # type: ignore[override]
            self.chunks.append(bytes(chunk))
            return len(chunk)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            with archive.open(name, "w") as member:
                member.write(content.encode() if isinstance(content, str) else content)
    return b"".join(sink.chunks)
