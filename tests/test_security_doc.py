"""docs/SECURITY.md points at tests that exist: each claim names the test that proves it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def referenced_tests() -> list[tuple[str, str]]:
    """(file, test) for every `file.py::test` and following `::test` in the document."""
    text = (PROJECT_ROOT / "docs" / "SECURITY.md").read_text()
    references = []
    current = None
    for file, test in re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)(?:\[[^\]]*\])?`", text):
        current = file or current
        assert current is not None, f"::{test} names no file before it"
        references.append((current, test))
    return references


def test_every_test_the_security_review_cites_exists() -> None:
    references = referenced_tests()
    assert len(references) > 40
    missing = []
    for file, test in references:
        tree = ast.parse((PROJECT_ROOT / "tests" / file).read_text())
        names = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if test not in names:
            missing.append(f"{file}::{test}")
    assert missing == []
