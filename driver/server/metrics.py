"""Prometheus metrics: GET /metrics on the app's sockets and, if configured, on a loopback
TCP address of its own.

Every app has its own CollectorRegistry (never prometheus_client's global one: tests build
several apps in one process). Counts of state and datapath counters are read when scraped
by :class:`DaemonCollector` (state under the daemon's lock, BPF counters without it); only
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

from datapath import INIT_ID
from datapath.abi import DIRECTIONS, ENFORCEMENT_MODES, RESERVED_IDENTITIES
from driver.config import loopback_address

log = logging.getLogger(__name__)

PREFIX = "pycilium"
PATH = "/metrics"
# Docker gives up on a plugin call after 30 s; endpoint calls make veths and routes.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class DaemonCollector:
    """Current values of the control plane and datapath, read at scrape time."""

    def __init__(self, daemon):
        self.daemon = daemon

    def describe(self):
        return []  # values are read only when scraped, not when registered

    def collect(self):
        d = self.daemon
        with d.lock:
            endpoints = d.store.endpoints()
            networks = len(d.store.networks())
            identities = d.store.identities()
            rules = len(d.security.policy.rules())
            revision, mode = d.security.revision, d.security.mode
            # The policy map's count comes from the datapath's index, which the control
            # plane changes: read it under the lock.
            fill = d.datapath.map_fill()
            compiles = d.datapath.compile_count
            compile_seconds = d.datapath.compile_seconds
        # BPF maps are safe to read while the control plane writes them: walking conntrack
        # (up to its capacity in entries) does not hold up plugin calls.
        drops = d.datapath.drop_counts()
        forwards = d.datapath.trace_counts()
        ct_totals = d.datapath.ct_totals()
        connected = bool(d.watcher and d.watcher.connected.is_set())

        waiting = sum(ep.identity == INIT_ID for ep in endpoints)
        yield _gauge(
            "endpoints",
            "Endpoints by state",
            ["state"],
            {("ready",): len(endpoints) - waiting, ("waiting-for-identity",): waiting},
        )
        yield _gauge("networks", "Docker networks of this driver", value=networks)
        kinds = {("reserved",): len(RESERVED_IDENTITIES), ("endpoint",): 0, ("cidr",): 0}
        for identity in identities:
            kinds[(identity.kind,)] = kinds.get((identity.kind,), 0) + 1
        yield _gauge("identities", "Security identities by kind", ["kind"], kinds)
        yield _gauge("policy_rules", "Policy rules in force", value=rules)
        yield _gauge("policy_revision", "Revision of the policy in force", value=revision)
        yield _gauge(
            "policy_enforcement_mode",
            "Policy enforcement mode: 1 for the one in force",
            ["mode"],
            {(m,): int(m == mode) for m in ENFORCEMENT_MODES},
        )
        yield _gauge(
            "docker_events_connected",
            "1 while the Docker events watcher is connected (endpoints get identities)",
            value=int(connected),
        )
        yield _gauge(
            "bpf_map_entries",
            "Entries in each BPF map",
            ["map"],
            {(name,): entries for name, (entries, _) in fill.items()},
        )
        yield _gauge(
            "bpf_map_capacity",
            "Maximum entries of each BPF map",
            ["map"],
            {(name,): capacity for name, (_, capacity) in fill.items()},
        )
        yield _counter(
            "drop_packets",
            "Packets dropped by the datapath, by reason (datapath/bpf/lib/drop.h)",
            "reason",
            drops,
        )
        yield _counter(
            "forward_packets",
            "Packets the datapath passed on, by trace point (datapath/bpf/lib/trace.h)",
            "point",
            forwards,
        )
        for what, index in (("packets", 1), ("bytes", 2)):
            yield _gauge(
                f"conntrack_{what}",
                f"{what.capitalize()} of the flows in the conntrack table now, both ways, by the "
                "direction of the endpoint hook tracking them (falls when flows leave the table)",
                ["direction"],
                {(DIRECTIONS.get(d, str(d)),): totals[index] for d, totals in ct_totals.items()},
            )
        compile_time = SummaryMetricFamily(
            f"{PREFIX}_bpf_compile_duration_seconds",
            "Compiling and loading the BPF programs",
            count_value=compiles,
            sum_value=compile_seconds,
        )
        yield compile_time


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

    def __init__(self, daemon):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))
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

    def serve(self, address: str) -> "MetricsServer":
        """Serve /metrics (and nothing else) on a loopback HOST:PORT, in a thread."""
        self.server = MetricsServer(self.wsgi, address)
        self.server.start()
        return self.server

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
    TCP port answers /metrics only, never the management API or Docker's plugin calls."""

    def __init__(self, metrics_app, address: str):
        host, port = loopback_address(address)

        def only_metrics(environ, start_response):
            if environ.get("PATH_INFO") != PATH:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"only /metrics is served here\n"]
            return metrics_app(environ, start_response)

        server_class = type(
            "_Server",
            (_ThreadingServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        try:
            self.httpd = make_server(
                host, port, only_metrics, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {address}: {exc.strerror}") from exc
        self.host, self.port = host, self.httpd.server_port
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-server", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    def start(self) -> None:
        self._thread.start()
        log.info("serving metrics on %s", self.url)

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()
