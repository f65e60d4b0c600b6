"""The Python examples in the README and docs/ are valid Python, so they can be pasted."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [
    pytest.param(
        # A block inside a list item is indented with the item.
        textwrap.dedent(match.group(1)),
        id=f"{page.name}:{page.read_text()[: match.start()].count(chr(10)) + 1}",
    )
    for page in PAGES
    for match in re.finditer(r"```python\n(.*?)^ *```", page.read_text(), re.S | re.M)
]


def test_the_docs_have_python_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("code", EXAMPLES)
def test_a_python_example_compiles(code):
    compile(code, "<example>", "exec")
