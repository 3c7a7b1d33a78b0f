#!/usr/bin/env bash
# A pycilium cluster on this one machine: etcd and N simulated hosts (docs: README, "Several
# hosts"). Each host K is a network namespace and a mount namespace with its own dockerd (and
# its containerd) and its own driver instance in cluster mode, reaching the others and etcd
# over an underlay bridge in the root namespace.
#
#   scripts/cluster.sh up        start etcd and hosts 1..NODES (what is already up stays), load
#                                the test image into every host, write $RUN_DIR/nodeK.env
#   scripts/cluster.sh down      remove everything `up` made, whatever state it was left in
#   scripts/cluster.sh status    one line per host; exit 1 when a part is not running
#   scripts/cluster.sh exec K CMD...   run CMD in host K (its network and mount namespaces)
#   scripts/cluster.sh driver-start K | driver-stop K | driver-kill K
#                                the driver of host K alone (driver-kill: SIGKILL, no clean-up;
#                                the fault tests' "a driver killed with -9")
#   scripts/cluster.sh etcd-stop | etcd-start   etcd alone (its data stays): the etcd outage
#   scripts/cluster.sh host-crash K    host K disappears: every process of it killed at once,
#                                its namespaces and files removed (`up` makes it again)
#
# $RUN_DIR/nodeK.env (/run/pycilium/cluster/node1.env) holds KEY=VALUE lines without spaces and
# a last line exporting them, so `. node1.env; docker ps` works in a shell and a parser that
# takes the KEY=VALUE lines (tests/multihost) sees the same values:
#   DOCKER_HOST        unix:// socket of the host's dockerd
#   CILIUM_API_SOCKET  the host's driver's management API (the `cilium` command reads it)
#   NODE_ADDR          the host's underlay IPv4 address
#   NODE_NETNS         the name of the host's network namespace (`ip netns exec`, `ip -n`)
#   NODE_NAME          the host's node name in the cluster (nodeK)
#   KVSTORE_ENDPOINTS  etcd's client URL
#   CILIUM             the `cilium` command of this checkout (not on PATH by itself)
#
# Environment (the defaults are what `make cluster` uses; the multi-host tests run a second
# cluster beside it with other values, so both can be up at once):
#   NODES (3, 1-15: the driver's default node range has 15 node blocks), CLUSTER (cluster: the
#   name of its directories), NETNS_PREFIX (pcnode: host K's namespace is pcnodeK), BRIDGE
#   (pcbr0), UNDERLAY (198.18.0.0/24), ETCD_PORT (12379; the peer port is the next one), VENV,
#   IMAGE, DRIVER_ARGS (more options for every host's driver, e.g. --kvstore-lease-ttl 5).
#
# The underlay: 198.18.0.0/15 is IANA's range for benchmarking test networks (RFC 2544), never
# routed on the Internet. This machine's LAN, Docker's pools and the driver's ranges are
# elsewhere, and no test or document of the project uses it (the three documentation ranges
# are all taken by tests' "world" links in the root namespace). Nothing leaves the machine:
# the hosts have no default route, only the bridge's subnet, and the root namespace reaches
# the range through the bridge alone (`up` refuses an UNDERLAY that overlaps a route here).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES=${NODES:-3}
CLUSTER=${CLUSTER:-cluster}
NETNS_PREFIX=${NETNS_PREFIX:-pcnode}
BRIDGE=${BRIDGE:-pcbr0}
UNDERLAY=${UNDERLAY:-198.18.0.0/24}
ETCD_PORT=${ETCD_PORT:-12379}
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$REPO_ROOT/$VENV" ;; esac
IMAGE=${IMAGE:-pycilium/busybox:latest}
DRIVER_ARGS=${DRIVER_ARGS:-}
# Where Debian's docker.io puts it, or docker-ce's (as scripts/setup-host.sh looks).
DOCKERD=${DOCKERD:-$(for d in /usr/sbin/dockerd /usr/bin/dockerd; do [ -x "$d" ] && echo "$d" && break; done)}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
START_TIMEOUT=${START_TIMEOUT:-120}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

RUN_DIR=$STATE_DIR/$CLUSTER             # sockets, pid files, env files, namespace files
DATA_DIR=/var/lib/pycilium/$CLUSTER     # etcd's data, each host's data root and driver state
CLUSTER_LOG_DIR=$LOG_DIR/$CLUSTER
NS_DIR=$RUN_DIR/ns                      # the hosts' mount namespaces, bound to files here
ETCD_PIDFILE=$RUN_DIR/etcd.pid
PIN_PREFIX=/sys/fs/bpf/pycilium-$CLUSTER-
RULE_COMMENT="pycilium $CLUSTER underlay"

# The underlay's addresses: the bridge (etcd listens there) is .1, host K is .(10+K).
underlay_base() { echo "${UNDERLAY%.*}"; }   # 198.18.0.0/24 -> 198.18.0
underlay_len() { echo "${UNDERLAY#*/}"; }
BRIDGE_ADDR=$(underlay_base).1
ETCD_URL=http://$BRIDGE_ADDR:$ETCD_PORT
node_addr() { echo "$(underlay_base).$((10 + $1))"; }

# Host K's names and paths.
netns() { echo "$NETNS_PREFIX$1"; }
host_dir() { echo "$RUN_DIR/node$1"; }
mnt_file() { echo "$NS_DIR/node$1.mnt"; }
docker_sock() { echo "$(host_dir "$1")/docker.sock"; }
api_sock() { echo "$(host_dir "$1")/cilium.sock"; }
plugin_dir() { echo "$(host_dir "$1")/plugins"; }
driver_pidfile() { echo "$(host_dir "$1")/driver.pid"; }
dockerd_pidfile() { echo "$(host_dir "$1")/dockerd.pid"; }
cgroup_name() { echo "pycilium-$CLUSTER-node$1"; }

usage() {
    echo "usage: $0 up|down|status | exec K CMD... | driver-start K | driver-stop K" \
        "| driver-kill K | host-crash K | etcd-stop | etcd-start" >&2
    exit 2
}

check_settings() {
    if ! [[ "$NODES" =~ ^[0-9]+$ ]] || [ "$NODES" -lt 1 ] || [ "$NODES" -gt 15 ]; then
        die "NODES=$NODES: 1 to 15 hosts"
    fi
    [[ "$UNDERLAY" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.0/24$ ]] || die "UNDERLAY=$UNDERLAY: an IPv4 /24"
    [ "${#BRIDGE}" -le 15 ] || die "BRIDGE=$BRIDGE: at most 15 characters"
    # The root namespace's end of host K's veth is named like its namespace: 15 characters.
    [ "${#NETNS_PREFIX}" -le 13 ] || die "NETNS_PREFIX=$NETNS_PREFIX: at most 13 characters"
}

# --- processes -------------------------------------------------------------------------------

# Field N of /proc/PID/stat (5 = process group, 22 = start time), past the command name.
proc_stat_field() {
    local stat n=$2
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat   # now $1 is field 3
    shift $((n - 3))
    echo "$1"
}

# The pid in PIDFILE when that process is alive and still the one recorded (its start time
# in PIDFILE.start): never signal a recycled pid.
live_pid() {
    local pidfile=$1 pid
    [ -s "$pidfile" ] || return 1
    pid=$(head -n 1 "$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [ -s "$pidfile.start" ]; then
        [ "$(proc_stat_field "$pid" 22)" = "$(cat "$pidfile.start")" ] || return 1
    fi
    echo "$pid"
}

record_pid() {
    echo "$2" >"$1"
    proc_stat_field "$2" 22 >"$1.start" || true
}

# stop_process PIDFILE WHAT: TERM its process group, KILL after STOP_TIMEOUT.
stop_process() {
    local pidfile=$1 what=$2 pid waited=0
    pid=$(live_pid "$pidfile") || { rm -f "$pidfile" "$pidfile.start"; return 0; }
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((STOP_TIMEOUT * 5)) ]; do
        sleep 0.2
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        say "$what (pid $pid) did not stop within ${STOP_TIMEOUT}s: killed"
    else
        say "stopped $what (pid $pid)"
    fi
    rm -f "$pidfile" "$pidfile.start"
}

# Pids of every process in host K's mount or network namespace, and of their descendants
# (containers have namespaces of their own): what is left once dockerd and the driver are gone.
host_pids() {
    local k=$1 roots="" mnt_id=""
    [ -e "$(mnt_file "$k")" ] && mnt_id=$(stat -L -c %i "$(mnt_file "$k")" 2>/dev/null || true)
    [ -z "$mnt_id" ] || roots=$(pids_in_mount_ns "mnt:[$mnt_id]")
    if [ -e "/run/netns/$(netns "$k")" ]; then
        roots=$(printf '%s\n%s\n' "$roots" "$(ip netns pids "$(netns "$k")" 2>/dev/null)")
    fi
    roots=$(echo "$roots" | grep -v '^$' || true)
    [ -n "$roots" ] || return 0
    with_descendants "$roots"
}

# in_host K CMD...: CMD in host K's network and mount namespaces.
in_host() {
    local k=$1
    shift
    nsenter --mount="$(mnt_file "$k")" --net="/run/netns/$(netns "$k")" "$@"
}

host_docker() {
    local k=$1
    shift
    DOCKER_HOST=unix://$(docker_sock "$k") "$DOCKER" "$@"
}

# wait_until SECONDS WHAT PIDFILE LOG CMD...: until CMD succeeds; fail when the process of
# PIDFILE dies first or time runs out, with the tail of LOG.
wait_until() {
    local seconds=$1 what=$2 pidfile=$3 log=$4 deadline
    shift 4
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ! live_pid "$pidfile" >/dev/null; then
            tail -n 30 "$log" >&2 || true
            die "$what exited during start-up (log: $log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$log" >&2 || true
            die "$what did not answer within ${seconds}s (log: $log)"
        fi
        sleep 0.3
    done
}

# --- etcd and the underlay --------------------------------------------------------------------

etcd_healthy() {
    curl -s --max-time 2 "$ETCD_URL/health" | grep -q '"health":"true"'
}

start_etcd() {
    local pid peer=http://127.0.0.1:$((ETCD_PORT + 1)) log=$CLUSTER_LOG_DIR/etcd.log
    if live_pid "$ETCD_PIDFILE" >/dev/null; then
        return 0
    fi
    mkdir -p "$DATA_DIR/etcd" "$CLUSTER_LOG_DIR"
    chmod 0700 "$DATA_DIR/etcd"
    setsid etcd --name "$CLUSTER" --data-dir "$DATA_DIR/etcd" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$CLUSTER=$peer" >>"$log" 2>&1 </dev/null &
    pid=$!
    record_pid "$ETCD_PIDFILE" "$pid"
    wait_until 30 etcd "$ETCD_PIDFILE" "$log" etcd_healthy
    say "started etcd (pid $pid, $ETCD_URL, data $DATA_DIR/etcd, log $log)"
}

# With br_netfilter loaded, frames bridged between two hosts pass the root namespace's FORWARD
# chain, whose policy Docker sets to DROP: one rule lets the underlay's traffic through.
forward_rule() {
    iptables "$1" FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "$RULE_COMMENT" -j ACCEPT
}

make_bridge() {
    local taken
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        # The machine's own routes first: an underlay that overlaps one would take its traffic.
        taken=$( (ip -4 route show root "$UNDERLAY"; ip -4 route show match "$UNDERLAY") |
            grep -v '^default' | sort -u || true)
        [ -z "$taken" ] || die "UNDERLAY=$UNDERLAY overlaps this machine's route(s): $taken" \
            "(choose another UNDERLAY)"
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_ADDR/$(underlay_len)" dev "$BRIDGE"
        ip link set "$BRIDGE" up
        say "made bridge $BRIDGE ($BRIDGE_ADDR/$(underlay_len))"
    fi
    forward_rule -C 2>/dev/null || forward_rule -I
}

# --- a host ---------------------------------------------------------------------------------------

# Host K's network namespace (a veth to the bridge: NETNS_PREFIXK in the root namespace, eth0
# inside, with the underlay address and no default route) and mount namespace (a private
# /run/docker/plugins for its driver's socket, a private /run/containerd for its containerd's
# shims), both kept by files so dockerd, the driver and `exec` can enter them at any time.
make_host() {
    local k=$1 ns dir mnt
    ns=$(netns "$k")
    dir=$(host_dir "$k")
    mnt=$(mnt_file "$k")
    mkdir -p "$dir" "$(plugin_dir "$k")" "$DATA_DIR/node$k" "$CLUSTER_LOG_DIR"
    if [ ! -e "/run/netns/$ns" ]; then
        ip netns add "$ns"
        ip link add "$ns" type veth peer name eth0 netns "$ns"
        ip link set "$ns" master "$BRIDGE" up
        ip -n "$ns" addr add "$(node_addr "$k")/$(underlay_len)" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        say "made host $k: namespace $ns, underlay address $(node_addr "$k")"
    fi
    if ! mountpoint -q "$NS_DIR"; then
        mkdir -p "$NS_DIR"
        mount --bind "$NS_DIR" "$NS_DIR"
        mount --make-private "$NS_DIR"
    fi
    if ! nsenter --mount="$mnt" true 2>/dev/null; then
        touch "$mnt"
        # shellcheck disable=SC2016
        unshare --mount="$mnt" --propagation slave sh -c '
            set -e
            mkdir -p /run/docker/plugins /run/containerd
            mount --bind "$1" /run/docker/plugins
            mount -t tmpfs -o mode=0711 tmpfs /run/containerd' sh "$(plugin_dir "$k")"
    fi
}

start_dockerd() {
    local k=$1 dir pid log
    dir=$(host_dir "$k")
    log=$CLUSTER_LOG_DIR/node$k-dockerd.log
    live_pid "$(dockerd_pidfile "$k")" >/dev/null && return 0
    # Not the machine's /etc/docker/daemon.json: the hosts are configured here alone. The
    # driver answers other hosts' container names on the node address (--cluster-dns-port):
    # Docker's embedded DNS asks it for every name it does not know itself.
    printf '{"dns": ["%s"]}\n' "$(node_addr "$k")" >"$dir/daemon.json"
    # iptables on: each host's dockerd manages its own namespace's rules, as on a real host.
    # --bridge none: containers are on cilium networks here, Docker's default bridge is not used.
    setsid nsenter --mount="$(mnt_file "$k")" --net="/run/netns/$(netns "$k")" \
        "$DOCKERD" --config-file "$dir/daemon.json" -H "unix://$(docker_sock "$k")" \
        --data-root "$DATA_DIR/node$k/docker" --exec-root "$dir/exec" \
        --pidfile "$dir/dockerd.own.pid" --bridge none \
        --containerd-namespace "$(netns "$k")" --containerd-plugins-namespace "$(netns "$k")p" \
        --cgroup-parent "$(cgroup_name "$k")" >>"$log" 2>&1 </dev/null &
    pid=$!
    record_pid "$(dockerd_pidfile "$k")" "$pid"
    say "started dockerd of host $k (pid $pid, $(docker_sock "$k"), log $log)"
}

wait_dockerd() {
    local k=$1
    wait_until "$START_TIMEOUT" "dockerd of host $k" "$(dockerd_pidfile "$k")" \
        "$CLUSTER_LOG_DIR/node$k-dockerd.log" host_docker "$k" version
}

plugin_answers() {
    curl -s --max-time 2 --unix-socket "$(plugin_dir "$1")/cilium.sock" \
        -X POST http://localhost/Plugin.Activate | grep -q NetworkDriver
}

start_driver() {
    local k=$1 dir pid log
    dir=$(host_dir "$k")
    log=$CLUSTER_LOG_DIR/node$k-driver.log
    live_pid "$(driver_pidfile "$k")" >/dev/null && return 0
    [ -x "$VENV/bin/cilium-docker" ] || die "$VENV/bin/cilium-docker not found: run 'make setup' first"
    mkdir -p "$DATA_DIR/node$k"
    printf '\n==> %s: starting the driver of host %s\n' "$(date -Is)" "$k" >>"$log"
    # The same driver as `make run`, in cluster mode; its plugin socket is the host's own
    # /run/docker/plugins/cilium.sock (the mount namespace's), so `-d cilium` works on each.
    # shellcheck disable=SC2086
    setsid nsenter --mount="$(mnt_file "$k")" --net="/run/netns/$(netns "$k")" \
        "$VENV/bin/cilium-docker" --kvstore etcd --kvstore-endpoints "$ETCD_URL" \
        --node-name "node$k" --node-address "$(node_addr "$k")" \
        --docker-host "unix://$(docker_sock "$k")" --api-socket "$(api_sock "$k")" \
        --state-dir "$DATA_DIR/node$k/driver" --bpf-pin-dir "${PIN_PREFIX}node$k" \
        $DRIVER_ARGS >>"$log" 2>&1 </dev/null &
    pid=$!
    record_pid "$(driver_pidfile "$k")" "$pid"
    say "started the driver of host $k (pid $pid, API $(api_sock "$k"), log $log)"
}

wait_driver() {
    local k=$1
    wait_until "$START_TIMEOUT" "the driver of host $k" "$(driver_pidfile "$k")" \
        "$CLUSTER_LOG_DIR/node$k-driver.log" plugin_answers "$k"
}

# The test image in host 1 (scripts/build-image.sh, as for the main engine), then the same
# image (same id) in every other host.
load_image() {
    local k id
    DOCKER_HOST=unix://$(docker_sock 1) DOCKER=$DOCKER IMAGE=$IMAGE "$REPO_ROOT/scripts/build-image.sh"
    id=$(host_docker 1 image inspect -f '{{.Id}}' "$IMAGE")
    for k in $(seq 2 "$NODES"); do
        [ "$(host_docker "$k" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)" != "$id" ] || continue
        host_docker 1 save "$IMAGE" | host_docker "$k" load >/dev/null
        say "loaded $IMAGE into host $k"
    done
}

write_env() {
    local k=$1 file=$RUN_DIR/node$1.env
    printf '%s\n' "DOCKER_HOST=unix://$(docker_sock "$k")" "CILIUM_API_SOCKET=$(api_sock "$k")" \
        "NODE_ADDR=$(node_addr "$k")" "NODE_NETNS=$(netns "$k")" "NODE_NAME=node$k" \
        "KVSTORE_ENDPOINTS=$ETCD_URL" "CILIUM=$VENV/bin/cilium" \
        "export DOCKER_HOST CILIUM_API_SOCKET NODE_ADDR NODE_NETNS NODE_NAME KVSTORE_ENDPOINTS CILIUM" \
        >"$file.tmp"
    mv "$file.tmp" "$file"
}

usage_note() {
    cat <<EOF

The cluster is up: etcd at $ETCD_URL, hosts 1-$NODES on bridge $BRIDGE ($UNDERLAY).
In a shell, pick a host and use docker and cilium as on a real one:

  . $RUN_DIR/node1.env
  docker network create --ipv6 -d cilium --ipam-driver cilium demo
  docker run -d --name web --net demo $IMAGE httpd -f -p 80 -h /www
  \$CILIUM node list
  ip netns exec \$NODE_NETNS ip addr        # the host's own interfaces

Logs: $CLUSTER_LOG_DIR/. Remove it all with: make cluster-down
EOF
}

# What `up` runs; make setup installs them (etcd-server, docker.io, curl, iptables).
require_tools() {
    local tool missing=()
    for tool in etcd "$DOCKERD" curl iptables nsenter unshare ip; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (make setup installs them)"
}

up() {
    local k
    check_settings
    require_root
    require_tools
    mkdir -p "$RUN_DIR" "$DATA_DIR" "$CLUSTER_LOG_DIR"
    make_bridge
    start_etcd
    for k in $(seq 1 "$NODES"); do
        make_host "$k"
        start_dockerd "$k"
    done
    for k in $(seq 1 "$NODES"); do wait_dockerd "$k"; done
    # Drivers start together (each compiles its datapath) once every host's engine answers.
    for k in $(seq 1 "$NODES"); do start_driver "$k"; done
    for k in $(seq 1 "$NODES"); do wait_driver "$k"; done
    load_image
    for k in $(seq 1 "$NODES"); do write_env "$k"; done
    say "wrote $RUN_DIR/node{1..$NODES}.env"
    usage_note
}

# --- down ------------------------------------------------------------------------------------------

# Every host number `up` may have made, from what is on the machine (not from NODES).
known_hosts() {
    {
        ip netns list 2>/dev/null | awk '{ print $1 }' | sed -n "s/^$NETNS_PREFIX\([0-9][0-9]*\)$/\1/p"
        for d in "$RUN_DIR"/node[0-9]* "$DATA_DIR"/node[0-9]* "$PIN_PREFIX"node[0-9]*; do
            [ -e "$d" ] && basename "$d" | sed -n 's/^.*node\([0-9][0-9]*\)$/\1/p'
        done
    } | sort -un
}

# remove_host K [crash]: stop host K's containers, driver and dockerd, or with "crash" kill
# every process of the host at once (a host that disappears: nothing of it says goodbye);
# then remove its namespaces and everything of it on disk.
remove_host() {
    local k=$1 how=${2:-} pids ids cgroups
    if [ "$how" = crash ]; then
        pids=$(host_pids "$k")
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        rm -f "$(driver_pidfile "$k")"* "$(dockerd_pidfile "$k")"*
        say "host $k: killed every process of it: pids ${pids//$'\n'/ }"
    elif live_pid "$(dockerd_pidfile "$k")" >/dev/null; then
        ids=$(host_docker "$k" ps -aq 2>/dev/null || true)
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086
            host_docker "$k" rm -f $ids >/dev/null 2>&1 || true
            say "host $k: removed $(echo "$ids" | wc -l) container(s)"
        fi
    fi
    stop_process "$(driver_pidfile "$k")" "the driver of host $k"
    stop_process "$(dockerd_pidfile "$k")" "dockerd of host $k"
    # containerd and its shims end shortly after dockerd; whatever is left is killed.
    local waited=0
    while pids=$(host_pids "$k") && [ -n "$pids" ] && [ "$waited" -lt 25 ]; do
        sleep 0.2
        waited=$((waited + 1))
    done
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        say "host $k: killed what was left running: pids ${pids//$'\n'/ }"
        sleep 0.2
    fi
    if [ -e "$(mnt_file "$k")" ]; then
        umount "$(mnt_file "$k")" 2>/dev/null || true
        rm -f "$(mnt_file "$k")"
    fi
    if [ -e "/run/netns/$(netns "$k")" ]; then
        ip netns del "$(netns "$k")"
        say "host $k: removed namespace $(netns "$k") (its devices, routes and rules with it)"
    fi
    ip link del "$(netns "$k")" 2>/dev/null || true
    cgroups=$(find /sys/fs/cgroup -maxdepth 2 -type d -name "$(cgroup_name "$k")" 2>/dev/null || true)
    if [ -n "$cgroups" ]; then
        # shellcheck disable=SC2086
        find $cgroups -depth -type d -exec rmdir {} + 2>/dev/null ||
            say "host $k: could not remove the cgroups $(cgroup_name "$k") (processes left in them?)"
    fi
    if [ -d "${PIN_PREFIX}node$k" ]; then
        rm -rf "${PIN_PREFIX}node$k"
        say "host $k: removed pinned maps ${PIN_PREFIX}node$k"
    fi
    rm -rf "$(host_dir "$k")" "$DATA_DIR/node$k" "$RUN_DIR/node$k.env"
}

down() {
    local k pids=() failed=0
    require_root
    # Hosts go at once: each dockerd takes seconds to stop.
    for k in $(known_hosts); do
        remove_host "$k" &
        pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || failed=1; done
    [ "$failed" -eq 0 ] || die "a host could not be removed (see above); run down again"
    stop_process "$ETCD_PIDFILE" etcd
    while forward_rule -D 2>/dev/null; do :; done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE"
        say "removed bridge $BRIDGE"
    fi
    if mountpoint -q "$NS_DIR" 2>/dev/null; then
        umount "$NS_DIR"
    fi
    if [ -d "$RUN_DIR" ] || [ -d "$DATA_DIR" ]; then
        rm -rf "$RUN_DIR" "$DATA_DIR"
        say "removed $RUN_DIR and $DATA_DIR (logs stay in $CLUSTER_LOG_DIR)"
    fi
}

status() {
    local k state=0 part
    if live_pid "$ETCD_PIDFILE" >/dev/null && etcd_healthy; then
        echo "etcd: up ($ETCD_URL)"
    else
        echo "etcd: down"
        state=1
    fi
    for k in $(known_hosts); do
        part=""
        live_pid "$(dockerd_pidfile "$k")" >/dev/null && host_docker "$k" version >/dev/null 2>&1 ||
            part="$part dockerd"
        live_pid "$(driver_pidfile "$k")" >/dev/null && plugin_answers "$k" || part="$part driver"
        if [ -z "$part" ]; then
            echo "host $k: up ($(netns "$k"), $(node_addr "$k"), $RUN_DIR/node$k.env)"
        else
            echo "host $k: not running:$part"
            state=1
        fi
    done
    return "$state"
}

host_number() {
    if ! [[ "${1:-}" =~ ^[0-9]+$ ]] || [ ! -e "/run/netns/$(netns "$1")" ]; then
        die "no host '${1:-}' in cluster $CLUSTER (hosts: $(known_hosts | tr '\n' ' '))"
    fi
}

main() {
    [ $# -ge 1 ] || usage
    case "$1" in
        up) up ;;
        down) down ;;
        status) status ;;
        exec)
            [ $# -ge 3 ] || usage
            host_number "$2"
            k=$2
            shift 2
            in_host "$k" "$@"
            ;;
        driver-start)
            host_number "${2:-}"
            start_driver "$2"
            wait_driver "$2"
            ;;
        driver-stop)
            host_number "${2:-}"
            stop_process "$(driver_pidfile "$2")" "the driver of host $2"
            ;;
        etcd-stop) stop_process "$ETCD_PIDFILE" etcd ;;
        etcd-start) start_etcd ;;
        host-crash)
            host_number "${2:-}"
            remove_host "$2" crash
            ;;
        driver-kill)
            host_number "${2:-}"
            pid=$(live_pid "$(driver_pidfile "$2")") || die "the driver of host $2 is not running"
            kill -KILL -- "-$pid"
            rm -f "$(driver_pidfile "$2")" "$(driver_pidfile "$2").start"
            say "killed the driver of host $2 (pid $pid) with SIGKILL"
            ;;
        *) usage ;;
    esac
}

main "$@"
