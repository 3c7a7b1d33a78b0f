"""`cilium`: the command line for the driver's management API."""

import json
import sys

import click

from .client import API_SOCKET_ENV, DEFAULT_API_SOCKET, ApiClient, ApiError

PROTOCOL_NAMES = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
DIRECTIONS = {0: "ingress", 1: "egress"}
# `cilium status` warns, and exits 3, when a BPF map is this full.
MAP_FILL_WARNING = 0.9


@click.group()
@click.option(
    "--socket",
    "socket_path",
    envvar=API_SOCKET_ENV,
    default=DEFAULT_API_SOCKET,
    show_default=True,
    help="management API socket of the driver",
)
@click.pass_context
def main(ctx, socket_path):
    """Inspect and steer the pycilium driver."""
    ctx.obj = ApiClient(socket_path)


output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="human table or raw JSON",
)


def _call(client: ApiClient, method: str, path: str, body=None):
    try:
        return client.request(method, path, body)
    except ApiError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


def _json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _labels(labels: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _parse_labels(text: str) -> dict:
    labels = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        labels[key] = value
    return labels


@main.command()
@output_option
@click.pass_obj
def status(client, output):
    """Health of the driver in one screen. Exit code 0 when healthy, 1 when the driver does
    not answer, 2 when it cannot follow Docker's events (endpoints would wait for identity),
    3 when a BPF map is 90% full or more."""
    data = _call(client, "GET", "/v1/status")
    if output == "json":
        _json(data)
        return
    node, policy = data["node"], data["policy"]
    drops = data["datapath"]["drops"]
    lines = [
        ("Driver", "ok"),
        ("Docker events", "connected" if data["docker_events"] else "NOT connected"),
        ("Kernel", _kernel(data["kernel"])),
        ("Node", node["id"]),
        ("IPv6 range", f"{node['ipv6_range']} (router {node['ipv6_router']})"),
        ("IPv4 range", f"{node['ipv4_range']} (router {node['ipv4_router']})"),
        ("Networks", data["networks"]),
        ("Endpoints", f"{data['endpoints']} ({data['waiting']} waiting for identity)"),
        ("Identities", data["identities"]),
        ("Policy", f"revision {policy['revision']}, {policy['rules']} rules, {policy['mode']}"),
        ("BPF compiles", data["datapath"]["compile_count"]),
        ("Drops", ", ".join(f"{k} {v}" for k, v in drops.items() if v) or "none"),
        ("BPF maps", _maps(data["datapath"].get("maps", {}))),
        ("Metrics", _metrics(data.get("metrics") or {})),
    ]
    for name, value in lines:
        click.echo(f"{name + ':':<15}{value}")
    if not data["docker_events"]:
        sys.exit(2)
    if _full_maps(data["datapath"].get("maps", {})):
        sys.exit(3)


def _fill(entry: dict) -> float:
    return entry["entries"] / entry["capacity"] if entry["capacity"] else 0.0


def _full_maps(maps: dict) -> list[str]:
    return sorted(name for name, entry in maps.items() if _fill(entry) >= MAP_FILL_WARNING)


def _maps(maps: dict) -> str:
    """The fullest map, or a warning naming every map near its capacity."""
    if not maps:
        return "unknown"

    def text(name):
        entry = maps[name]
        return f"{name} {entry['entries']}/{entry['capacity']} ({_fill(entry):.0%})"

    full = _full_maps(maps)
    if full:
        return "WARNING nearly full: " + ", ".join(text(name) for name in full)
    return f"{len(maps)} ok, fullest {text(max(maps, key=lambda name: _fill(maps[name])))}"


def _metrics(metrics: dict) -> str:
    address = metrics.get("address")
    tcp = f" and http://{address}/metrics" if address else ""
    return f"/metrics on the API socket{tcp}"


def _kernel(kernel: dict) -> str:
    features = [name for name in ("bpf_jit", "btf") if kernel.get(name)]
    missing = [f"no {name}" for name in ("bpf_jit", "btf") if not kernel.get(name)]
    return f"{kernel['release']} ({', '.join(features + missing)})"


@main.group()
def endpoint():
    """Container endpoints."""


@endpoint.command("list")
@output_option
@click.pass_obj
def endpoint_list(client, output):
    """Every endpoint: id, container, identity, labels, addresses, state."""
    eps = _call(client, "GET", "/v1/endpoints")
    if output == "json":
        _json(eps)
        return
    _table(
        ["ENDPOINT", "CONTAINER", "IDENTITY", "LABELS", "IPv6", "IPv4", "POLICY IN/OUT", "STATE"],
        [
            [
                e["numeric_id"],
                e["container_name"],
                e["identity"],
                _labels(e["labels"]),
                e["ipv6"],
                e["ipv4"],
                "/".join("on" if e["enforcement"][d] else "off" for d in ("ingress", "egress")),
                e["state"],
            ]
            for e in eps
        ],
    )


@endpoint.command("get")
@click.argument("ref")
@output_option
@click.pass_obj
def endpoint_get(client, ref, output):
    """One endpoint (id, container name or id) with its policy."""
    ep = _call(client, "GET", f"/v1/endpoints/{ref}")
    if output == "json":
        _json(ep)
        return
    policy = ep["policy"]
    for name, value in (
        ("Endpoint", ep["numeric_id"]),
        ("Container", f"{ep['container_name']} ({(ep['container_id'] or '')[:12]})"),
        ("Network", ep["network_id"][:12]),
        ("Identity", ep["identity"]),
        ("Labels", _labels(ep["labels"])),
        ("IPv6", ep["ipv6"]),
        ("IPv4", ep["ipv4"]),
        ("Interface", ep["host_ifname"]),
        ("Ports", ", ".join(_port_text(p) for p in ep["ports"]) or "none"),
        ("State", ep["state"]),
        ("Ingress policy", "enforced" if policy["ingress_enforced"] else "not enforced"),
        ("Egress policy", "enforced" if policy["egress_enforced"] else "not enforced"),
    ):
        click.echo(f"{name + ':':<16}{value}")
    _policy_table(policy["entries"])


def _port_text(p: dict) -> str:
    host = f"[{p['host_ip']}]" if ":" in p["host_ip"] else p["host_ip"] or "*"
    return f"{host}:{p['host_port']}->{p['port']}/{PROTOCOL_NAMES[p['protocol']].lower()}"


def _policy_table(entries: list[dict]) -> None:
    _table(
        ["DIRECTION", "IDENTITY", "PORT", "PROTOCOL", "PACKETS", "BYTES"],
        [
            [
                DIRECTIONS[e["direction"]],
                e["identity"] or "any",
                e["dport"] or "any",
                PROTOCOL_NAMES.get(e["protocol"], e["protocol"]),
                e["packets"],
                e["bytes"],
            ]
            for e in entries
        ],
    )


@main.group()
def identity():
    """Security identities."""


@identity.command("list")
@output_option
@click.pass_obj
def identity_list(client, output):
    """Every identity and its labels."""
    found = _call(client, "GET", "/v1/identities")
    if output == "json":
        _json(found)
        return
    _table(
        ["IDENTITY", "KIND", "LABELS"],
        [[i["identity"], i["kind"], _labels(i["labels"]) or i["key"]] for i in found],
    )


@identity.command("get")
@click.argument("number", type=int)
@output_option
@click.pass_obj
def identity_get(client, number, output):
    """One identity and the endpoints that have it."""
    found = _call(client, "GET", f"/v1/identities/{number}")
    if output == "json":
        _json(found)
        return
    click.echo(f"Identity:   {found['identity']} ({found['kind']})")
    click.echo(f"Labels:     {_labels(found.get('labels') or {}) or found['key']}")
    click.echo(f"Endpoints:  {', '.join(map(str, found.get('endpoints', []))) or 'none'}")


@main.group()
def policy():
    """L3/L4 policy rules."""


@policy.command("import")
@click.argument("source", type=click.File("r"))
@click.pass_obj
def policy_import(client, source):
    """Add rules from a JSON or YAML file (- for stdin); rules with the same labels replace."""
    result = _call(
        client, "PUT", "/v1/policy", {"text": source.read(), "source": source.name or "-"}
    )
    for warning in result.get("warnings", []):
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"Revision: {result['revision']}")


@policy.command("get")
@click.pass_obj
def policy_get(client):
    """The rules in force, as JSON."""
    _json(_call(client, "GET", "/v1/policy"))


@policy.command("delete")
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True, help="delete every rule")
@click.pass_obj
def policy_delete(client, name, everything):
    """Delete the rules labelled name=NAME, or all of them."""
    if bool(name) == everything:
        raise click.UsageError("give a rule name or --all")
    query = "all=true" if everything else f"name={name}"
    result = _call(client, "DELETE", f"/v1/policy?{query}")
    click.echo(f"Revision: {result['revision']}")


@policy.command("mode")
@click.argument("mode", type=click.Choice(["default", "always", "never"]))
@click.pass_obj
def policy_mode(client, mode):
    """Set the enforcement mode."""
    click.echo(
        f"Policy enforcement: {_call(client, 'PUT', '/v1/policy/mode', {'mode': mode})['mode']}"
    )


@policy.command("trace")
@click.option("--src", "src", required=True, help="source labels, e.g. app=client")
@click.option("--dst", "dst", required=True, help="destination labels, e.g. app=web")
@click.option("--dport", default="0/tcp", show_default=True, help="PORT/PROTOCOL, e.g. 80/tcp")
@output_option
@click.pass_obj
def policy_trace(client, src, dst, dport, output):
    """The verdict for a new flow between two label sets, and the rule that decided it.
    Exit code 0 when allowed, 1 when denied."""
    port, _, protocol = dport.partition("/")
    body = {
        "src": _parse_labels(src),
        "dst": _parse_labels(dst),
        "dport": port,
        "protocol": protocol or "tcp",
    }
    verdict = _call(client, "POST", "/v1/policy/trace", body)
    if output == "json":
        _json(verdict)
    else:
        click.echo(verdict["reason"])
        click.echo(f"Final verdict: {'ALLOWED' if verdict['allowed'] else 'DENIED'}")
    sys.exit(0 if verdict["allowed"] else 1)


@main.group()
def bpf():
    """Dumps of the datapath's maps."""


@bpf.command("endpoint")
@output_option
@click.pass_obj
def bpf_endpoint(client, output):
    """The endpoints map."""
    entries = _call(client, "GET", "/v1/bpf/endpoints")
    if output == "json":
        _json(entries)
        return
    headers = ["IFINDEX", "ENDPOINT", "IDENTITY", "MAC", "IPv6", "IPv4"]
    keys = ["ifindex", "endpoint_id", "identity", "mac", "ipv6", "ipv4"]
    _table(headers, [[e.get(k) for k in keys] for e in entries])


@bpf.group("lb")
def bpf_lb():
    """Load-balancer maps."""


@bpf_lb.command("list")
@output_option
@click.pass_obj
def bpf_lb_list(client, output):
    """Every frontend in the datapath with its backend slots."""
    entries = _call(client, "GET", "/v1/bpf/lb")
    if output == "json":
        _json(entries)
        return
    rows = []
    for e in entries:
        for i, b in enumerate(e["backends"] or [{"address": "(none)", "port": "", "weight": ""}]):
            rows.append(
                [
                    e["frontend"] if i == 0 else "",
                    e["id"] if i == 0 else "",
                    f"{b['address']}:{b['port']}",
                    b["weight"],
                ]
            )
    _table(["FRONTEND", "ID", "BACKEND", "WEIGHT"], rows)


@bpf.group("policy")
def bpf_policy():
    """Policy map entries."""


@bpf_policy.command("list")
@click.argument("ref")
@output_option
@click.pass_obj
def bpf_policy_list(client, ref, output):
    """An endpoint's policy map entries with their counters."""
    entries = _call(client, "GET", f"/v1/bpf/policy/{ref}")
    if output == "json":
        _json(entries)
    else:
        _policy_table(entries)


@bpf.group("ct")
def bpf_ct():
    """Connection tracking."""


@bpf_ct.command("list")
@output_option
@click.pass_obj
def bpf_ct_list(client, output):
    """Every tracked connection."""
    entries = _call(client, "GET", "/v1/bpf/ct")
    if output == "json":
        _json(entries)
        return
    _table(
        ["PROTO", "SOURCE", "DESTINATION", "DIRECTION", "ENDPOINT", "EXPIRES", "FLAGS"],
        [
            [
                PROTOCOL_NAMES.get(e.get("protocol"), e.get("protocol")),
                f"[{e.get('src')}]:{e.get('sport')}",
                f"[{e.get('dst')}]:{e.get('dport')}",
                DIRECTIONS.get(e.get("direction"), e.get("direction")),
                e.get("endpoint_id"),
                e.get("lifetime_remaining"),
                e.get("flags"),
            ]
            for e in entries
        ],
    )


@main.command()
@click.option(
    "--type", "kinds", multiple=True, type=click.Choice(["drop", "trace"]), help="event types"
)
@click.option("--from", "source", help="only packets from this endpoint")
@click.option("--to", "destination", help="only packets to this endpoint")
@output_option
@click.pass_obj
def monitor(client, kinds, source, destination, output):
    """Stream datapath events (drops, traces) as readable lines until Ctrl-C."""
    query = [("type", k) for k in kinds or ("drop", "trace")]
    query += [(k, v) for k, v in (("from", source), ("to", destination)) if v]
    path = "/v1/monitor?" + "&".join(f"{k}={v}" for k, v in query)
    try:
        for event in client.stream(path):
            click.echo(json.dumps(event) if output == "json" else format_event(event))
    except ApiError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def format_event(e: dict) -> str:
    protocol = PROTOCOL_NAMES.get(e.get("protocol"), e.get("protocol"))
    src, dst = e.get("src"), e.get("dst")
    if protocol in ("TCP", "UDP"):
        src, dst = f"[{src}]:{e.get('sport')}", f"[{dst}]:{e.get('dport')}"
    what = "xx drop" if e.get("kind") == "drop" else "-> trace"
    return (
        f"{what} ({e.get('description') or e.get('reason_name')}) endpoint {e.get('endpoint_id')} "
        f"{DIRECTIONS.get(e.get('direction'), '')}: identity {e.get('src_identity')} -> "
        f"{e.get('dst_identity')}: {protocol} {src} -> {dst}"
    )


@main.group()
def service():
    """Load-balanced services (VIPs)."""


@service.command("update")
@click.option(
    "--frontend", required=True, help='VIP and port: "[fd00:5::10]:80" or "10.96.0.10:80"'
)
@click.option(
    "--backends", help='comma-separated ADDRESS:PORT[@WEIGHT], e.g. "[fd00::2]:80,[fd00::3]:80@2"'
)
@click.option("--selector", help="labels of the backend containers, e.g. app=web")
@click.option(
    "--port", type=int, default=0, help="backend port with --selector (default: the frontend's)"
)
@click.option("--protocol", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option(
    "--id", "service_id", type=int, help="service id (default: the frontend's, or a new one)"
)
@click.option("--name", help="a name for the service")
@output_option
@click.pass_obj
def service_update(client, frontend, backends, selector, port, protocol, service_id, name, output):
    """Create or change a service: explicit backends, or every endpoint matching a selector."""
    body = {
        "frontend": frontend,
        "protocol": protocol,
        "port": port,
        "id": service_id,
        "name": name,
    }
    if backends is not None:
        body["backends"] = [b for b in backends.split(",") if b.strip()]
    if selector is not None:
        body["selector"] = _parse_labels(selector)
    result = _call(client, "PUT", "/v1/services", body)
    for warning in result.pop("warnings", []):
        click.echo(f"Warning: {warning}", err=True)
    if output == "json":
        _json(result)
    else:
        _services_table([result])


def _services_table(services: list[dict]) -> None:
    rows = []
    for s in services:
        backends = s["backends"] or ["(none)"]
        selector = _labels(s["selector"]) if s["selector"] else ""
        for i, backend in enumerate(backends):
            first = i == 0
            rows.append(
                [
                    s["id"] if first else "",
                    s["name"] or "" if first else "",
                    s["frontend"] if first else "",
                    selector if first else "",
                    backend,
                ]
            )
    _table(["ID", "NAME", "FRONTEND", "SELECTOR", "BACKEND"], rows)


@service.command("list")
@output_option
@click.pass_obj
def service_list(client, output):
    """Every service with its backends as they are now."""
    services = _call(client, "GET", "/v1/services")
    if output == "json":
        _json(services)
    else:
        _services_table(services)


@service.command("get")
@click.argument("service_id", type=int)
@output_option
@click.pass_obj
def service_get(client, service_id, output):
    """One service."""
    found = _call(client, "GET", f"/v1/services/{service_id}")
    if output == "json":
        _json(found)
    else:
        _services_table([found])


@service.command("delete")
@click.argument("ref", required=False)
@click.option("--all", "everything", is_flag=True, help="delete every service")
@click.pass_obj
def service_delete(client, ref, everything):
    """Delete a service by id or name, or all of them."""
    if (ref is None) == (not everything):
        raise click.UsageError("give a service id or name, or --all")
    services = _call(client, "GET", "/v1/services")
    if everything:
        ids = [s["id"] for s in services]
    elif ref.isdigit():
        ids = [int(ref)]
    else:
        ids = [s["id"] for s in services if s["name"] == ref]
        if not ids:
            click.echo(f"Error: no service named {ref}", err=True)
            sys.exit(1)
    for number in ids:
        _call(client, "DELETE", f"/v1/services/{number}")
        click.echo(f"Deleted service {number}")


@main.group()
def network():
    """Docker networks of this driver."""


@network.command("list")
@output_option
@click.pass_obj
def network_list(client, output):
    """Every network: id, name, pools, gateways."""
    nets = _call(client, "GET", "/v1/networks")
    if output == "json":
        _json(nets)
        return
    _table(
        ["NETWORK", "NAME", "IPv6 POOL", "IPv6 GATEWAY", "IPv4 POOL", "IPv4 GATEWAY", "MTU"],
        [
            [
                n["network_id"][:12],
                n["name"],
                n["pool6"],
                n["gateway6"],
                n["pool4"],
                n["gateway4"],
                n["mtu"],
            ]
            for n in nets
        ],
    )
