"""What the management API answers, as the CLI tests' fake client serves it: one answer per
(method, path), shaped like driver/server/api.py's records."""

ENDPOINT = {
    "numeric_id": 7,
    "endpoint_id": "e1" * 32,
    "container_id": "c0ffee" * 10 + "abcd",
    "container_name": "web-1",
    "network_id": "4e7" * 21 + "f",
    "identity": 256,
    "labels": {"app": "web", "tier": "front"},
    "ipv6": "fdce:1c00:a0b:c0d::7",
    "ipv4": "10.213.0.7",
    "host_ifname": "lxc7",
    "ports": [
        {"host_ip": "", "host_port": 8080, "port": 80, "protocol": 6},
        {"host_ip": "::1", "host_port": 5353, "port": 53, "protocol": 17},
    ],
    "state": "ready",
    "enforcement": {"ingress": True, "egress": False},
}

POLICY_ENTRIES = [
    {"direction": 0, "identity": 257, "dport": 80, "protocol": 6, "packets": 3, "bytes": 180},
    {"direction": 1, "identity": 0, "dport": 0, "protocol": 0, "packets": 0, "bytes": 0},
]

STATUS = {
    "docker_events": True,
    "kernel": {"release": "6.1.0-18-amd64", "bpf_jit": True, "btf": False},
    "node": {
        "id": "0a0b0c0d",
        "ipv6_range": "fdce:1c00:a0b:c0d::/96",
        "ipv6_router": "fdce:1c00:a0b:c0d::1",
        "ipv4_range": "10.213.0.0/24",
        "ipv4_router": "10.213.0.1",
    },
    "networks": 1,
    "endpoints": 2,
    "waiting": 1,
    "identities": 4,
    "policy": {"revision": 3, "rules": 2, "mode": "default"},
    "datapath": {
        "compile_count": 5,
        "reuse_count": 1,
        "drops": {"POLICY_DENIED": 4, "INVALID_SOURCE": 0, "CT_FULL": 1},
        "maps": {
            "endpoints": {"entries": 2, "capacity": 16384},
            "conntrack": {"entries": 26214, "capacity": 262144},
        },
    },
    "metrics": {"address": "127.0.0.1:9962"},
    "flows": {"buffer": 4096, "seen": 12, "ui_address": "127.0.0.1:12000"},
    "prefilter": {
        "devices": [
            {"device": "eth0", "mode": "native", "error": None},
            {"device": "eth9", "mode": None, "error": "no device eth9 on this host"},
        ],
        "prefixes": 2,
    },
    "cluster": None,
}

PREFILTER = {
    "prefixes": [
        {"cidr": "198.51.100.0/24", "drops": 1234},
        {"cidr": "2001:db8::/32", "drops": 0},
    ],
    "devices": STATUS["prefilter"]["devices"],
}

NODES = [
    {
        "name": "node1",
        "node_id": 1,
        "address": "192.0.2.11",
        "ipv6_range": "fdce:1c00:0:1::/112",
        "ipv4_range": "10.213.1.0/24",
    },
    {
        "name": "node2",
        "node_id": 2,
        "address": "192.0.2.12",
        "ipv6_range": "fdce:1c00:0:2::/112",
        "ipv4_range": "10.213.2.0/24",
    },
]

SERVICES = [
    {
        "id": 1,
        "name": "web",
        "frontend": "[fd00:5::10]:80",
        "selector": {"app": "web"},
        "backends": ["[fdce:1c00:a0b:c0d::7]:80", "[fdce:1c00:a0b:c0d::8]:80"],
        "protocol": "tcp",
    },
    {
        "id": 2,
        "name": None,
        "frontend": "10.96.0.10:53",
        "selector": None,
        "backends": [],
        "protocol": "udp",
    },
]

ANSWERS = {
    ("GET", "/v1/status"): STATUS,
    ("GET", "/v1/prefilter"): PREFILTER,
    ("PUT", "/v1/prefilter"): PREFILTER,
    ("DELETE", "/v1/prefilter?cidr=203.0.113.0%2F24&cidr=2001%3Adb8%3A%3A%2F32&device=eth1"): {
        **PREFILTER,
        "prefixes": PREFILTER["prefixes"][:1],
    },
    ("GET", "/v1/nodes"): NODES,
    ("GET", "/v1/endpoints"): [
        ENDPOINT,
        {
            **ENDPOINT,
            "numeric_id": 8,
            "container_name": "client-1",
            "identity": 5,
            "labels": {},
            "ipv4": None,
            "state": "waiting-for-identity",
            "enforcement": {"ingress": False, "egress": True},
        },
    ],
    ("GET", "/v1/endpoints/web-1"): {
        **ENDPOINT,
        "policy": {"ingress_enforced": True, "egress_enforced": False, "entries": POLICY_ENTRIES},
    },
    ("GET", "/v1/identities"): [
        {"identity": 2, "kind": "reserved", "labels": {}, "key": "reserved:world"},
        {"identity": 256, "kind": "endpoint", "labels": {"app": "web"}, "key": "app=web"},
        {
            "identity": 70123,
            "kind": "remote",
            "labels": {"app": "db"},
            "key": "app=db",
            "nodes": ["node1", "node3"],
        },
    ],
    ("GET", "/v1/identities/256"): {
        "identity": 256,
        "kind": "endpoint",
        "labels": {"app": "web"},
        "key": "app=web",
        "endpoints": [7, 9],
    },
    ("GET", "/v1/identities/2"): {"identity": 2, "kind": "reserved", "key": "reserved:world"},
    ("GET", "/v1/identities/16777216"): {
        "identity": 16777216,
        "kind": "cidr",
        "labels": {"cidr": "10.0.0.0/8"},
        "key": "cidr:10.0.0.0/8",
        "endpoints": [],
    },
    ("GET", "/v1/version"): {"version": "0.0.9"},
    ("GET", "/v1/policy"): {"revision": 3, "rules": [{"labels": ["name=web"]}]},
    ("PUT", "/v1/policy"): {"revision": 4, "warnings": ["rule 1 selects nothing"]},
    ("DELETE", "/v1/policy?name=web"): {"revision": 5},
    ("DELETE", "/v1/policy?all=true"): {"revision": 6},
    ("PUT", "/v1/policy/mode"): {"mode": "always"},
    ("POST", "/v1/policy/trace"): {
        "allowed": True,
        "reason": "allowed by rule name=web (ingress from app=client)",
    },
    ("GET", "/v1/bpf/endpoints"): [
        {
            "ifindex": 12,
            "endpoint_id": 7,
            "identity": 256,
            "mac": "02:00:00:00:00:07",
            "ipv6": "fdce:1c00:a0b:c0d::7",
            "ipv4": None,
        }
    ],
    ("GET", "/v1/bpf/lb"): [
        {
            "frontend": "[fd00:5::10]:80/tcp",
            "id": 1,
            "backends": [
                {"address": "fdce:1c00:a0b:c0d::7", "port": 80, "weight": 1},
                {"address": "fdce:1c00:a0b:c0d::8", "port": 80, "weight": 2},
            ],
        },
        {"frontend": "10.96.0.10:53/udp", "id": 2, "backends": []},
    ],
    ("GET", "/v1/bpf/policy/web-1"): POLICY_ENTRIES,
    ("GET", "/v1/bpf/ct"): [
        {
            "protocol": 6,
            "src": "fdce:1c00:a0b:c0d::8",
            "sport": 40000,
            "dst": "fdce:1c00:a0b:c0d::7",
            "dport": 80,
            "direction": 0,
            "endpoint_id": 7,
            "lifetime_remaining": 21590,
            "flags": "SYN ACK",
        },
        {"protocol": 132, "src": "10.213.0.8", "dst": "10.213.0.7", "direction": 9},
    ],
    ("GET", "/v1/services"): SERVICES,
    ("GET", "/v1/services/1"): SERVICES[0],
    ("PUT", "/v1/services"): {**SERVICES[0], "warnings": ["no endpoint matches app=web yet"]},
    ("DELETE", "/v1/services/1"): {},
    ("DELETE", "/v1/services/2"): {},
    ("DELETE", "/v1/nodes/old%2Fhost"): {"name": "old/host", "node_id": 7},
    ("GET", "/v1/networks"): [
        {
            "network_id": "4e7" * 21 + "f",
            "name": "demo",
            "pool6": "fdce:1c00:a0b:c0d::/96",
            "gateway6": "fdce:1c00:a0b:c0d::1",
            "pool4": "10.213.0.0/24",
            "gateway4": "10.213.0.1",
            "mtu": 1500,
        }
    ],
}

EVENTS = [
    {
        "kind": "drop",
        "reason_name": "POLICY_DENIED",
        "description": "Policy denied",
        "endpoint_id": 7,
        "direction": 0,
        "src_identity": 5,
        "dst_identity": 256,
        "protocol": 6,
        "src": "fdce:1c00:a0b:c0d::8",
        "sport": 40000,
        "dst": "fdce:1c00:a0b:c0d::7",
        "dport": 80,
    },
    {
        "kind": "trace",
        "reason_name": "TO_ENDPOINT",
        "endpoint_id": 8,
        "direction": 1,
        "src_identity": 256,
        "dst_identity": 5,
        "protocol": 58,
        "src": "fdce:1c00:a0b:c0d::7",
        "dst": "fdce:1c00:a0b:c0d::8",
    },
]
