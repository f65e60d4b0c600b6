"""Every hostile or malformed package is refused with a 400 naming why, and nothing is kept."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Callable

import pytest
from django.test import override_settings

from kohakku_controller.skills.models import SkillVersion

from .conftest import stored_names
from .zips import (
    build_zip,
    declare_size,
    insert_before_entry,
    manifest_text,
    package,
    patch_local_header,
    point_entry_at,
    set_encrypted_flag,
    streamed,
)

Builder = Callable[[str], bytes]


def _with_manifest(slug: str, files: dict[str, bytes | str], **kwargs) -> bytes:
    return build_zip({"SKILL.md": manifest_text(slug), **files}, **kwargs)


def _front_matter(text: str) -> Builder:
    return lambda slug: build_zip({"SKILL.md": text.replace("SLUG", slug)})


def _overlapping(slug: str) -> bytes:
    # Two entries share one compressed stream: the classic overlapping-entry bomb layout.
    data = _with_manifest(slug, {"a.bin": b"A" * 4096, "b.bin": b"B" * 4096})
    return point_entry_at(data, "b.bin", "a.bin")


def _with_tail_gap(data: bytes) -> bytes:
    # 64 bytes nothing lists, between the last entry's data and the central directory.
    directory = data.find(b"PK\x01\x02")
    out = bytearray(data[:directory] + b"\0" * 64 + data[directory:])
    end = out.rfind(b"PK\x05\x06")
    struct.pack_into("<L", out, end + 16, directory + 64)
    return bytes(out)


def _truncated(slug: str) -> bytes:
    data = package(slug)
    return data[: len(data) // 2]


def _corrupt_data(slug: str) -> bytes:
    data = bytearray(build_zip({"SKILL.md": manifest_text(slug)}, compression=zipfile.ZIP_STORED))
    position = data.find(b"description")
    data[position] ^= 0xFF  # the CRC no longer matches
    return bytes(data)


def _raw_front_matter(text: bytes) -> Builder:
    return lambda slug: build_zip({"SKILL.md": text.replace(b"SLUG", slug.encode())})


def _misdeclared(real: int, declared: int, compression: int = zipfile.ZIP_DEFLATED) -> Builder:
    """``data.bin`` holds ``real`` bytes; its headers declare ``declared`` bytes, with the
    CRC of what zipfile would read (the first ``declared`` bytes), so zipfile accepts it."""
    content = bytes(range(256)) * (real // 256)

    def build(slug: str) -> bytes:
        data = _with_manifest(slug, {"data.bin": content}, compression=compression)
        return declare_size(data, "data.bin", declared, zlib.crc32(content[:declared]))

    return build


def _deep_yaml(slug: str) -> bytes:
    nested = (
        "metadata:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, 12)) + "  " * 12 + "x: 1\n"
    )
    return build_zip({"SKILL.md": manifest_text(slug, extra=nested)})


CASES: dict[str, tuple[Builder, str]] = {
    "empty-file": (lambda slug: b"", "empty"),
    "not-a-zip": (lambda slug: b"this is plain text, not an archive" * 10, "not a zip"),
    "truncated-zip": (_truncated, "not a zip"),
    "corrupt-entry-data": (_corrupt_data, "corrupt"),
    "empty-zip": (lambda slug: build_zip({}), "no files"),
    "bomb-by-ratio": (
        lambda slug: _with_manifest(slug, {"zeros.bin": b"\0" * (4 * 1024 * 1024)}),
        "zip bomb",
    ),
    "overlapping-entries": (_overlapping, "overlap"),
    # A zip (with a traversal and a link) hidden in front of a valid package: zipfile reads
    # the last directory only, a streaming extractor the first local headers.
    "hidden-zip-before-the-first-entry": (
        lambda slug: _with_manifest(slug, {"../evil.sh": "x"}) + package(slug),
        "before its first entry",
    ),
    "hidden-entry-between-entries": (
        lambda slug: insert_before_entry(
            package(slug), "run.py", build_zip({"../evil.sh": "x"})[:-22]
        ),
        "data between entry 'SKILL.md' and 'run.py'",
    ),
    "data-between-the-last-entry-and-the-directory": (
        lambda slug: _with_tail_gap(package(slug)),
        "and the archive's directory",
    ),
    "symlink": (
        lambda slug: _with_manifest(slug, {"link": "/etc/passwd"}, mode_bits={"link": 0o120777}),
        "symbolic link",
    ),
    "symlink-in-a-zip-made-on-fat": (
        lambda slug: _with_manifest(
            slug, {"link": "/etc/passwd"}, mode_bits={"link": 0o120777}, create_system=0
        ),
        "symbolic link",
    ),
    "symlink-in-a-zip-made-on-macos": (
        lambda slug: _with_manifest(
            slug, {"link": "/etc/passwd"}, mode_bits={"link": 0o120777}, create_system=19
        ),
        "symbolic link",
    ),
    # Streaming extractors read local headers: they must say what the directory says.
    "local-header-with-another-method": (
        lambda slug: patch_local_header(
            _with_manifest(slug, {"data.bin": b"x" * 100}, compression=zipfile.ZIP_DEFLATED),
            "data.bin",
            method=zipfile.ZIP_STORED,
        ),
        "local header disagrees",
    ),
    "local-header-with-another-size": (
        lambda slug: patch_local_header(
            _with_manifest(slug, {"data.bin": b"x" * 100}), "data.bin", size=5000
        ),
        "local header disagrees",
    ),
    "entry-larger-than-declared": (_misdeclared(real=4096, declared=1000), "'data.bin'"),
    "stored-entry-larger-than-declared": (
        _misdeclared(real=4096, declared=1000, compression=zipfile.ZIP_STORED),
        "'data.bin'",
    ),
    "entry-smaller-than-declared": (
        _misdeclared(real=4096, declared=5000),
        "'data.bin' decompresses to 4096 bytes but its header says 5000",
    ),
    "fifo": (
        lambda slug: _with_manifest(slug, {"pipe": ""}, mode_bits={"pipe": 0o010644}),
        "not a regular file",
    ),
    "encrypted-flag": (lambda slug: set_encrypted_flag(package(slug)), "encrypted"),
    "dot-dot": (lambda slug: _with_manifest(slug, {"../evil.sh": "x"}), "'..'"),
    "dot-dot-inside": (lambda slug: _with_manifest(slug, {"a/../../evil.sh": "x"}), "'..'"),
    "absolute-path": (lambda slug: _with_manifest(slug, {"/etc/cron.d/evil": "x"}), "absolute"),
    "drive-letter": (lambda slug: _with_manifest(slug, {"C:/evil.bat": "x"}), "absolute"),
    "backslash": (lambda slug: _with_manifest(slug, {"scripts\\evil.bat": "x"}), "backslash"),
    "duplicate-name": (
        lambda slug: build_zip([("SKILL.md", manifest_text(slug)), ("a.txt", "1"), ("a.txt", "2")]),
        "more than once",
    ),
    "case-collision": (
        lambda slug: _with_manifest(slug, {"docs/Readme.md": "1", "docs/README.md": "2"}),
        "collide",
    ),
    "file-and-folder": (lambda slug: _with_manifest(slug, {"a": "1", "a/b": "2"}), "also a folder"),
    "missing-skill-md": (lambda slug: build_zip({"README.md": "hello"}), "no SKILL.md"),
    "skill-md-two-levels-deep": (
        lambda slug: build_zip({"a/b/SKILL.md": manifest_text(slug)}),
        "no SKILL.md",
    ),
    "skill-md-under-one-of-two-folders": (
        lambda slug: build_zip({"a/SKILL.md": manifest_text(slug), "b/x.txt": "x"}),
        "no SKILL.md",
    ),
    "lowercase-skill-md": (
        lambda slug: build_zip({"skill.md": manifest_text(slug)}),
        "no SKILL.md",
    ),
    "no-front-matter": (_front_matter("# SLUG\n\nNo front matter.\n"), "must start with YAML"),
    "unclosed-front-matter": (_front_matter("---\nname: SLUG\ndescription: x\n"), "no closing"),
    "front-matter-not-mapping": (_front_matter("---\n- SLUG\n- x\n---\n"), "mapping"),
    "malformed-yaml": (_front_matter("---\nname: [SLUG\ndescription: x\n---\n"), "not valid YAML"),
    "missing-name": (_front_matter("---\ndescription: x\n---\n"), "needs a 'name'"),
    "name-not-string": (_front_matter("---\nname: 12\ndescription: x\n---\n"), "needs a 'name'"),
    "name-bad-characters": (
        _front_matter("---\nname: Code_Review\ndescription: x\n---\n"),
        "lowercase",
    ),
    "name-double-hyphen": (_front_matter("---\nname: a--b\ndescription: x\n---\n"), "single"),
    "name-differs-from-slug": (
        _front_matter("---\nname: other-skill\ndescription: x\n---\n"),
        "does not match",
    ),
    "missing-description": (_front_matter("---\nname: SLUG\n---\n"), "needs a 'description'"),
    "description-too-long": (
        _front_matter("---\nname: SLUG\ndescription: " + "x" * 1025 + "\n---\n"),
        "longer than 1024",
    ),
    "metadata-not-mapping": (
        _front_matter("---\nname: SLUG\ndescription: x\nmetadata: 3\n---\n"),
        "'metadata' must",
    ),
    "entrypoint-on-two-lines": (
        _front_matter(
            "---\nname: SLUG\ndescription: x\nmetadata:\n"
            '  entrypoint: "python run.py\\nrm -rf /"\n---\n'
        ),
        "on one line",
    ),
    "entrypoint-not-string": (
        _front_matter("---\nname: SLUG\ndescription: x\nmetadata:\n  entrypoint: [a, b]\n---\n"),
        "entrypoint",
    ),
    "yaml-python-tag": (
        _front_matter("---\nname: SLUG\ndescription: !!python/object/apply:os.system [id]\n---\n"),
        "tags",
    ),
    "yaml-custom-tag": (_front_matter("---\nname: SLUG\ndescription: !secret x\n---\n"), "tags"),
    "yaml-anchors-aliases": (
        _front_matter("---\nname: SLUG\ndescription: x\na: &a [1, 2]\nb: [*a, *a, *a]\n---\n"),
        "anchors or aliases",
    ),
    "yaml-too-deep": (_deep_yaml, "nested deeper"),
    "yaml-impossible-date": (
        _front_matter("---\nname: SLUG\ndescription: x\nreleased: 2026-02-30\n---\n"),
        "front matter has a value that cannot be read",
    ),
    "yaml-huge-integer": (
        _front_matter("---\nname: SLUG\ndescription: x\nsize: " + "9" * 5000 + "\n---\n"),
        "front matter has a value that cannot be read",
    ),
    "nul-in-a-value": (
        _front_matter('---\nname: SLUG\ndescription: "a\\0b"\n---\n'),
        "the string at description contains a NUL character",
    ),
    "lone-surrogate-in-a-value": (
        _front_matter('---\nname: SLUG\ndescription: x\nnotes: "\\ud800"\n---\n'),
        "the string at notes contains half of a surrogate pair",
    ),
    "nul-in-a-key": (
        _front_matter('---\nname: SLUG\ndescription: x\n"a\\0b": 1\n---\n'),
        "a key in the top-level object contains a NUL character",
    ),
    "lone-surrogate-in-nested-metadata": (
        _front_matter('---\nname: SLUG\ndescription: x\nmetadata:\n  tags: [a, "\\udc00"]\n---\n'),
        "the string at metadata.tags[1] contains half of a surrogate pair",
    ),
    "nul-in-entrypoint": (
        _front_matter('---\nname: SLUG\ndescription: x\nmetadata:\n  entrypoint: "run\\0"\n---\n'),
        "the string at metadata.entrypoint contains a NUL character",
    ),
    "lone-surrogate-in-entrypoint": (
        _front_matter(
            '---\nname: SLUG\ndescription: x\nmetadata:\n  entrypoint: "run \\udfff"\n---\n'
        ),
        "the string at metadata.entrypoint contains half of a surrogate pair",
    ),
    "front-matter-not-utf8": (
        _raw_front_matter(b"---\nname: SLUG\ndescription: caf\xe9\n---\n"),
        "front matter is not UTF-8 text (line 3)",
    ),
    "name-with-bytes-not-utf8": (
        _raw_front_matter(b"---\nname: SLUG\xff\ndescription: x\n---\n"),
        "front matter is not UTF-8 text (line 2)",
    ),
    "encoded-surrogate-in-front-matter": (
        _raw_front_matter(b"---\nname: SLUG\ndescription: \xed\xa0\x80\n---\n"),
        "not UTF-8",
    ),
    "yaml-too-large": (
        _front_matter("---\nname: SLUG\ndescription: x\nnotes: " + "y" * (70 * 1024) + "\n---\n"),
        "larger than",
    ),
    "yaml-too-large-unclosed": (
        _front_matter("---\nname: SLUG\ndescription: x\n" + "k: v\n" * 20000),
        "larger than",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_upload_is_refused_and_nothing_is_kept(case, skill, upload):
    builder, reason = CASES[case]

    response = upload(skill.slug, builder(skill.slug))

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["file"]
    assert reason in response.json()["file"][0]
    assert not SkillVersion.objects.filter(skill=skill).exists()
    assert stored_names(skill.slug) == []
    skill.refresh_from_db()
    assert skill.last_version_number == 0


def test_bomb_by_total_is_refused(skill, upload):
    # Each entry compresses modestly (ratio below the cap) but together they exceed the total.
    chunk = os.urandom(64 * 1024) * 4
    files = {f"part{i}.bin": chunk for i in range(6)}
    data = _with_manifest(skill.slug, files)
    with override_settings(
        KOHAKKU_CONTROLLER={"SKILL_PACKAGE_MAX_UNCOMPRESSED_BYTES": 1024 * 1024}
    ):
        response = upload(skill.slug, data)
    assert response.status_code == 400
    assert "at most 1048576" in response.json()["file"][0]
    assert stored_names(skill.slug) == []


def test_headers_that_understate_sizes_are_refused(skill, upload):
    """Declared sizes are only used to refuse early, never to accept a package."""
    data = bytearray(_with_manifest(skill.slug, {"big.bin": b"\0" * (512 * 1024)}))
    record = data.rfind(b"PK\x01\x02", 0, data.rfind(b"big.bin"))  # central record
    struct.pack_into("<L", data, record + 24, 10)  # uncompressed size: "10 bytes"
    response = upload(skill.slug, bytes(data))
    assert response.status_code == 400
    # The local header still tells the truth, so the two headers disagree.
    assert "local header disagrees" in response.json()["file"][0]
    assert stored_names(skill.slug) == []


def test_too_many_files(skill, upload):
    data = _with_manifest(skill.slug, {f"f{i}.txt": "x" for i in range(5)})
    with override_settings(KOHAKKU_CONTROLLER={"SKILL_PACKAGE_MAX_FILES": 4}):
        response = upload(skill.slug, data)
    assert response.status_code == 400
    assert "at most 4" in response.json()["file"][0]


def test_ratio_cap_is_a_setting(skill, upload):
    data = _with_manifest(skill.slug, {"zeros.bin": b"\0" * (2 * 1024 * 1024)})
    with override_settings(KOHAKKU_CONTROLLER={"SKILL_PACKAGE_MAX_COMPRESSION_RATIO": 10_000}):
        response = upload(skill.slug, data)
    assert response.status_code == 201, response.content


def test_body_over_the_limit_is_413_while_streaming(skill, upload):
    data = package(skill.slug, extra={"blob.bin": os.urandom(8 * 1024)})
    with override_settings(KOHAKKU_CONTROLLER={"SKILL_PACKAGE_MAX_BYTES": 4 * 1024}):
        response = upload(skill.slug, data)
    assert response.status_code == 413
    assert "larger than 4096 bytes" in response.json()["detail"]
    assert stored_names(skill.slug) == []


def test_body_over_the_limit_is_413_from_content_length(skill, upload):
    data = package(skill.slug, extra={"blob.bin": os.urandom(200 * 1024)})
    with override_settings(KOHAKKU_CONTROLLER={"SKILL_PACKAGE_MAX_BYTES": 4 * 1024}):
        response = upload(skill.slug, data)
    assert response.status_code == 413
    assert not SkillVersion.objects.filter(skill=skill).exists()


def test_no_file_field(skill, staff_client):
    response = staff_client.post(f"/api/v1/skills/{skill.slug}/upload/", {}, format="multipart")
    assert response.status_code == 400
    assert "file" in response.json()


def test_file_field_is_not_a_file(skill, staff_client):
    response = staff_client.post(
        f"/api/v1/skills/{skill.slug}/upload/", {"file": "just text"}, format="multipart"
    )
    assert response.status_code == 400
    assert "file" in response.json()


def test_json_body_is_415(skill, staff_client):
    response = staff_client.post(
        f"/api/v1/skills/{skill.slug}/upload/", {"file": "x"}, format="json"
    )
    assert response.status_code == 415


def test_unknown_slug_is_404(db, upload):
    response = upload("no-such-skill")
    assert response.status_code == 404
    assert stored_names("no-such-skill") == []


@pytest.mark.parametrize("signature", [True, False], ids=["signed", "unsigned"])
def test_zips_written_by_streaming_writers_are_accepted(skill, upload, signature):
    # Each entry's sizes follow its data in a descriptor (12 bytes, or 16 with its signature).
    data = streamed({"SKILL.md": manifest_text(skill.slug), "run.py": "print(1)\n"})
    assert data.count(b"PK\x07\x08") == 2
    if not signature:
        data = data.replace(b"PK\x07\x08", b"")
        data = _shift_offsets_for_removed_signatures(data)
    response = upload(skill.slug, data)
    assert response.status_code == 201, response.content


def _shift_offsets_for_removed_signatures(data: bytes) -> bytes:
    """Fix the offsets of a streamed zip whose two descriptor signatures were cut out."""
    out = bytearray(data)
    records = []
    position = 0
    while (position := data.find(b"PK\x01\x02", position)) != -1:
        records.append(position)
        position += 4
    for index, record in enumerate(records):  # the second entry moved up by 4 bytes
        (offset,) = struct.unpack_from("<L", out, record + 42)
        struct.pack_into("<L", out, record + 42, offset - 4 * index)
    end = out.rfind(b"PK\x05\x06")
    struct.pack_into("<L", out, end + 16, records[0])
    return bytes(out)


# Windows tools leave the mode bits 0; Python on Windows writes st_mode there.
@pytest.mark.parametrize("mode_bits", [0, 0o100666], ids=["no-mode", "regular-file"])
def test_zips_made_on_windows_are_accepted(skill, upload, mode_bits):
    files = {"SKILL.md": manifest_text(skill.slug), "run.py": "print(1)\n"}
    data = build_zip(files, mode_bits=dict.fromkeys(files, mode_bits), create_system=0)
    response = upload(skill.slug, data)
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("padding", ["", "x"])
def test_a_character_cut_off_after_the_front_matter_is_tolerated(skill, upload, padding):
    # Only the head of a large SKILL.md is read; it may end inside a two-byte character.
    body = padding + "é" * 50_000
    response = upload(skill.slug, build_zip({"SKILL.md": manifest_text(skill.slug) + body}))
    assert response.status_code == 201, response.content
    assert SkillVersion.objects.get(skill=skill).manifest["description"] == (
        "Reviews code for quality."
    )
