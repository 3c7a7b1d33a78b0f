"""load_documents: JSON or YAML text -> its documents as plain data, read strictly.

A duplicate key does not silently keep the last value, and a number YAML readers disagree on
(0443 is 291 to YAML 1.1, 443 to YAML 1.2; 0x1bb, 1_000, 1:30) is not converted: both come
back as markers (Duplicated, NotDecimal) that parse.py refuses where it reads them, with the
path it knows there.
"""

import json
import re

import yaml

from .model import PolicyError

# Values in a loaded document, counting each YAML alias as often as it is used: a few
# kilobytes of nested aliases ("billion laughs") would otherwise expand to billions.
MAX_NODES = 2_000_000
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")
# Plain scalars PyYAML reads as strings that other YAML readers read as numbers.
_NUMBER_LIKE = re.compile(r"[-+]?0([0-9_]+|o[0-7_]+)")
_MERGE = "tag:yaml.org,2002:merge"


class Duplicated(dict):
    """An object in which `duplicate` was given more than once."""

    def __init__(self, pairs, duplicate):
        super().__init__(pairs)
        self.duplicate = duplicate


class NotDecimal:
    """A YAML number not written in decimal, kept as written."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _StrictLoader(yaml.SafeLoader):
    def construct_yaml_map(self, node):
        seen, duplicate = set(), None
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node)
            if isinstance(key, str | int) and key in seen and duplicate is None:
                duplicate = key
            seen.add(key if isinstance(key, str | int) else id(key))
        data = {} if duplicate is None else Duplicated({}, duplicate)
        yield data
        data.update(self.construct_mapping(node))

    def construct_yaml_int(self, node):
        if not _DECIMAL.fullmatch(node.value):
            return NotDecimal(node.value)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        if ":" in node.value or "_" in node.value:
            return NotDecimal(node.value)
        return super().construct_yaml_float(node)

    def construct_yaml_str(self, node):
        if node.style is None and _NUMBER_LIKE.fullmatch(node.value):
            return NotDecimal(node.value)
        return super().construct_yaml_str(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:str", _StrictLoader.construct_yaml_str)


def load_documents(text: str, source: str) -> list:
    """The documents of a JSON text, or of a YAML stream (`---` separates documents; empty
    ones are left out)."""
    try:
        return [json.loads(text, object_pairs_hook=_json_object)]
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply") from None
    except ValueError as json_error:
        try:
            documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
        except RecursionError:
            raise PolicyError(f"{source}: nested too deeply") from None
        except yaml.YAMLError as yaml_error:
            if text.lstrip()[:1] in ("[", "{"):
                raise PolicyError(f"{source}: not JSON: {json_error}") from None
            raise PolicyError(f"{source}: not JSON or YAML: {_yaml_problem(yaml_error)}") from None
        _check_size(documents, source)
        return documents


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    data = dict(pairs)
    if len(data) == len(pairs):
        return data
    seen = set()
    duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
    return Duplicated(pairs, duplicate)


def _check_size(data, source: str) -> None:
    """Refuse a document whose aliases expand past MAX_NODES values (or refer to themselves)."""
    stack, count = [data], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise PolicyError(f"{source}: more than {MAX_NODES} values once YAML aliases expand")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
