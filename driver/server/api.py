"""The management API the `cilium` command line talks to, under /v1."""

import contextlib
import dataclasses
import importlib.metadata
import json
import os

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from driver.control.flows import VERDICTS, FlowFilter
from driver.control.plane import PROTOCOL_NUMBERS, ControlPlane
from driver.errors import BadRequest

bp = Blueprint("api", __name__, url_prefix="/v1")

HEARTBEAT_SECONDS = 1.0


def plane() -> ControlPlane:
    return current_app.extensions["pycilium"]


def _body() -> dict:
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _plain(record: dict) -> dict:
    """Addresses and other values as JSON-friendly strings."""
    return {
        k: v if isinstance(v, int | str | dict) or v is None else str(v) for k, v in record.items()
    }


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/version")
def version():
    """The driver's version, as installed (`cilium version` shows it beside its own)."""
    return jsonify({"version": importlib.metadata.version("pycilium")})


@bp.get("/status")
def status():
    snapshot = plane().snapshot()
    node = snapshot.node
    return jsonify(
        {
            "node": {
                "id": node.node_id,
                "ipv6_range": str(node.range6),
                "ipv6_router": str(node.router6),
                "ipv4_range": str(node.range4),
                "ipv4_router": str(node.router4),
            },
            "kernel": {"release": os.uname().release, **_kernel_features()},
            "docker_events": snapshot.docker_events,
            "networks": snapshot.networks,
            "endpoints": snapshot.endpoints,
            "waiting": snapshot.waiting,
            "addresses": snapshot.addresses,
            "identities": snapshot.identities["endpoint"],
            "policy": {
                "revision": snapshot.policy_revision,
                "mode": snapshot.policy_mode,
                "rules": snapshot.policy_rules,
            },
            "datapath": {
                "compile_count": snapshot.compile_count,
                "reuse_count": snapshot.reuse_count,
                "drops": snapshot.drops,
                "maps": {
                    name: {"entries": entries, "capacity": capacity}
                    for name, (entries, capacity) in snapshot.map_fill.items()
                },
            },
            "metrics": {"address": plane().config.metrics_address or None},
            "flows": _flow_status(),
            "prefilter": {
                "devices": snapshot.prefilter["devices"],
                "prefixes": len(snapshot.prefilter["prefixes"]),
            },
            "cluster": snapshot.cluster,
        }
    )


def _kernel_features() -> dict:
    """What the datapath leans on, as this kernel offers it."""
    try:
        with open("/proc/sys/net/core/bpf_jit_enable") as f:
            jit = f.read().strip() != "0"
    except OSError:
        jit = False
    return {"bpf_jit": jit, "btf": os.path.exists("/sys/kernel/btf/vmlinux")}


@bp.get("/endpoints")
def endpoints():
    return jsonify(plane().list_endpoints())


@bp.get("/endpoints/<ref>")
def endpoint(ref):
    return jsonify(plane().get_endpoint(ref))


@bp.get("/identities")
def identities():
    return jsonify(plane().list_identities())


@bp.get("/identities/<int:number>")
def identity(number):
    return jsonify(plane().get_identity(number))


@bp.get("/policy")
def policy_get():
    return jsonify(plane().get_policy())


@bp.put("/policy")
def policy_import():
    """{"text": "...", "source": "web.yaml"} or {"files": [{"text", "source"}, ...]};
    ?replace=1 replaces the rules with the same name labels, ?dry_run=1 changes nothing."""
    body = _body()
    files = body.get("files", [body])
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("text"), str) for f in files
    ):
        raise BadRequest("policy import needs the rules as a string in 'text' (or in 'files')")
    return jsonify(
        plane().import_policy(
            [(f["text"], str(f.get("source") or "-")) for f in files],
            replace=_flag("replace"),
            dry_run=_flag("dry_run"),
        )
    )


def _flag(name: str) -> bool:
    return request.args.get(name) in ("1", "true")


@bp.delete("/policy")
def policy_delete():
    name = request.args.get("name")
    everything = _flag("all")
    if not name and not everything:
        raise BadRequest("policy delete needs a rule name or all=true")
    return jsonify(plane().delete_policy(name, everything))


@bp.put("/policy/mode")
def policy_mode():
    mode = _body().get("mode")
    return jsonify({"mode": plane().set_mode(str(mode))})


@bp.post("/policy/trace")
def policy_trace():
    body = _body()
    src, dst = body.get("src"), body.get("dst")
    if not isinstance(src, dict) or not isinstance(dst, dict):
        raise BadRequest("trace needs 'src' and 'dst' label objects")
    protocol = str(body.get("protocol", "tcp")).lower()
    if protocol not in PROTOCOL_NUMBERS:
        raise BadRequest(f"protocol {protocol!r} is not one of {', '.join(PROTOCOL_NUMBERS)}")
    try:
        dport = int(body.get("dport", 0))
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"port {body.get('dport')!r} is not a number") from None
    verdict = plane().trace(src, dst, dport, PROTOCOL_NUMBERS[protocol])
    return jsonify(dataclasses.asdict(verdict))


@bp.get("/addresses")
def addresses():
    return jsonify(plane().list_addresses())


@bp.get("/networks")
def networks():
    return jsonify([dataclasses.asdict(n) for n in plane().list_networks()])


@bp.get("/bpf/endpoints")
def bpf_endpoints():
    entries = plane().bpf_endpoints()
    return jsonify([_plain({"ifindex": k, **dataclasses.asdict(v)}) for k, v in entries.items()])


@bp.get("/bpf/policy/<ref>")
def bpf_policy(ref):
    return jsonify(plane().bpf_policy(ref))


@bp.get("/bpf/ct")
def bpf_ct():
    return jsonify([_plain(dataclasses.asdict(e)) for e in plane().bpf_ct()])


@bp.get("/monitor")
def monitor():
    """Events as JSON lines until the client goes away; blank lines keep the stream alive."""
    kinds = frozenset(request.args.getlist("type") or ["drop", "trace"])
    unknown = kinds - {"drop", "trace"}
    if unknown:
        raise BadRequest(f"unknown event type {', '.join(sorted(unknown))} (drop, trace)")
    events = plane().events(
        kinds, request.args.get("from"), request.args.get("to"), HEARTBEAT_SECONDS
    )

    def lines():
        with contextlib.closing(events):
            for event in events:
                yield "\n" if event is None else json.dumps(event) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


# Flows (`cilium observe` and the service map)


def _flow_status() -> dict:
    flow_log = plane().flow_log
    return {
        "buffer": flow_log.size if flow_log is not None else 0,
        "seen": flow_log.added if flow_log is not None else 0,
        "ui_address": plane().config.ui_address or None,
    }


@bp.get("/flows")
def flows():
    """Flows from the log, oldest first, as a JSON list; with follow=1, those to come as JSON
    lines (after the last `last` of the log, if given) until the client goes away."""
    flow_filter = _flow_filter(request.args)
    last = _number(request.args, "last", int)
    if request.args.get("follow") not in (None, "", "0", "false"):
        earlier = plane().flows(flow_filter, last) if last else []
        following = plane().follow_flows(flow_filter, HEARTBEAT_SECONDS)

        def lines():
            with contextlib.closing(following):
                for record in earlier:
                    yield json.dumps(record) + "\n"
                for record in following:
                    yield "\n" if record is None else json.dumps(record) + "\n"

        return Response(stream_with_context(lines()), mimetype="application/x-ndjson")
    return jsonify(plane().flows(flow_filter, last))


@bp.get("/servicemap")
def servicemap():
    """The service map page's data: identities as nodes, flows as edges."""
    return jsonify(plane().service_map())


def _flow_filter(args) -> FlowFilter:
    verdict = args.get("verdict")
    if verdict is not None and verdict.upper() not in VERDICTS:
        raise BadRequest(f"unknown verdict {verdict} ({', '.join(VERDICTS)})")
    protocol = args.get("protocol")
    if protocol is not None and protocol.lower() not in PROTOCOL_NUMBERS:
        raise BadRequest(f"unknown protocol {protocol} ({', '.join(PROTOCOL_NUMBERS)})")
    return FlowFilter(
        from_labels=tuple(args.getlist("from-label")),
        to_labels=tuple(args.getlist("to-label")),
        from_container=args.get("from-container"),
        to_container=args.get("to-container"),
        from_identity=_number(args, "from-identity", int),
        to_identity=_number(args, "to-identity", int),
        verdict=verdict.upper() if verdict else None,
        port=_number(args, "port", int),
        protocol=protocol,
        since=_number(args, "since", float),
    )


def _number(args, name: str, kind):
    text = args.get(name)
    if text in (None, ""):
        return None
    try:
        value = kind(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {text!r}") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


@bp.get("/services")
def services():
    return jsonify(plane().list_services())


@bp.get("/services/<int:service_id>")
def service(service_id):
    return jsonify(plane().get_service(service_id))


@bp.put("/services")
def service_update():
    return jsonify(plane().update_service(_body()))


@bp.delete("/services/<int:service_id>")
def service_delete(service_id):
    plane().delete_service(service_id)
    return jsonify({})


@bp.get("/bpf/lb")
def bpf_lb():
    entries = plane().bpf_lb()
    return jsonify(
        [
            {
                "frontend": str(frontend),
                "id": service_id,
                "backends": [_plain(dataclasses.asdict(b)) for b in backends],
            }
            for frontend, (service_id, backends) in sorted(entries.items(), key=lambda kv: kv[1][0])
        ]
    )


@bp.get("/prefilter")
def prefilter_list():
    """{"prefixes": [{"cidr", "drops"}], "devices": [{"device", "mode", "error"}]}"""
    return jsonify(plane().prefilter_list())


@bp.put("/prefilter")
def prefilter_update():
    """{"cidrs": ["198.51.100.0/24", ...], "devices": ["eth0", ...]}: added, all or nothing."""
    cidrs, devices = _prefilter_lists(_body())
    return jsonify(plane().prefilter_update(cidrs, devices))


@bp.delete("/prefilter")
def prefilter_delete():
    """?cidr=...&device=... (each repeatable): removed, all or nothing."""
    lists = {"cidrs": request.args.getlist("cidr"), "devices": request.args.getlist("device")}
    cidrs, devices = _prefilter_lists(lists)
    return jsonify(plane().prefilter_delete(cidrs, devices))


def _prefilter_lists(body: dict) -> tuple[list[str], list[str]]:
    cidrs, devices = body.get("cidrs", []), body.get("devices", [])
    for name, value in (("cidrs", cidrs), ("devices", devices)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"prefilter '{name}' must be a list of strings")
    if not cidrs and not devices:
        raise BadRequest("name at least one CIDR or device")
    return cidrs, devices


@bp.get("/nodes")
def nodes():
    return jsonify(plane().list_nodes())


@bp.delete("/nodes/<name>")
def node_forget(name):
    return jsonify(plane().forget_node(name))
