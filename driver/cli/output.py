"""How a `cilium` command calls the API and prints the answer: `-o table|json|yaml` comes from
here for every command that shows something."""

import functools
import json
import sys
from collections.abc import Callable, Iterable

import click
import yaml

from .client import ApiClient, ApiError

FORMATS = ("table", "json", "yaml")

_MACHINE = {
    "json": lambda data: json.dumps(data, indent=2) + "\n",
    "yaml": lambda data: yaml.safe_dump(data, sort_keys=False),
}
# A stream prints one event a line (JSON) or one document an event (YAML).
_STREAMED = {
    "json": lambda event: json.dumps(event) + "\n",
    "yaml": lambda event: yaml.safe_dump(event, sort_keys=False, explicit_start=True),
}


def output_option(formats: tuple[str, ...] = FORMATS):
    """-o/--output; the first format is the default."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(formats),
        default=formats[0],
        show_default=True,
        help="human table, JSON or YAML",
    )


def call(client: ApiClient, method: str, path: str, body=None):
    """The API's answer; a refusal or a driver that does not answer ends the command (exit 1)."""
    try:
        return client.request(method, path, body)
    except ApiError as exc:
        fail(str(exc))


def fail(message: str):
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def show(data, output: str, human: Callable) -> None:
    """data as JSON or YAML, or as `human` prints it."""
    if output in _MACHINE:
        click.echo(_MACHINE[output](data), nl=False)
    else:
        human(data)


def show_stream(events: Iterable[dict], output: str, line: Callable[[dict], str]) -> None:
    """Each event as it comes, until the stream ends or Ctrl-C."""
    try:
        for event in events:
            text = _STREAMED[output](event) if output in _STREAMED else line(event) + "\n"
            click.echo(text, nl=False)
    except ApiError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def getter(human: Callable | None = None):
    """A command that GETs the path the decorated function returns and shows the answer with
    -o; without `human` its only forms are JSON (the default) and YAML."""

    def decorate(path_of):
        @output_option(FORMATS if human else FORMATS[1:])
        @click.pass_obj
        @functools.wraps(path_of)
        def command(client, output, **arguments):
            show(call(client, "GET", path_of(**arguments)), output, human)

        return command

    return decorate


def table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def listing(headers: list[str], row: Callable[[dict], list]) -> Callable[[list[dict]], None]:
    """A table of one row an item."""
    return lambda items: table(headers, [row(item) for item in items])


def fields(pairs: Iterable[tuple[str, object]], width: int) -> None:
    """ "Name:   value" lines, values aligned at `width`."""
    for name, value in pairs:
        click.echo(f"{name + ':':<{width}}{value}")
