"""`cilium`: the command line for the driver's management API. Each command calls the API
and hands the answer to driver/cli/output.py, with the table it reads as for humans.

Over 300 lines because it is the whole command tree in one place, as `cilium --help` shows
it: each command is a few lines, the rest is the human tables of the API's records."""

import datetime
import importlib.metadata
import pathlib
import socket
import sys
import time
import urllib.parse

import click

from .client import API_SOCKET_ENV, DEFAULT_API_SOCKET, ApiClient
from .output import (
    FORMATS,
    call,
    fail,
    fields,
    getter,
    listing,
    output_option,
    show,
    show_stream,
    table,
)

# The API reports protocols and directions as the datapath's numbers (datapath/abi.py); these
# are their spellings on screen. The command imports nothing of the driver, so a test keeps
# the two in step (tests/unit/cli/test_vocabulary.py).
PROTOCOL_NAMES = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
DIRECTIONS = {0: "ingress", 1: "egress"}
ENFORCEMENT_MODES = ("default", "always", "never")
# `cilium status` warns, and exits 3, when a BPF map is this full.
MAP_FILL_WARNING = 0.9


def _client_version() -> str:
    # Asked when needed: reading the metadata is not free and most commands never show it.
    return importlib.metadata.version("pycilium")


def _print_version(ctx, _param, wanted):
    if wanted and not ctx.resilient_parsing:
        click.echo(f"Client: {_client_version()}")
        ctx.exit()


# Every subcommand inherits -h from the group's context, as Cilium's commands take it.
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show this command's version and exit (`cilium version` adds the driver's).",
)
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


@main.command()
@output_option()
@click.pass_obj
def version(client, output):
    """The version of this command and of the driver that answers on the API socket."""
    mine = _client_version()
    if output == "table":
        # First, so it shows even when the driver does not answer.
        click.echo(f"Client: {mine}")
    daemon = call(client, "GET", "/v1/version")["version"]
    show({"client": mine, "daemon": daemon}, output, lambda v: click.echo(f"Daemon: {v['daemon']}"))


def _labels(labels: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _parse_labels(text: str) -> dict:
    labels = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        labels[key] = value
    return labels


def _status_screen(data: dict) -> None:
    node, policy = data["node"], data["policy"]
    drops = data["datapath"]["drops"]
    fields(
        [
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
            ("BPF builds", _builds(data["datapath"])),
            ("Drops", ", ".join(f"{k} {v}" for k, v in drops.items() if v) or "none"),
            ("BPF maps", _maps(data["datapath"].get("maps", {}))),
            ("Metrics", _metrics(data.get("metrics") or {})),
            ("Flows", _flows_status(data.get("flows") or {})),
            ("Prefilter", _prefilter_status(data.get("prefilter") or {})),
            ("Cluster", _cluster(data.get("cluster"))),
        ],
        15,
    )
    # The exit codes belong to the human form: -o json|yaml leaves judging to the reader.
    if not data["docker_events"]:
        sys.exit(2)
    if _full_maps(data["datapath"].get("maps", {})):
        sys.exit(3)


@main.command()
@getter(_status_screen)
def status():
    """Health of the driver in one screen. Exit code 0 when healthy, 1 when the driver does
    not answer, 2 when it cannot follow Docker's events (endpoints would wait for identity),
    3 when a BPF map is 90% full or more."""
    return "/v1/status"


def _flows_status(flows: dict) -> str:
    if not flows.get("buffer"):
        return "off"
    where = (
        f"http://{flows['ui_address']}/ui/" if flows.get("ui_address") else "/ui/ on this socket"
    )
    return f"{flows['seen']} seen, the last {flows['buffer']} kept; service map {where}"


def _fill(entry: dict) -> float:
    return entry["entries"] / entry["capacity"] if entry["capacity"] else 0.0


def _full_maps(maps: dict) -> list[str]:
    return sorted(name for name, entry in maps.items() if _fill(entry) >= MAP_FILL_WARNING)


def _builds(datapath: dict) -> str:
    return f"{datapath['compile_count']} compiled, {datapath['reuse_count']} reused"


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


def _cluster(cluster: dict | None) -> str:
    if not cluster:
        return "off (one host)"
    if cluster.get("left"):
        return f"node {cluster['name']} LEFT the cluster: {cluster['left']}"
    state = "connected" if cluster["connected"] else "NOT connected"
    names = ", ".join(n["name"] for n in cluster["nodes"])
    return f"node {cluster['name']}, etcd {cluster['kvstore']} {state}; nodes: {names}"


def _kernel(kernel: dict) -> str:
    features = [name for name in ("bpf_jit", "btf") if kernel.get(name)]
    missing = [f"no {name}" for name in ("bpf_jit", "btf") if not kernel.get(name)]
    return f"{kernel['release']} ({', '.join(features + missing)})"


@main.group()
def endpoint():
    """Container endpoints."""


_endpoints_table = listing(
    ["ENDPOINT", "CONTAINER", "IDENTITY", "LABELS", "IPv6", "IPv4", "POLICY IN/OUT", "STATE"],
    lambda e: [
        e["numeric_id"],
        e["container_name"],
        e["identity"],
        _labels(e["labels"]),
        e["ipv6"],
        e["ipv4"],
        "/".join("on" if e["enforcement"][d] else "off" for d in ("ingress", "egress")),
        e["state"],
    ],
)


@endpoint.command("list")
@getter(_endpoints_table)
def endpoint_list():
    """Every endpoint: id, container, identity, labels, addresses, state."""
    return "/v1/endpoints"


def _port_text(p: dict) -> str:
    host = f"[{p['host_ip']}]" if ":" in p["host_ip"] else p["host_ip"] or "*"
    return f"{host}:{p['host_port']}->{p['port']}/{PROTOCOL_NAMES[p['protocol']].lower()}"


_policy_table = listing(
    ["DIRECTION", "IDENTITY", "PORT", "PROTOCOL", "PACKETS", "BYTES"],
    lambda e: [
        DIRECTIONS[e["direction"]],
        e["identity"] or "any",
        e["dport"] or "any",
        PROTOCOL_NAMES.get(e["protocol"], e["protocol"]),
        e["packets"],
        e["bytes"],
    ],
)


def _endpoint_sheet(ep: dict) -> None:
    policy = ep["policy"]
    fields(
        [
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
        ],
        16,
    )
    _policy_table(policy["entries"])


@endpoint.command("get")
@click.argument("ref")
@getter(_endpoint_sheet)
def endpoint_get(ref):
    """One endpoint (id, container name or id) with its policy."""
    return f"/v1/endpoints/{ref}"


@main.group()
def identity():
    """Security identities."""


@identity.command("list")
@getter(
    listing(
        ["IDENTITY", "KIND", "LABELS"],
        lambda i: [i["identity"], _kind(i), _labels(i["labels"]) or i["key"]],
    )
)
def identity_list():
    """Every identity and its labels."""
    return "/v1/identities"


def _kind(identity: dict) -> str:
    """A remote identity (cluster mode) with the nodes whose endpoints have it."""
    nodes = identity.get("nodes")
    return f"{identity['kind']} ({', '.join(nodes)})" if nodes else identity["kind"]


def _identity_sheet(found: dict) -> None:
    fields(
        [
            ("Identity", f"{found['identity']} ({_kind(found)})"),
            ("Labels", _labels(found.get("labels") or {}) or found["key"]),
            ("Endpoints", ", ".join(map(str, found.get("endpoints", []))) or "none"),
        ],
        12,
    )


@identity.command("get")
@click.argument("number", type=int)
@getter(_identity_sheet)
def identity_get(number):
    """One identity and the endpoints that have it."""
    return f"/v1/identities/{number}"


@main.group()
def policy():
    """L3/L4 policy rules."""


POLICY_SUFFIXES = (".json", ".yaml", ".yml")


def _policy_files(sources: tuple[str, ...]) -> list[dict]:
    """Each source's text: a file, every policy file of a directory (sorted), or stdin."""
    files = []
    for source in sources:
        if source == "-":
            files.append({"text": sys.stdin.read(), "source": "<stdin>"})
            continue
        path = pathlib.Path(source)
        found = [path]
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())
            if not found:
                fail(f"{source}: no {', '.join(POLICY_SUFFIXES)} file in this directory")
        files += [{"text": p.read_text(), "source": str(p)} for p in found]
    return files


def _import(client, sources, replace: bool, dry_run: bool) -> dict:
    query = "&".join(k for k, on in (("replace=1", replace), ("dry_run=1", dry_run)) if on)
    body = {"files": _policy_files(sources)}
    result = call(client, "PUT", "/v1/policy" + (f"?{query}" if query else ""), body)
    for warning in result.get("warnings", []):
        click.echo(f"Warning: {warning}", err=True)
    return result


def _plan(plan: dict) -> None:
    for verb, rules in (("add", plan["rules_added"]), ("remove", plan["rules_removed"])):
        if rules:
            click.echo(f"Would {verb} {len(rules)} rule(s): {', '.join(rules)}")
    if not (plan["rules_added"] or plan["rules_removed"]):
        click.echo("No rule would change")
    if plan["endpoints"]:
        click.echo("Endpoints whose policy would change:")
        _changes_table(plan["endpoints"])
    click.echo(f"Revision: {plan['revision']} (unchanged)")


def _on_off(change: list[bool]) -> str:
    before, after = ("on" if value else "off" for value in change)
    return before if before == after else f"{before}->{after}"


_changes_table = listing(
    ["ENDPOINT", "CONTAINER", "ENTRIES", "INGRESS", "EGRESS"],
    lambda c: [
        c["endpoint"],
        c["container"],
        f"+{c['entries_added']} -{c['entries_removed']}",
        _on_off(c["ingress_enforced"]),
        _on_off(c["egress_enforced"]),
    ],
)

_SOURCES = click.argument(
    "sources", nargs=-1, required=True, type=click.Path(exists=True, allow_dash=True)
)
_REPLACE = click.option(
    "--replace", is_flag=True, help="replace the rules that have an imported rule's name label"
)


@policy.command("import")
@_SOURCES
@_REPLACE
@click.option("--dry-run", is_flag=True, help="change nothing; say what would change")
@click.pass_obj
def policy_import(client, sources, replace, dry_run):
    """Add the rules of JSON or YAML files, of every *.json, *.yaml and *.yml file in a
    directory, or of stdin (-), all or none: rules, rule lists, CiliumNetworkPolicy and
    CiliumClusterwideNetworkPolicy documents. Rules with the same labels replace."""
    result = _import(client, sources, replace, dry_run)
    if dry_run:
        _plan(result)
    else:
        click.echo(f"Revision: {result['revision']}")


@policy.command("validate")
@_SOURCES
@_REPLACE
@output_option()
@click.pass_obj
def policy_validate(client, sources, replace, output):
    """Parse files as `policy import` would, resolve them against the endpoints there are
    and say what the import would change, changing nothing."""
    show(_import(client, sources, replace, dry_run=True), output, _plan)


def _rules_document(answer: dict) -> list[dict]:
    click.echo(f"Revision: {answer['revision']}", err=True)
    return answer["rules"]


@policy.command("get")
@output_option(FORMATS[1:])
@click.pass_obj
def policy_get(client, output):
    """The rules in force as a document `policy import` reads back (JSON or YAML); the
    revision goes to stderr."""
    show(_rules_document(call(client, "GET", "/v1/policy")), output, None)


@policy.command("delete")
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True, help="delete every rule")
@click.pass_obj
def policy_delete(client, name, everything):
    """Delete the rules labelled name=NAME, or all of them."""
    if bool(name) == everything:
        raise click.UsageError("give a rule name or --all")
    query = "all=true" if everything else f"name={name}"
    result = call(client, "DELETE", f"/v1/policy?{query}")
    click.echo(f"Revision: {result['revision']}")


@policy.command("mode")
@click.argument("mode", type=click.Choice(ENFORCEMENT_MODES))
@click.pass_obj
def policy_mode(client, mode):
    """Set the enforcement mode."""
    click.echo(
        f"Policy enforcement: {call(client, 'PUT', '/v1/policy/mode', {'mode': mode})['mode']}"
    )


def _verdict(verdict: dict) -> None:
    click.echo(verdict["reason"])
    click.echo(f"Final verdict: {'ALLOWED' if verdict['allowed'] else 'DENIED'}")


# Not 1 (an error) nor 2 (click's usage error), so a script can tell "denied" from a mistake.
TRACE_DENIED = 3


def _trace_side(client, written: tuple[str, ...], number: int | None) -> dict:
    """The labels of one side: -s/-d label lists (repeatable, comma-separated, as Cilium's
    stringSlice), or an identity's labels as the API has them."""
    if not written:
        found = call(client, "GET", f"/v1/identities/{number}")
        # A reserved or CIDR identity is its key ("reserved:world"), which trace reads as
        # that identity; only a container identity's labels are Docker labels.
        return found["labels"] if found["kind"] == "endpoint" else {found["key"]: ""}
    labels = {}
    for text in written:
        labels.update(_parse_labels(text))
    return labels


@policy.command("trace")
@click.option("-s", "--src", multiple=True, help="source labels, e.g. app=client (repeatable)")
@click.option("-d", "--dst", multiple=True, help="destination labels, e.g. app=web (repeatable)")
@click.option("--src-identity", type=int, help="source identity (its labels)")
@click.option("--dst-identity", type=int, help="destination identity (its labels)")
@click.option("--dport", default="0/tcp", show_default=True, help="PORT/PROTOCOL, e.g. 80/tcp")
@output_option()
@click.pass_obj
def policy_trace(client, src, dst, src_identity, dst_identity, dport, output):
    """The verdict for a new flow between two label sets, and the rule that decided it.
    Exit code 0 when allowed, 3 when denied, 1 on an error, 2 on a usage error."""
    for side, written, number in (("src", src, src_identity), ("dst", dst, dst_identity)):
        if bool(written) == (number is not None):
            raise click.UsageError(f"give one of --{side} or --{side}-identity")
    port, _, protocol = dport.partition("/")
    body = {
        "src": _trace_side(client, src, src_identity),
        "dst": _trace_side(client, dst, dst_identity),
        "dport": port,
        "protocol": protocol or "tcp",
    }
    verdict = call(client, "POST", "/v1/policy/trace", body)
    show(verdict, output, _verdict)
    sys.exit(0 if verdict["allowed"] else TRACE_DENIED)


@main.group()
def bpf():
    """Dumps of the datapath's maps."""


_bpf_endpoints_table = listing(
    ["IFINDEX", "ENDPOINT", "IDENTITY", "MAC", "IPv6", "IPv4"],
    lambda e: [e.get(k) for k in ("ifindex", "endpoint_id", "identity", "mac", "ipv6", "ipv4")],
)


# A group like `bpf ct`, so `bpf endpoint list` works as in Cilium; alone it still lists,
# as it did when it was a command, so scripts written for that keep working.
@bpf.group("endpoint", invoke_without_command=True)
@output_option()
@click.pass_context
def bpf_endpoint(ctx, output):
    """Endpoints map (`cilium bpf endpoint` alone is `cilium bpf endpoint list`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(bpf_endpoint_list, output=output)


@bpf_endpoint.command("list")
@getter(_bpf_endpoints_table)
def bpf_endpoint_list():
    """The endpoints map."""
    return "/v1/bpf/endpoints"


@bpf.group("lb")
def bpf_lb():
    """Load-balancer maps."""


def _frontends_table(entries: list[dict]) -> None:
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
    table(["FRONTEND", "ID", "BACKEND", "WEIGHT"], rows)


@bpf_lb.command("list")
@getter(_frontends_table)
def bpf_lb_list():
    """Every frontend in the datapath with its backend slots."""
    return "/v1/bpf/lb"


@bpf.group("policy")
def bpf_policy():
    """Policy map entries."""


@bpf_policy.command("list")
@click.argument("ref")
@getter(_policy_table)
def bpf_policy_list(ref):
    """An endpoint's policy map entries with their counters."""
    return f"/v1/bpf/policy/{ref}"


# Cilium's name for it.
bpf_policy.add_command(bpf_policy_list, "get")


@bpf.group("ct")
def bpf_ct():
    """Connection tracking."""


@bpf_ct.command("list")
@getter(
    listing(
        ["PROTO", "SOURCE", "DESTINATION", "DIRECTION", "ENDPOINT", "EXPIRES", "FLAGS"],
        lambda e: [
            PROTOCOL_NAMES.get(e.get("protocol"), e.get("protocol")),
            f"[{e.get('src')}]:{e.get('sport')}",
            f"[{e.get('dst')}]:{e.get('dport')}",
            DIRECTIONS.get(e.get("direction"), e.get("direction")),
            e.get("endpoint_id"),
            e.get("lifetime_remaining"),
            e.get("flags"),
        ],
    )
)
def bpf_ct_list():
    """Every tracked connection."""
    return "/v1/bpf/ct"


@main.command()
@click.option(
    "--type", "kinds", multiple=True, type=click.Choice(["drop", "trace"]), help="event types"
)
@click.option("--from", "source", help="only packets from this endpoint")
@click.option("--to", "destination", help="only packets to this endpoint")
@output_option()
@click.pass_obj
def monitor(client, kinds, source, destination, output):
    """Stream datapath events (drops, traces) as readable lines until Ctrl-C."""
    query = [("type", k) for k in kinds or ("drop", "trace")]
    query += [(k, v) for k, v in (("from", source), ("to", destination)) if v]
    path = "/v1/monitor?" + "&".join(f"{k}={v}" for k, v in query)
    show_stream(client.stream(path), output, format_event)


def format_event(e: dict) -> str:
    protocol = PROTOCOL_NAMES.get(e.get("protocol"), e.get("protocol"))
    src, dst = e.get("src"), e.get("dst")
    if protocol in ("TCP", "UDP"):
        src, dst = f"[{src}]:{e.get('sport')}", f"[{dst}]:{e.get('dport')}"
    what = f"{'xx drop' if e.get('kind') == 'drop' else '-> trace'} "
    what += f"({e.get('description') or e.get('reason_name')})"
    if not e.get("endpoint_id"):
        # A hook on a host device (the XDP prefilter): no endpoint, no identities yet.
        return f"{what} device {_device(e.get('ifindex'))}: {protocol} {src} -> {dst}"
    return (
        f"{what} endpoint {e.get('endpoint_id')} "
        f"{DIRECTIONS.get(e.get('direction'), '')}: identity {e.get('src_identity')} -> "
        f"{e.get('dst_identity')}: {protocol} {src} -> {dst}"
    )


def _device(ifindex) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except (OSError, TypeError):
        return f"ifindex {ifindex}"


# `cilium observe`: the flow log

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str | None, now: float) -> float | None:
    """--since: a duration back from now (30s, 5m, 2h, 1d) or an ISO 8601 time."""
    if not text:
        return None
    unit = _DURATION_UNITS.get(text[-1:])
    if unit and text[:-1].isdigit():
        return now - int(text[:-1]) * unit
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration (5m) nor an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


@main.command()
@click.option("--from-label", "from_labels", multiple=True, help="source label key[=value]")
@click.option("--to-label", "to_labels", multiple=True, help="destination label key[=value]")
@click.option("--from-container", help="source container name")
@click.option("--to-container", help="destination container name")
@click.option("--from-identity", type=click.IntRange(0), help="source identity")
@click.option("--to-identity", type=click.IntRange(0), help="destination identity")
@click.option(
    "--verdict",
    type=click.Choice(["FORWARDED", "DROPPED", "TRANSLATED"], case_sensitive=False),
    help="only flows with this verdict",
)
@click.option("--port", type=click.IntRange(0, 65535), help="source or destination port")
@click.option("--protocol", help="tcp, udp, icmp, icmpv6")
@click.option("--since", help="only flows since a duration ago (30s, 5m, 2h) or an ISO time")
@click.option("--last", type=click.IntRange(1), help="only the last N flows")
@click.option("-f", "--follow", is_flag=True, help="keep printing flows as they come")
@output_option()
@click.pass_obj
def observe(client, output, follow, last, since, **criteria):
    """Flows: new connections, drops and translations, and connections that ended."""
    query = [("from-label", v) for v in criteria.pop("from_labels")]
    query += [("to-label", v) for v in criteria.pop("to_labels")]
    query += [(k.replace("_", "-"), v) for k, v in criteria.items() if v is not None]
    start = _since(since, time.time())
    query += [(k, v) for k, v in (("since", start), ("last", last)) if v is not None]
    if follow:
        path = "/v1/flows?" + urllib.parse.urlencode([*query, ("follow", "1")])
        show_stream(client.stream(path), output, format_flow)
        return
    records = call(client, "GET", "/v1/flows?" + urllib.parse.urlencode(query))
    if output == "table":
        for record in records:
            click.echo(format_flow(record))
    else:
        show_stream(records, output, format_flow)


def format_flow(f: dict) -> str:
    """time, source -> destination, protocol, verdict, and why."""
    when = datetime.datetime.fromtimestamp(f["time"]).strftime("%b %d %H:%M:%S.%f")[:-3]
    src, dst = _flow_end(f["source"]), _flow_end(f["destination"])
    protocol = f["protocol"].upper()
    what = {"end": "ENDED"}.get(f["type"], f["verdict"])
    line = f"{when}  {src} -> {dst}  {protocol}  {what}"
    if f["type"] == "drop":
        line += f" ({f['reason']})"
    if f.get("service"):
        line += f" via {f['service']}"
    policy = f.get("policy")
    if policy and policy["rules"]:
        line += f" by {', '.join(policy['rules'])}"
    if f["type"] == "end":
        line += f" {f['packets']} packets {f['bytes']} bytes"
    if f["type"] == "aggregated":
        line += f" AGGREGATED {f['count']} connections"
    return line + f" [{f['direction']} {f['endpoint']}]"


def _flow_end(end: dict) -> str:
    name = end["container"] or ",".join(end["labels"][:1]) or end["address"] or "?"
    if end["address"] is None:  # an aggregated record's end: an identity, no address
        return f"{name}:{end['port']}" if end["port"] else name
    address = end["address"] or "?"
    host = f"[{address}]" if ":" in address else address
    where = f"{host}:{end['port']}" if end["port"] else host
    return f"{name} {where}" if name != address else where


@main.group()
def service():
    """Load-balanced services (VIPs)."""


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
    table(["ID", "NAME", "FRONTEND", "SELECTOR", "BACKEND"], rows)


def _service_table(found: dict) -> None:
    _services_table([found])


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
@output_option()
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
    result = call(client, "PUT", "/v1/services", body)
    for warning in result.pop("warnings", []):
        click.echo(f"Warning: {warning}", err=True)
    show(result, output, _service_table)


@service.command("list")
@getter(_services_table)
def service_list():
    """Every service with its backends as they are now."""
    return "/v1/services"


@service.command("get")
@click.argument("service_id", type=int)
@getter(_service_table)
def service_get(service_id):
    """One service."""
    return f"/v1/services/{service_id}"


@service.command("delete")
@click.argument("ref", required=False)
@click.option("--all", "everything", is_flag=True, help="delete every service")
@click.pass_obj
def service_delete(client, ref, everything):
    """Delete a service by id or name, or all of them."""
    if (ref is None) == (not everything):
        raise click.UsageError("give a service id or name, or --all")
    services = call(client, "GET", "/v1/services")
    if everything:
        ids = [s["id"] for s in services]
    elif ref.isdigit():
        ids = [int(ref)]
    else:
        ids = [s["id"] for s in services if s["name"] == ref]
        if not ids:
            fail(f"no service named {ref}")
    for number in ids:
        call(client, "DELETE", f"/v1/services/{number}")
        click.echo(f"Deleted service {number}")


@main.group()
def network():
    """Docker networks of this driver."""


@network.command("list")
@getter(
    listing(
        ["NETWORK", "NAME", "IPv6 POOL", "IPv6 GATEWAY", "IPv4 POOL", "IPv4 GATEWAY", "MTU"],
        lambda n: [
            n["network_id"][:12],
            n["name"],
            n["pool6"],
            n["gateway6"],
            n["pool4"],
            n["gateway4"],
            n["mtu"],
        ],
    )
)
def network_list():
    """Every network: id, name, pools, gateways."""
    return "/v1/networks"


@main.group()
def prefilter():
    """The XDP prefilter: source prefixes dropped on host devices before the stack sees them."""


def _prefilter_status(found: dict) -> str:
    devices = found.get("devices") or []
    if not devices:
        return "no device"
    named = ", ".join(f"{d['device']} ({d['mode'] or 'NOT attached'})" for d in devices)
    return f"{found.get('prefixes', 0)} prefixes on {named}"


def _prefilter_tables(found: dict) -> None:
    table(["PREFIX", "DROPPED"], [[p["cidr"], p["drops"]] for p in found["prefixes"]])
    if found["devices"]:
        click.echo()
        table(
            ["DEVICE", "XDP MODE"],
            [[d["device"], d["mode"] or f"not attached: {d['error']}"] for d in found["devices"]],
        )


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated options, each also comma-separated."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


_cidr_option = click.option(
    "--cidr", "cidrs", multiple=True, help="source prefix, e.g. 198.51.100.0/24 (repeat, or a,b)"
)
_device_option = click.option(
    "--device", "devices", multiple=True, help="host device, e.g. eth0 (repeat, or a,b)"
)


@prefilter.command("update")
@_cidr_option
@_device_option
@output_option()
@click.pass_obj
def prefilter_update(client, cidrs, devices, output):
    """Deny prefixes and/or attach the prefilter to devices (native XDP where the device's
    driver supports it, generic otherwise). All or nothing."""
    body = {"cidrs": _split(cidrs), "devices": _split(devices)}
    if not body["cidrs"] and not body["devices"]:
        raise click.UsageError("give --cidr or --device")
    show(call(client, "PUT", "/v1/prefilter", body), output, _prefilter_tables)


@prefilter.command("list")
@getter(_prefilter_tables)
def prefilter_list():
    """The denied prefixes with the packets dropped for each, and the devices with their
    XDP mode."""
    return "/v1/prefilter"


@prefilter.command("delete")
@_cidr_option
@_device_option
@output_option()
@click.pass_obj
def prefilter_delete(client, cidrs, devices, output):
    """Stop denying prefixes and/or take the prefilter off devices. All or nothing."""
    query = [("cidr", c) for c in _split(cidrs)] + [("device", d) for d in _split(devices)]
    if not query:
        raise click.UsageError("give --cidr or --device")
    path = "/v1/prefilter?" + urllib.parse.urlencode(query)
    show(call(client, "DELETE", path), output, _prefilter_tables)


@main.group()
def node():
    """Nodes of the cluster (with --kvstore; on one host, this node alone)."""


@node.command("list")
@getter(
    listing(
        ["NAME", "ID", "ADDRESS", "IPv6 RANGE", "IPv4 RANGE"],
        lambda n: [n["name"], n["node_id"], n["address"], n["ipv6_range"], n["ipv4_range"]],
    )
)
def node_list():
    """Every node the driver sees: name, id, underlay address, node ranges."""
    return "/v1/nodes"


@node.command("forget")
@click.argument("name")
@click.pass_obj
def node_forget(client, name):
    """Free the node id and ranges of NAME, a node gone for good (refused while it is up).

    Its id goes to the next node that claims one; if NAME comes back, it gets the lowest
    free id, and its driver refuses to start while its state holds the old id's networks."""
    forgotten = call(client, "DELETE", "/v1/nodes/" + urllib.parse.quote(name, safe=""))
    click.echo(f"Forgot node {forgotten['name']}: node id {forgotten['node_id']} is free")
