"""Drop reasons and trace points, read from the C headers that define them.

The headers are the one source of truth: ``lib/drop.h`` for drop reasons,
``lib/trace.h`` for the places an accepted packet goes and ``lib/flowlog.h`` for the
policy key that admitted a new flow.
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

BPF_LIB = Path(__file__).parent / "bpf" / "lib"
DROP_HEADER = BPF_LIB / "drop.h"
TRACE_HEADER = BPF_LIB / "trace.h"
FLOWLOG_HEADER = BPF_LIB / "flowlog.h"

_ENUM_RE = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.S)
_ENUMERATOR_RE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*(-?\d+)\s*,\s*(?:/\*\s*(.*?)\s*\*/)?")


@dataclass(frozen=True)
class Code:
    name: str
    value: int
    description: str


def parse_enum(text: str, enum_name: str) -> list[Code]:
    """The enumerators of ``enum <enum_name>`` in C source text, in order."""
    for match in _ENUM_RE.finditer(text):
        if match.group(1) == enum_name:
            return [
                Code(m.group(1), int(m.group(2)), m.group(3) or m.group(1))
                for m in map(_ENUMERATOR_RE.match, match.group(2).splitlines())
                if m
            ]
    raise ValueError(f"enum {enum_name} not found")


def parse_define(text: str, name: str) -> int:
    match = re.search(rf"^#define\s+{name}\s+(\d+)\s*$", text, re.M)
    if not match:
        raise ValueError(f"#define {name} not found")
    return int(match.group(1))


@functools.cache
def drop_reasons() -> tuple[Code, ...]:
    """Drop reasons (negative values); the drop_counts slot of a reason is ``-value``."""
    return tuple(parse_enum(DROP_HEADER.read_text(), "drop_reason"))


@functools.cache
def drop_reason_max() -> int:
    return parse_define(DROP_HEADER.read_text(), "DROP_REASON_MAX")


@functools.cache
def trace_points() -> tuple[Code, ...]:
    """Trace points; the trace_counts slot of a point is its value."""
    return tuple(parse_enum(TRACE_HEADER.read_text(), "trace_point"))


@functools.cache
def trace_point_max() -> int:
    return parse_define(TRACE_HEADER.read_text(), "TRACE_POINT_MAX")


@functools.cache
def policy_matches() -> tuple[Code, ...]:
    """Which policy key admitted a new flow: the code of a flow event (lib/flowlog.h)."""
    return tuple(parse_enum(FLOWLOG_HEADER.read_text(), "policy_match"))
