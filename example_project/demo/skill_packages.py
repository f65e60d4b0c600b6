"""Build the zip package of a skill kept as a folder in ``demo/skills/``."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

SKILLS_DIR = Path(__file__).resolve().parent / "skills"
# A fixed timestamp, so the same folder always gives the same bytes (and sha256).
_EPOCH = (2020, 1, 1, 0, 0, 0)


def build_skill_package(folder: Path) -> bytes:
    """Zip ``folder`` (files only, sorted, fixed timestamps) and return the bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), _EPOCH)
            info.external_attr = (0o100755 if path.stat().st_mode & 0o111 else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def demo_skill_package(name: str = "hello") -> bytes:
    """The zip of the demo skill ``name`` (``demo/skills/<name>/``)."""
    return build_skill_package(SKILLS_DIR / name)
