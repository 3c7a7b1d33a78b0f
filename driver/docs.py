"""README sections generated from the code, so the documented options and commands cannot
drift: `python -m driver.docs` rewrites them; a test checks they are current."""

import dataclasses
import sys
from pathlib import Path

import click

from .cli.main import main as cli_main
from .config import Config, env_name
from .server.main import main as service_main

SECTIONS = ("cli-reference", "config-reference")


def cli_reference() -> str:
    lines = []
    for path, command in _commands(cli_main, ("cilium",)):
        if isinstance(command, click.Group):
            continue
        usage = " ".join(path + tuple(command.collect_usage_pieces(click.Context(command))))
        lines.append(f"- `{usage}`: {_first_line(command.help)}")
    return "\n".join(lines)


def config_reference() -> str:
    rows = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    options = {p.name: p for p in service_main.params if isinstance(p, click.Option)}
    for f in dataclasses.fields(Config):
        if f.name not in options:
            continue
        option = options[f.name]
        # A repeatable option's default is a tuple: shown as its values, space-separated.
        value = " ".join(f.default) if isinstance(f.default, tuple) else str(f.default)
        default = value.replace("|", "\\|") or '""'
        rows.append(f"| `{option.opts[0]}` | `{env_name(f.name)}` | `{default}` | {option.help} |")
    return "\n".join(rows)


def _commands(command: click.Command, path: tuple[str, ...]):
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _commands(command.commands[name], (*path, name))


def _first_line(text: str | None) -> str:
    return " ".join((text or "").split("\n\n")[0].split())


def generated() -> dict[str, str]:
    return {"cli-reference": cli_reference(), "config-reference": config_reference()}


def render(readme: str) -> str:
    """The README with every generated section replaced by today's text."""
    for name, body in generated().items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        head, found, rest = readme.partition(start)
        if not found:
            raise ValueError(f"README has no {start} marker")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"README has no {end} marker")
        readme = f"{head}{start}\n{body}\n{end}{tail}"
    return readme


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(render(readme.read_text()))
