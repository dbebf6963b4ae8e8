"""The documents in the repository stay true: docs/RELIABILITY.md names only tests that exist and says, row by row,
how far each promise is tested; the READMEs point at nothing outside the repository."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
READMES = [ROOT / "README.md", ROOT / "featkit" / "recipes" / "README.md"]
REFERENCE = re.compile(r"tests/([\w/]+\.py)::(\w+)")
ROWS = range(1, 31)


@cache
def defined_tests(relative: str) -> frozenset[str]:
    """Names of the test functions defined in ``tests/<relative>``, at module level or in a class."""
    tree = ast.parse((ROOT / "tests" / relative).read_text())
    return frozenset(node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"))


def status(text: str) -> str:
    text = text.strip().lower()
    for word in ("yes", "partly", "not yet"):
        if text.startswith(word):
            return word
    raise AssertionError(f"unknown test status {text!r}")


def table_rows() -> dict[int, str]:
    """Row number -> the Tested column of the promises table."""
    rows = {}
    for line in RELIABILITY.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            assert len(cells) == 4, line
            rows[int(cells[0])] = status(cells[3])
    return rows


def row_entries() -> dict[int, tuple[str, str]]:
    """Row number -> (status, text) of its entry in "The tests, row by row"."""
    section = RELIABILITY.read_text().split("## The tests, row by row", 1)[1].split("\n## ", 1)[0]
    entries = {}
    for item in re.split(r"\n- (?=\*\*Row )", section)[1:]:
        match = re.match(r"\*\*Row (\d+)\*\* \(([^)]*)\)", item)
        assert match, item[:80]
        entries[int(match[1])] = (status(match[2]), item)
    return entries


def test_every_test_named_in_reliability_md_exists():
    references = REFERENCE.findall(RELIABILITY.read_text())
    assert len(references) > 30
    missing = [f"tests/{path}::{name}" for path, name in references
               if not (ROOT / "tests" / path).is_file() or name not in defined_tests(path)]
    assert not missing, f"docs/RELIABILITY.md names tests that do not exist: {missing}"


def test_every_promise_has_one_status_and_one_entry_that_agree():
    table, entries = table_rows(), row_entries()
    assert list(table) == list(ROWS) and sorted(entries) == list(ROWS)
    for row in ROWS:
        kept, text = entries[row]
        assert kept == table[row], f"row {row}: the table says {table[row]!r}, its entry says {kept!r}"
        if kept in ("yes", "partly"):
            assert REFERENCE.search(text), f"row {row} is {kept!r} but names no test"
        if kept == "partly":
            assert "Not yet" in text, f"row {row} is partly tested but does not say what is not yet"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readmes_point_at_nothing_outside_the_repository(readme):
    text = readme.read_text()
    assert "../shared" not in text
    assert "shared/docs" not in text


def test_the_readme_points_at_the_reliability_document_in_the_repository():
    assert RELIABILITY.is_file()
    assert "docs/RELIABILITY.md" in (ROOT / "README.md").read_text()
