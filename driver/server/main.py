"""`cilium-docker`: the driver service, gunicorn serving create_app() on Docker's plugin socket
and on the management socket. Runs in the foreground; `make run` puts it in the background."""

import logging
import os

import click
from gunicorn.app.base import BaseApplication

from driver.config import Config, env_name

log = logging.getLogger("pycilium")


class DriverService(BaseApplication):
    """One worker process with threads: all state lives in that one process, behind one lock."""

    def __init__(self, config: Config):
        self.config = config
        self.app = None
        super().__init__()

    def load_config(self):
        for path in (self.config.plugin_socket, self.config.api_socket):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        settings = {
            "bind": [f"unix:{self.config.plugin_socket}", f"unix:{self.config.api_socket}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.config.threads,
            "timeout": self.config.worker_timeout,
            "graceful_timeout": 10,
            # Sockets are created 0660: only root and the docker group reach the driver.
            "umask": 0o117,
            "loglevel": self.config.log_level,
            "accesslog": None,
            "worker_exit": _close_plane,
            "when_ready": self._restrict_api_socket,
        }
        # gunicorn 24+ opens a runtime control socket at a fixed path, shared by every
        # instance on the host; the driver has no use for it.
        if "control_socket_disable" in self.cfg.settings:
            settings["control_socket_disable"] = True
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _restrict_api_socket(self, _server):
        """Docker's group may use the plugin socket; the management API is root's alone."""
        os.chmod(self.config.api_socket, 0o600)

    def load(self):
        # Runs in the worker: the datapath and state are opened there and nowhere else. The
        # app's modules are imported here too, so the master, which only watches the worker,
        # does not hold flask, pyroute2 and the Docker SDK (about 35 MiB) for nothing.
        from .app import create_app

        self.app = create_app(self.config)
        return self.app


def _close_plane(_server, worker):
    app = getattr(worker, "wsgi", None)
    plane = getattr(app, "extensions", {}).get("pycilium") if app else None
    if plane is not None:
        plane.close()


def _option(name: str, help_text: str, **kwargs):
    return click.option(
        "--" + name.replace("_", "-"),
        name,
        envvar=env_name(name),
        default=Config.__dataclass_fields__[name].default,
        help=help_text,
        **kwargs,
    )


_PINNED = "a start refuses pinned maps of another size (docs/security.md)"


# The settings of one driver instance, as options and CILIUM_<OPTION> variables: every
# command about one instance (the service, its uninstall) takes all of them.
_OPTIONS = [
    _option("plugin_name", "plugin name: Docker finds the driver as <plugin-dir>/<name>.sock"),
    _option("plugin_dir", "directory of Docker plugin sockets"),
    _option("api_socket", "management API socket for the `cilium` command"),
    _option("state_dir", "where the state database lives"),
    _option("bpf_pin_dir", "bpffs directory for pinned maps"),
    _option("veth_prefix", "host-side veth name prefix"),
    _option("cluster_prefix6", "IPv6 /64 cluster prefix"),
    _option(
        "node_id",
        "32-bit node id (0: derived from /etc/machine-id, or allocated in etcd with --kvstore)",
        type=int,
    ),
    _option("node_range4", "IPv4 range of this node"),
    _option("service_range6", "IPv6 range service VIPs come from"),
    _option("service_range4", "IPv4 range service VIPs come from"),
    _option("mtu", "default MTU of container interfaces", type=int),
    _option("threads", "request threads", type=int),
    _option("log_level", "debug, info, warning or error"),
    _option("docker_host", "Docker API the events watcher reads"),
    _option(
        "label_prefixes", "label-key prefixes that count for identity, comma-separated; ! excludes"
    ),
    _option(
        "policy_enforcement", "default, always or never (until changed with `cilium policy mode`)"
    ),
    _option(
        "saved_policy",
        "load: enforce the policy saved at the last stop; discard: start without it, when this "
        "version refuses a rule an earlier one saved (docs/policy.md)",
    ),
    _option(
        "metrics_address",
        "also serve Prometheus /metrics on this loopback HOST:PORT, e.g. 127.0.0.1:9962 "
        "(always on the API socket)",
    ),
    _option(
        "flow_buffer",
        "flow records the driver keeps for `cilium observe` and the service map (0: none, "
        "and the datapath emits no flow events)",
        type=int,
    ),
    _option(
        "flow_rate_limit",
        "flow events a second each CPU sends; new connections beyond are counted in the "
        "kernel and shown as aggregated flow records (0: no limit)",
        type=int,
    ),
    _option(
        "ui_address",
        "also serve the service map (/ui) and the flows it reads on this loopback HOST:PORT, "
        "e.g. 127.0.0.1:12000 (always on the API socket)",
    ),
    _option("ui_assets", "directory where setup put cytoscape.js for the service map"),
    _option("policy_map_size", f"policy map entries, all endpoints together; {_PINNED}", type=int),
    _option(
        "ct_map_size", f"conntrack map entries (oldest go first when full); {_PINNED}", type=int
    ),
    _option("service_map_size", f"service frontends; {_PINNED}", type=int),
    _option(
        "nat64_prefix",
        "IPv6 /96 through which containers of IPv6-only networks (-o ipv4=false) reach IPv4",
    ),
    click.option(
        "--prefilter-device",
        "prefilter_devices",
        envvar=env_name("prefilter_devices"),
        multiple=True,
        default=(),
        help="host device to attach the XDP prefilter to (repeat for more; the variable takes "
        "names separated by spaces)",
    ),
    # Cluster mode: several hosts sharing state in etcd (docs/architecture.md).
    _option("kvstore", "etcd: cluster mode, state shared in etcd; empty: one host"),
    _option("kvstore_endpoints", "etcd client URLs, comma-separated, e.g. http://HOST:2379"),
    _option("kvstore_lease_ttl", "seconds a node stays in the cluster without keepalive", type=int),
    _option("node_name", "this node's name in the cluster (empty: the host name)"),
    _option(
        "node_address",
        "underlay address of this node (empty: the one that reaches the first etcd endpoint)",
    ),
    _option(
        "node_mask4",
        "cluster mode: --node-range4 is the cluster's range, node N takes its N-th block of "
        "this length",
        type=int,
    ),
    _option(
        "cluster_dns_port",
        "cluster mode: UDP port on the node address answering other nodes' container names "
        "for Docker's DNS (containers need it as --dns); 0: off",
        type=int,
    ),
    _option(
        "service_mode",
        "cluster mode: a published port whose container is on another node answers the "
        "client from that node (dsr) or back through this one (snat: for underlays that "
        "drop asymmetric traffic)",
        type=click.Choice(["dsr", "snat"]),
    ),
]


def driver_options(command):
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def config_of(options: dict) -> Config:
    try:
        return Config(**options).validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.command(context_settings={"show_default": True})
@driver_options
def main(**options):
    """Serve the pycilium Docker network and IPAM driver in the foreground."""
    config = config_of(options)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    DriverService(config).run()
