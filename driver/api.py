"""The management API the `cilium` command line talks to, under /v1."""

import dataclasses

from flask import Blueprint, current_app, jsonify

bp = Blueprint("api", __name__, url_prefix="/v1")


def daemon():
    return current_app.extensions["pycilium"]


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/status")
def status():
    d = daemon()
    with d.lock:
        endpoints = len(d.store.endpoints())
        networks = len(d.store.networks())
        addresses = d.store.address_count()
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
            "networks": networks,
            "endpoints": endpoints,
            "addresses": addresses,
            "datapath": {
                "compile_count": d.datapath.compile_count,
                "drops": d.datapath.drop_counts(),
            },
        }
    )


@bp.get("/endpoints")
def endpoints():
    with daemon().lock:
        eps = daemon().store.endpoints()
    return jsonify([dataclasses.asdict(ep) for ep in eps])


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


def _plain(record: dict) -> dict:
    """Addresses and other values as JSON-friendly strings."""
    return {k: v if isinstance(v, int | str) or v is None else str(v) for k, v in record.items()}
