"""The management API the `cilium` command line talks to, under /v1."""

import dataclasses
import json
import os
import queue

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from datapath import INIT_ID
from datapath.abi import (
    EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED,
    PROTOCOL_NUMBERS,
    RESERVED_IDENTITIES,
)
from driver.control.endpoints import spec_of
from driver.errors import BadRequest, NotFound

bp = Blueprint("api", __name__, url_prefix="/v1")

HEARTBEAT_SECONDS = 1.0


def daemon():
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


def endpoint_record(ep) -> dict:
    record = dataclasses.asdict(ep)
    record["state"] = "waiting-for-identity" if ep.identity == INIT_ID else "ready"
    return record


def find_endpoint(ref: str):
    """An endpoint by numeric id, container name, or a prefix of its container or endpoint id."""
    for ep in daemon().store.endpoints():
        if ref in (str(ep.numeric_id), ep.container_name) or any(
            value and len(ref) >= 4 and value.startswith(ref)
            for value in (ep.container_id, ep.endpoint_id)
        ):
            return ep
    raise NotFound(f"endpoint {ref} not found")


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/status")
def status():
    d = daemon()
    with d.lock:
        endpoints = d.store.endpoints()
        counts = {
            "networks": len(d.store.networks()),
            "endpoints": len(endpoints),
            "waiting": sum(ep.identity == INIT_ID for ep in endpoints),
            "addresses": d.store.address_count(),
            "identities": len(d.store.identities("endpoint")),
        }
        policy = {
            "revision": d.security.revision,
            "mode": d.security.mode,
            "rules": len(d.security.policy.rules()),
        }
        datapath = {
            "compile_count": d.datapath.compile_count,
            "drops": d.datapath.drop_counts(),
            "maps": {
                name: {"entries": entries, "capacity": capacity}
                for name, (entries, capacity) in d.datapath.map_fill().items()
            },
        }
    node = d.node
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
            "docker_events": bool(d.watcher and d.watcher.connected.is_set()),
            **counts,
            "policy": policy,
            "datapath": datapath,
            "metrics": {"address": d.config.metrics_address or None},
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
    with daemon().lock:
        eps = daemon().store.endpoints()
        flags = {e.endpoint_id: e.flags for e in daemon().datapath.endpoint_map_entries().values()}
    records = []
    for ep in eps:
        record = endpoint_record(ep)
        record["enforcement"] = _enforcement(flags.get(ep.numeric_id, 0))
        records.append(record)
    return jsonify(records)


def _enforcement(flags: int) -> dict:
    return {
        "ingress": bool(flags & EP_F_INGRESS_ENFORCED),
        "egress": bool(flags & EP_F_EGRESS_ENFORCED),
    }


@bp.get("/endpoints/<ref>")
def endpoint(ref):
    d = daemon()
    with d.lock:
        ep = find_endpoint(ref)
        entries = _policy_entries(ep)
        map_entries = d.datapath.endpoint_map_entries()
    record = endpoint_record(ep)
    entry = next((e for e in map_entries.values() if e.endpoint_id == ep.numeric_id), None)
    enforcement = _enforcement(entry.flags if entry else 0)
    record["policy"] = {
        "ingress_enforced": enforcement["ingress"],
        "egress_enforced": enforcement["egress"],
        "entries": entries,
    }
    return jsonify(record)


def _policy_entries(ep) -> list[dict]:
    entries = daemon().datapath.policy_entries(spec_of(ep))
    return [
        {**key._asdict(), "packets": packets, "bytes": size}
        for key, (packets, size) in sorted(entries.items())
    ]


@bp.get("/identities")
def identities():
    with daemon().lock:
        found = daemon().store.identities()
    reserved = [
        {"identity": number, "kind": "reserved", "key": f"reserved:{name}", "labels": {}}
        for number, name in RESERVED_IDENTITIES.items()
    ]
    return jsonify(reserved + [dataclasses.asdict(i) for i in found])


@bp.get("/identities/<int:number>")
def identity(number):
    if number in RESERVED_IDENTITIES:
        name = RESERVED_IDENTITIES[number]
        return jsonify({"identity": number, "kind": "reserved", "key": f"reserved:{name}"})
    with daemon().lock:
        found = daemon().store.get_identity(number)
        users = [ep.numeric_id for ep in daemon().store.endpoints() if ep.identity == number]
    if found is None:
        raise NotFound(f"identity {number} not found")
    return jsonify({**dataclasses.asdict(found), "endpoints": users})


@bp.get("/policy")
def policy_get():
    d = daemon()
    with d.lock:
        return jsonify(
            {
                "revision": d.security.revision,
                "mode": d.security.mode,
                "rules": d.security.policy.to_json(),
            }
        )


@bp.put("/policy")
def policy_import():
    body = _body()
    if not isinstance(body.get("text"), str):
        raise BadRequest("policy import needs the rules as a string in 'text'")
    with daemon().lock:
        result = daemon().security.import_rules(body["text"], str(body.get("source") or "-"))
    return jsonify(result)


@bp.delete("/policy")
def policy_delete():
    name = request.args.get("name")
    everything = request.args.get("all") in ("1", "true")
    if not name and not everything:
        raise BadRequest("policy delete needs a rule name or all=true")
    with daemon().lock:
        return jsonify(daemon().security.delete_rules(name, everything))


@bp.put("/policy/mode")
def policy_mode():
    mode = _body().get("mode")
    with daemon().lock:
        daemon().security.set_mode(str(mode))
        return jsonify({"mode": daemon().security.mode})


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
    with daemon().lock:
        verdict = daemon().security.trace(src, dst, dport, PROTOCOL_NUMBERS[protocol])
    return jsonify(dataclasses.asdict(verdict))


@bp.get("/addresses")
def addresses():
    with daemon().lock:
        return jsonify(daemon().store.addresses())


@bp.get("/networks")
def networks():
    with daemon().lock:
        nets = daemon().store.networks()
    return jsonify([dataclasses.asdict(n) for n in nets])


@bp.get("/bpf/endpoints")
def bpf_endpoints():
    with daemon().lock:
        entries = daemon().datapath.endpoint_map_entries()
    return jsonify([_plain({"ifindex": k, **dataclasses.asdict(v)}) for k, v in entries.items()])


@bp.get("/bpf/policy/<ref>")
def bpf_policy(ref):
    with daemon().lock:
        return jsonify(_policy_entries(find_endpoint(ref)))


@bp.get("/bpf/ct")
def bpf_ct():
    with daemon().lock:
        entries = daemon().datapath.ct_entries()
    return jsonify([_plain(dataclasses.asdict(e)) for e in entries])


@bp.get("/monitor")
def monitor():
    """Events as JSON lines until the client goes away; blank lines keep the stream alive."""
    kinds = frozenset(request.args.getlist("type") or ["drop", "trace"])
    unknown = kinds - {"drop", "trace"}
    if unknown:
        raise BadRequest(f"unknown event type {', '.join(sorted(unknown))} (drop, trace)")
    with daemon().lock:
        sources = _addresses_of(request.args.get("from"))
        destinations = _addresses_of(request.args.get("to"))
    subscription = daemon().monitor.subscribe(kinds)

    def lines():
        try:
            while True:
                try:
                    event = subscription.events.get(timeout=HEARTBEAT_SECONDS)
                except queue.Empty:
                    yield "\n"
                    continue
                if sources and event.get("src") not in sources:
                    continue
                if destinations and event.get("dst") not in destinations:
                    continue
                yield json.dumps(event) + "\n"
        finally:
            subscription.close()

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


def _addresses_of(ref: str | None) -> set[str]:
    if not ref:
        return set()
    ep = find_endpoint(ref)
    return {a for a in (ep.ipv6, ep.ipv4) if a}


@bp.get("/services")
def services():
    with daemon().lock:
        return jsonify(daemon().services.records())


@bp.get("/services/<int:service_id>")
def service(service_id):
    d = daemon()
    with d.lock:
        found = d.services.get(service_id)
        return jsonify(found.record(d.services.resolve(found)))


@bp.put("/services")
def service_update():
    with daemon().lock:
        return jsonify(daemon().services.update(_body()))


@bp.delete("/services/<int:service_id>")
def service_delete(service_id):
    with daemon().lock:
        daemon().services.delete(service_id)
    return jsonify({})


@bp.get("/bpf/lb")
def bpf_lb():
    with daemon().lock:
        entries = daemon().datapath.services()
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
