"""The Python drop-reason table is the C header's, as the C compiler reads it."""

import re
import shutil
import subprocess

import pytest

from datapath import reasons


def _enum_body(text: str, name: str) -> str:
    return re.search(rf"enum {name} \{{(.*?)\}};", text, re.S).group(1)


def test_every_enumerator_is_parsed():
    body = _enum_body(reasons.DROP_HEADER.read_text(), "drop_reason")
    names = re.findall(r"\b(DROP_[A-Z0-9_]+)\s*=", body)
    assert [r.name for r in reasons.drop_reasons()] == names


def test_reasons_are_unique_negative_and_fit_the_counter_array():
    values = [r.value for r in reasons.drop_reasons()]
    assert len(set(values)) == len(values)
    assert all(0 < -v < reasons.drop_reason_max() for v in values)
    assert all(r.description for r in reasons.drop_reasons())


@pytest.mark.parametrize(
    ("header", "enum", "table"),
    [
        (reasons.DROP_HEADER, "drop_reason", reasons.drop_reasons),
        (reasons.TRACE_HEADER, "trace_point", reasons.trace_points),
    ],
)
def test_table_matches_the_c_compiler(tmp_path, header, enum, table):
    """Compile the header's enum with the host C compiler and compare every value."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler to check the header with")
    body = _enum_body(header.read_text(), enum)
    names = re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", body)
    prints = "".join(f'printf("%s %d\\n", "{n}", (int){n});' for n in names)
    source = tmp_path / "enum.c"
    source.write_text(f"#include <stdio.h>\nenum {enum} {{{body}}};\nint main(void){{{prints}}}\n")
    binary = tmp_path / "enum"
    subprocess.run([cc, "-o", str(binary), str(source)], check=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    compiled = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    assert compiled == {code.name: code.value for code in table()}
