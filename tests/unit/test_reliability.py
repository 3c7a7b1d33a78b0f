"""Every row source of docs/reliability.md names a test that exists: a test file that moves
must not drop out of the report without a word."""

import ast
from pathlib import Path

import pytest

from tests.reliability import AREAS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("where", sorted(AREAS))
def test_the_report_names_tests_that_exist(where):
    file, _, function = where.partition("::")
    path = REPO / file
    assert path.is_file(), f"{file} is gone: update tests/reliability.py AREAS"
    if function:
        tree = ast.parse(path.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in names, f"{where} is gone: update tests/reliability.py AREAS"
