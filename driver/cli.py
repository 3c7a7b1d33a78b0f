"""`cilium`: the command line for the driver's management API."""

import json
import sys

import click

from .client import ApiClient
from .config import Config, env_name
from .errors import DriverError


@click.group()
@click.option(
    "--socket",
    "socket_path",
    envvar=env_name("api_socket"),
    default=Config.api_socket,
    show_default=True,
    help="management API socket of the driver",
)
@click.pass_context
def main(ctx, socket_path):
    """Inspect and steer the pycilium driver."""
    ctx.obj = ApiClient(socket_path)


def _call(client: ApiClient, path: str):
    try:
        return client.get(path)
    except DriverError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


def _table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
@click.pass_obj
def status(client, as_json):
    """Health of the driver in one screen; exit code 1 when it does not answer."""
    data = _call(client, "/v1/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    node = data["node"]
    click.echo(f"Node:        {node['id']}")
    click.echo(f"IPv6 range:  {node['ipv6_range']} (router {node['ipv6_router']})")
    click.echo(f"IPv4 range:  {node['ipv4_range']} (router {node['ipv4_router']})")
    click.echo(f"Networks:    {data['networks']}")
    click.echo(f"Endpoints:   {data['endpoints']}")
    click.echo(f"BPF compiles: {data['datapath']['compile_count']}")
    drops = data["datapath"]["drops"]
    click.echo("Drops:       " + (", ".join(f"{k} {v}" for k, v in drops.items() if v) or "none"))


@main.group()
def endpoint():
    """Container endpoints."""


@endpoint.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
@click.pass_obj
def endpoint_list(client, as_json):
    """Every endpoint: id, container side, addresses, network."""
    eps = _call(client, "/v1/endpoints")
    if as_json:
        click.echo(json.dumps(eps, indent=2))
        return
    _table(
        ["ENDPOINT", "INTERFACE", "IPv6", "IPv4", "MAC", "NETWORK"],
        [
            [
                e["numeric_id"],
                e["host_ifname"],
                e["ipv6"],
                e["ipv4"],
                e["mac"],
                e["network_id"][:12],
            ]
            for e in eps
        ],
    )


@main.group()
def network():
    """Docker networks of this driver."""


@network.command("list")
@click.pass_obj
def network_list(client):
    """Every network: id, pools, gateways."""
    nets = _call(client, "/v1/networks")
    _table(
        ["NETWORK", "IPv6 POOL", "IPv6 GATEWAY", "IPv4 POOL", "IPv4 GATEWAY", "MTU"],
        [
            [n["network_id"][:12], n["pool6"], n["gateway6"], n["pool4"], n["gateway4"], n["mtu"]]
            for n in nets
        ],
    )
