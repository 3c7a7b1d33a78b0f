"""Prometheus metrics: GET /metrics on the app's sockets and, if configured, on a loopback
TCP address of its own.

Every app has its own CollectorRegistry (never prometheus_client's global one: tests build
several apps in one process). Counts of state and datapath counters are read when scraped
by :class:`PlaneCollector` from the control plane's snapshot and traffic counters; only
plugin call latency is recorded as calls happen, by hooks around the plugin blueprint's
requests.
"""

import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, Response, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.process_collector import ProcessCollector

from driver.config import loopback_address
from driver.control.plane import DIRECTIONS, ENFORCEMENT_MODES, ControlPlane

log = logging.getLogger(__name__)

PREFIX = "pycilium"
PATH = "/metrics"
# Docker gives up on a plugin call after 30 s; endpoint calls make veths and routes.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class PlaneCollector:
    """Current values of the control plane and datapath, read at scrape time."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def describe(self):
        return []  # values are read only when scraped, not when registered

    def collect(self):
        snapshot = self.plane.snapshot()
        traffic = self.plane.traffic()
        yield _gauge(
            "endpoints",
            "Endpoints by state",
            ["state"],
            {
                ("ready",): snapshot.endpoints - snapshot.waiting,
                ("waiting-for-identity",): snapshot.waiting,
            },
        )
        yield _gauge("networks", "Docker networks of this driver", value=snapshot.networks)
        kinds = {(kind,): count for kind, count in snapshot.identities.items()}
        yield _gauge("identities", "Security identities by kind", ["kind"], kinds)
        yield _gauge("policy_rules", "Policy rules in force", value=snapshot.policy_rules)
        yield _gauge(
            "policy_revision", "Revision of the policy in force", value=snapshot.policy_revision
        )
        yield _gauge(
            "policy_enforcement_mode",
            "Policy enforcement mode: 1 for the one in force",
            ["mode"],
            {(m,): int(m == snapshot.policy_mode) for m in ENFORCEMENT_MODES},
        )
        yield _gauge(
            "docker_events_connected",
            "1 while the Docker events watcher is connected (endpoints get identities)",
            value=int(snapshot.docker_events),
        )
        if snapshot.cluster is not None:
            yield from _cluster_gauges(snapshot.cluster)
        yield _gauge(
            "bpf_map_entries",
            "Entries in each BPF map",
            ["map"],
            {(name,): entries for name, (entries, _) in snapshot.map_fill.items()},
        )
        yield _gauge(
            "bpf_map_capacity",
            "Maximum entries of each BPF map",
            ["map"],
            {(name,): capacity for name, (_, capacity) in snapshot.map_fill.items()},
        )
        yield _counter(
            "drop_packets",
            "Packets dropped by the datapath, by reason (datapath/bpf/lib/drop.h)",
            "reason",
            snapshot.drops,
        )
        yield _counter(
            "forward_packets",
            "Packets the datapath passed on, by trace point (datapath/bpf/lib/trace.h)",
            "point",
            traffic.forwards,
        )
        for what, index in (("packets", 1), ("bytes", 2)):
            yield _gauge(
                f"conntrack_{what}",
                f"{what.capitalize()} of the flows in the conntrack table now, both ways, by the "
                "direction of the endpoint hook tracking them (falls when flows leave the table)",
                ["direction"],
                {
                    (DIRECTIONS.get(d, str(d)),): totals[index]
                    for d, totals in traffic.conntrack.items()
                },
            )
        yield _counter(
            "prefilter_drop_packets",
            "Packets the XDP prefilter dropped, by denied source prefix (one series a listed "
            "prefix; a prefix's count starts at 0 when it is added)",
            "prefix",
            {p["cidr"]: p["drops"] for p in snapshot.prefilter["prefixes"]},
        )
        yield _gauge(
            "prefilter_devices",
            "Host devices with the XDP prefilter, by XDP mode (native, generic)",
            ["mode"],
            _modes(snapshot.prefilter["devices"]),
        )
        yield from _flow_counters(self.plane.flow_counts())
        compile_time = SummaryMetricFamily(
            f"{PREFIX}_bpf_compile_duration_seconds",
            "Compiling and loading the BPF programs",
            count_value=snapshot.compile_count,
            sum_value=snapshot.compile_seconds,
        )
        yield compile_time
        yield CounterMetricFamily(
            f"{PREFIX}_bpf_reused_builds",
            "BPF builds reused from an earlier driver process instead of compiled",
            value=snapshot.reuse_count,
        )


def _modes(devices: list[dict]) -> dict[tuple[str], int]:
    counts = {("native",): 0, ("generic",): 0}
    for device in devices:
        if device["mode"]:
            counts[(device["mode"],)] = counts.get((device["mode"],), 0) + 1
    return counts


def _cluster_gauges(cluster: dict):
    """Cluster mode only (--kvstore)."""
    yield _gauge(
        "kvstore_connected",
        "1 while etcd answers (new identities need it)",
        value=int(cluster["connected"]),
    )
    yield _gauge("cluster_nodes", "Nodes of the cluster this one sees", value=len(cluster["nodes"]))


def _flow_counters(counts: dict):
    """The flow log's: new connections and drops by verdict and identities (at most
    driver.control.flows.SERIES_LIMIT series; pairs beyond it count as "other")."""
    family = CounterMetricFamily(
        f"{PREFIX}_flows",
        "Flows by verdict, source and destination identity: new connections (FORWARDED, "
        "TRANSLATED) and dropped packets (DROPPED); identities beyond the series limit are "
        '"other"',
        labels=["verdict", "source_identity", "destination_identity"],
    )
    for (verdict, src, dst), number in sorted(counts.items(), key=str):
        family.add_metric([verdict, str(src), str(dst)], number)
    yield family


def _gauge(name, documentation, labels=None, values=None, value=None):
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels, value=value)
    for label_values, number in (values or {}).items():
        family.add_metric(list(label_values), number)
    return family


def _counter(name, documentation, label, values: dict):
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, number in sorted(values.items()):
        family.add_metric([key], number)
    return family


class Metrics:
    """The registry of one app, its plugin call instruments and the optional TCP server."""

    def __init__(self, plane: ControlPlane):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PlaneCollector(plane))
        ProcessCollector(namespace=PREFIX, registry=self.registry)
        self.call_seconds = Histogram(
            f"{PREFIX}_plugin_call_duration_seconds",
            "Time to answer Docker's plugin calls, by call",
            ["call"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.call_failures = Counter(
            f"{PREFIX}_plugin_call_failures",
            "Plugin calls answered with an error, by call",
            ["call"],
            registry=self.registry,
        )
        self.wsgi = make_wsgi_app(self.registry)
        self.server: MetricsServer | None = None

    def install(self, app: Flask) -> None:
        """GET /metrics on the app, and latency hooks around plugin calls."""
        app.extensions["pycilium_metrics"] = self
        app.add_url_rule(PATH, "metrics", self._view, methods=["GET"])
        app.before_request(self._started)
        app.after_request(self._finished)

    def _view(self) -> Response:
        # prometheus_client's own WSGI app picks the format the scraper asks for; buffered,
        # the reply has a Content-Length instead of gunicorn's chunked encoding.
        return Response.from_app(self.wsgi, request.environ, buffered=True)

    @staticmethod
    def _started() -> None:
        g.pycilium_call_started = time.perf_counter()

    def _finished(self, response: Response) -> Response:
        started = g.pop("pycilium_call_started", None)
        rule = request.url_rule
        # Only the plugin blueprint's own calls: the label values are its fixed call names.
        if request.blueprint == "plugin" and rule is not None and started is not None:
            call = rule.rule.lstrip("/")
            self.call_seconds.labels(call).observe(time.perf_counter() - started)
            if response.status_code >= 400:
                self.call_failures.labels(call).inc()
        return response

    def serve(self, server: "MetricsServer") -> None:
        """Serve /metrics on a server bound before the control plane started."""
        self.server = server
        server.start(self.wsgi)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class MetricsServer:
    """A small HTTP server of its own in the worker, apart from gunicorn's sockets: so the
    TCP port answers /metrics only, never the management API or Docker's plugin calls.
    Bound when made (a taken port fails the driver's start before anything changes);
    scrapes wait in the socket's backlog until start(). The service map's server
    (driver/server/ui.py) is one too, with its own `what` and `path`."""

    what = "metrics"
    path = PATH

    def __init__(self, address: str):
        host, port = loopback_address(address)
        server_class = type(
            "_Server",
            (_ThreadingServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        try:
            self.httpd = make_server(
                host, port, None, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot serve {self.what} on {address}: {exc.strerror}"
            ) from exc
        self.host, self.port = host, self.httpd.server_port
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name=f"{self.what} server", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    def start(self, app) -> None:
        self.httpd.set_app(self.only_served(app))
        self._thread.start()
        log.info("serving %s on %s", self.what, self.url)

    @staticmethod
    def only_served(app):
        return _only_metrics(app)

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()


def _only_metrics(metrics_app):
    def app(environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics is served here\n"]
        return metrics_app(environ, start_response)

    return app
