#!/usr/bin/env bash
# A second Docker engine of another version beside the host's, for running the suite against
# today's Docker: its own Debian root filesystem (debootstrap from this machine's configured
# Debian mirror, read from the apt sources at run time), run in its own mount namespace with
# its own data root, exec root and socket, sharing the host's network namespace and the
# host's /run/docker/plugins (so the driver the host runs is this engine's driver too).
#
#   scripts/engine.sh up 26     start it (building the rootfs on first use), load the test
#                               image from the main engine, write $ENV_DIR/26.env
#   scripts/engine.sh down 26   remove its containers and networks, stop it, remove its data
#                               root, exec root, pid file and env file. The cached rootfs
#                               stays (a later `up` reuses it). Down when not up does nothing.
#
# $ENV_DIR/VERSION.env (/run/pycilium/engines/26.env) holds KEY=VALUE lines without spaces
# (for `set -a; . FILE; set +a`, `docker --env-file` or a parser):
#   DOCKER_HOST     unix:// socket of the engine
#   DOCKER          the engine's own docker client (26.1), run on the host by a wrapper that
#                   sets DOCKER_HOST itself, so it cannot reach the main engine by mistake
#   COMPOSE         the engine's compose v2, the same way (`$COMPOSE -f file.yml -p proj up -d`;
#                   it runs on the host, so the compose file's host path is what it reads)
#   ENGINE_VERSION  the engine's version as it reports it
#
# Environment: DOCKER (the main engine's client, default /usr/bin/docker), IMAGE (default
# pycilium/busybox:latest), CACHE (default /var/cache/pycilium/engine), DEBIAN_MIRROR
# (overrides the mirror read from the apt sources), START_TIMEOUT, STOP_TIMEOUT (seconds).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/apt-sources.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-sources.sh"

# One line per supported engine: VERSION="SUITE SERVER_VERSION_PREFIX PACKAGE...".
declare -A ENGINES=(
    [26]="trixie 26.1. docker.io docker-cli docker-compose ca-certificates iptables"
)

IMAGE=${IMAGE:-pycilium/busybox:latest}
CACHE=${CACHE:-/var/cache/pycilium/engine}
ENV_DIR=$STATE_DIR/engines
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
# A client for `down` when the engine's rootfs is gone (CLI 28 on these machines: API 1.45).
HOST_CLI=/usr/local/bin/docker
# Bridge networks the engine makes (compose's project_default) come from here, so they
# never take a range of the main engine, which shares the network namespace and picks from
# Docker's default pools (172.17-31.x, 192.168.x), nor one the tests use (10.2xx.0.0/16).
ADDRESS_POOL=${ADDRESS_POOL:-base=10.250.0.0/16,size=24}
# Bump to rebuild every cached rootfs (a change of how it is made, not of what is in it).
ROOTFS_FORMAT=1

usage() {
    echo "usage: $0 up|down VERSION   (versions: ${!ENGINES[*]})" >&2
    exit 2
}

# Sets SUITE, SERVER_PREFIX, PACKAGES and the per-engine paths for VERSION.
select_engine() {
    local version=$1 spec
    [ -n "${ENGINES[$version]+x}" ] ||
        die "Docker '$version' is not supported; supported: ${!ENGINES[*]} (add a line to ENGINES in $0)"
    read -r -a spec <<<"${ENGINES[$version]}"
    SUITE=${spec[0]}
    SERVER_PREFIX=${spec[1]}
    PACKAGES=("${spec[@]:2}")
    VERSION=$version
    NAME=docker-$version
    RUN_DIR=$ENV_DIR/$version
    SOCK=$RUN_DIR/docker.sock
    PIDFILE=$RUN_DIR/dockerd.pid
    EXEC_ROOT=$RUN_DIR/exec
    # On disk: the data root and the rootfs overlay's upper layer.
    ENGINE_STATE=/var/lib/pycilium/engines/$version
    DATA_ROOT=$ENGINE_STATE/data
    ENV_FILE=$ENV_DIR/$version.env
    ENGINE_LOG=$LOG_DIR/engine-$version.log
}

# --- cached rootfs ------------------------------------------------------------------------

# The URI of the machine's main Debian source (not -updates/-security); the engine's suite
# is taken from the same mirror.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    apt_sources | awk '$2 !~ /-/ { print $1; exit }'
}

rootfs_key() {
    printf '%s\n' "$ROOTFS_FORMAT" "$SUITE" "$(dpkg --print-architecture)" "${PACKAGES[@]}" |
        sha256sum | cut -c1-16
}

build_rootfs() {
    local root=$1 mirror tmp include
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list{,.d/*} (set DEBIAN_MIRROR)"
    require_debootstrap
    tmp=$root.tmp
    rm -rf "$tmp"
    include=$(IFS=,; echo "${PACKAGES[*]}")
    say "debootstrap --variant=minbase $SUITE with $include from $mirror (first up only: a few minutes)"
    run_logged debootstrap --variant=minbase --include="$include" "$SUITE" "$tmp" "$mirror"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$tmp" apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* \
        "$tmp"/usr/share/info/* "$tmp"/var/log/*.log
    mv "$tmp" "$root"
    touch "$root.done"
}

# Sets ROOTFS to the cached rootfs, building it first when missing.
ensure_rootfs() {
    ROOTFS=$CACHE/rootfs-$VERSION-$(rootfs_key)
    mkdir -p "$CACHE"
    # One build at a time: two `up`s share the cache.
    exec 9>"$CACHE/.lock"
    flock 9
    if [ ! -f "$ROOTFS.done" ]; then
        rm -rf "$CACHE/rootfs-$VERSION-"*   # an older package list: a whole rootfs each
        build_rootfs "$ROOTFS"
    fi
    exec 9>&-
}

# --- the engine ------------------------------------------------------------------------------

# Run in the new mount namespace: the cached rootfs under an overlay (what the engine writes
# goes to the upper layer, removed by `down`; the cache stays as built), the kernel
# filesystems, a fresh /run, the host's /tmp (bind-mount sources and compose files there are
# the same paths for the engine as for a test), the host's plugin directory, and the engine's
# run directory and data root at the same paths as on the host; then the command, in it.
# Every mount turns private but the exec root, a shared mount made by start_engine: the
# network namespaces dockerd mounts under exec/netns show on the host too, so the host's
# driver can open the SandboxKey that Join gets. The overlay becomes the namespace's root by
# pivot_root (the old root stacked on it, then detached), not chroot: `docker exec` joins a
# container's mount namespace and starts at that namespace's root, which under a chroot is
# the host's / (the exec'd command would run in the host's filesystem).
# shellcheck disable=SC2016
NS_SETUP='set -e
lower=$1 state=$2 run=$3 data=$4 exec_root=$5
shift 5
root=$state/root
awk '"'"'{ print $5 }'"'"' /proc/self/mountinfo | while read -r m; do
    [ "$m" = "$exec_root" ] || mount --make-private "$m" || true
done
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$state/upper,workdir=$state/work" "$root"
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount --bind /tmp "$root/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/docker/plugins" "$root$run" "$root$data"
mount --bind /run/docker/plugins "$root/run/docker/plugins"
mount --bind "$run" "$root$run"
mount --bind "$exec_root" "$root$exec_root"
mount --bind "$data" "$root$data"
cd "$root"
pivot_root . .
umount -l .
exec "$@"'

# The engine's own client (the host's CLI when the rootfs is gone), pinned to its socket.
engine_docker() {
    local client=$ROOTFS/usr/bin/docker
    [ -x "$client" ] || client=$HOST_CLI
    DOCKER_HOST=unix://$SOCK "$client" "$@"
}

# Prints the pid of this engine's dockerd when it runs; fails otherwise. The socket in its
# command line guards against a recycled pid.
engine_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid=$(head -n 1 "$PIDFILE")
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "unix://$SOCK " || return 1
    echo "$pid"
}

# With br_netfilter loaded, frames bridged between two containers of one of the engine's
# bridge networks pass the host's FORWARD chain, whose policy the main engine sets to DROP;
# this engine runs with --iptables=false and adds no rule of its own. One rule lets its
# pool's traffic through; clean_up removes it.
forward_rule() {
    local base=${ADDRESS_POOL#base=}
    base=${base%%,*}
    iptables "$1" FORWARD -s "$base" -d "$base" -m comment --comment "pycilium engine $VERSION" -j ACCEPT
}

start_engine() {
    local pid waited=0
    forward_rule -I
    mkdir -p "$RUN_DIR" "$EXEC_ROOT" "$DATA_ROOT" "$ENGINE_STATE"/{upper,work,root} "$LOG_DIR"
    printf '\n==> %s: dockerd %s from %s\n' "$(date -Is)" "$VERSION" "$ROOTFS" >>"$ENGINE_LOG"
    mount --bind "$EXEC_ROOT" "$EXEC_ROOT"
    mount --make-private "$EXEC_ROOT"
    mount --make-shared "$EXEC_ROOT"
    # The pid of setsid is dockerd's: setsid, env, unshare and sh all exec.
    setsid env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        unshare --mount --propagation unchanged sh -c "$NS_SETUP" sh \
        "$ROOTFS" "$ENGINE_STATE" "$RUN_DIR" "$DATA_ROOT" "$EXEC_ROOT" \
        /usr/sbin/dockerd -H "unix://$SOCK" --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" \
        --pidfile "$PIDFILE" --containerd-namespace "$NAME" --containerd-plugins-namespace "$NAME-plugins" \
        --bridge none --iptables=false --ip6tables=false \
        --default-address-pool "$ADDRESS_POOL" --cgroup-parent "$NAME" \
        >>"$ENGINE_LOG" 2>&1 </dev/null &
    pid=$!
    until engine_docker version >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$ENGINE_LOG" >&2
            die "dockerd $VERSION exited (log: $ENGINE_LOG)"
        fi
        [ "$waited" -lt $((START_TIMEOUT * 5)) ] || {
            tail -n 30 "$ENGINE_LOG" >&2
            die "dockerd $VERSION did not answer on $SOCK within ${START_TIMEOUT}s (log: $ENGINE_LOG)"
        }
        sleep 0.2
        waited=$((waited + 1))
    done
    readlink "/proc/$pid/ns/mnt" >"$RUN_DIR/mntns"
    echo "$ROOTFS" >"$RUN_DIR/rootfs"
    say "started dockerd $(engine_docker version -f '{{.Server.Version}}') (pid $pid, socket $SOCK, log $ENGINE_LOG)"
}

load_image() {
    local id
    id=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) ||
        die "the main engine has no $IMAGE: run scripts/build-image.sh (make setup) first"
    [ "$(engine_docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)" != "$id" ] || return 0
    "$DOCKER" save "$IMAGE" | engine_docker load >/dev/null
    say "loaded $IMAGE from the main engine"
}

# Wrappers pinned to this engine, run on the host (host paths in -f work): the engine's own
# docker client and compose v2. Both need no more than the host's glibc (checked below).
write_wrapper() {
    local path=$1 binary=$2
    cat >"$path.tmp" <<WRAPPER
#!/bin/sh
# Written by scripts/engine.sh up $VERSION: $(basename "$binary") of Docker $VERSION against that engine.
DOCKER_HOST=unix://$SOCK
export DOCKER_HOST
exec $binary "\$@"
WRAPPER
    chmod 0755 "$path.tmp"
    mv "$path.tmp" "$path"
}

write_env() {
    local server
    write_wrapper "$RUN_DIR/docker" "$ROOTFS/usr/bin/docker"
    write_wrapper "$RUN_DIR/compose" "$ROOTFS/usr/libexec/docker/cli-plugins/docker-compose"
    "$RUN_DIR/compose" version >/dev/null 2>&1 ||
        die "$ROOTFS's docker-compose does not run on this host: $("$RUN_DIR/compose" version 2>&1 | head -n 1)"
    server=$("$RUN_DIR/docker" version -f '{{.Server.Version}}')
    [[ "$server" == "$SERVER_PREFIX"* ]] || die "the engine reports version $server, expected $SERVER_PREFIX*"
    # Plain KEY=VALUE lines without spaces: for `.`, `set -a; .`, docker --env-file and parsers.
    printf '%s\n' "DOCKER_HOST=unix://$SOCK" "DOCKER=$RUN_DIR/docker" "COMPOSE=$RUN_DIR/compose" \
        "ENGINE_VERSION=$server" >"$ENV_FILE.tmp"
    if ! cmp -s "$ENV_FILE.tmp" "$ENV_FILE"; then
        mv "$ENV_FILE.tmp" "$ENV_FILE"
        say "wrote $ENV_FILE (DOCKER_HOST, DOCKER, COMPOSE)"
    fi
    rm -f "$ENV_FILE.tmp"
}

# Sets ROOTFS to the one the running engine was started from (a newer cached rootfs may
# have replaced it) or, when none runs, to the cached one for the current package list.
running_rootfs() {
    ROOTFS=$(cat "$RUN_DIR/rootfs" 2>/dev/null) || ROOTFS=$CACHE/rootfs-$VERSION-$(rootfs_key)
}

up() {
    local pid
    if pid=$(engine_pid); then
        running_rootfs
        say "dockerd $VERSION is already up (pid $pid)"
    else
        clean_up
        ensure_rootfs
        start_engine
    fi
    load_image
    write_env
}

# --- down ------------------------------------------------------------------------------------

# Pids of the processes left in the engine's mount namespace (containerd and shims after a
# dockerd that died) and of their descendants (containers, in namespaces of their own).
leftover_pids() {
    local roots
    [ -s "$RUN_DIR/mntns" ] || return 0
    roots=$(pids_in_mount_ns "$(cat "$RUN_DIR/mntns")")
    [ -n "$roots" ] || return 0
    with_descendants "$roots"
}

remove_objects() {
    local ids
    ids=$(engine_docker ps -aq)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        engine_docker rm -f $ids >/dev/null
        say "removed $(echo "$ids" | wc -l) container(s)"
    fi
    # Networks go through their drivers (the host's cilium driver forgets them too).
    ids=$(engine_docker network ls -q --filter type=custom)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        engine_docker network rm $ids >/dev/null ||
            say "some networks could not be removed (is their driver gone?): continuing"
        say "removed $(echo "$ids" | wc -l) network(s)"
    fi
}

stop_engine() {
    local pid=$1 waited=0
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((STOP_TIMEOUT * 5)) ]; do
        sleep 0.2
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        say "dockerd $VERSION (pid $pid) did not stop within ${STOP_TIMEOUT}s: killed"
    else
        say "stopped dockerd $VERSION (pid $pid)"
    fi
}

# Everything of the engine but the cached rootfs, whatever state it was left in.
clean_up() {
    local pids waited=0 cgroups
    # containerd and its shims end shortly after dockerd.
    while pids=$(leftover_pids) && [ -n "$pids" ] && [ "$waited" -lt 50 ]; do
        sleep 0.2
        waited=$((waited + 1))
    done
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        say "killed what the engine left running: pids ${pids//$'\n'/ }"
    fi
    while forward_rule -D 2>/dev/null; do :; done
    local cgroups_left=""
    # The cgroups of its containers (kept apart from the main engine's under docker/).
    cgroups=$(find /sys/fs/cgroup -maxdepth 2 -type d -name "$NAME")
    if [ -n "$cgroups" ]; then
        # shellcheck disable=SC2086
        if find $cgroups -depth -type d -exec rmdir {} +; then
            say "removed the cgroups /sys/fs/cgroup/*/$NAME"
        else
            cgroups_left=$cgroups
        fi
    fi
    if [ -d "$ENGINE_STATE" ]; then
        rm -rf "$ENGINE_STATE"
        say "removed $ENGINE_STATE (data root, rootfs overlay)"
    fi
    if mountpoint -q "$EXEC_ROOT" 2>/dev/null; then
        umount -R "$EXEC_ROOT"
        say "unmounted $EXEC_ROOT"
    fi
    if [ -d "$RUN_DIR" ]; then
        rm -rf "$RUN_DIR"
        say "removed $RUN_DIR"
    fi
    if [ -f "$ENV_FILE" ]; then
        rm -f "$ENV_FILE"
        say "removed $ENV_FILE"
    fi
    rmdir "$ENV_DIR" "$(dirname "$ENGINE_STATE")" 2>/dev/null || true   # when no other engine is up
    # Last, so that everything else is gone even then.
    [ -z "$cgroups_left" ] || die "could not remove the cgroups $NAME (processes left in them?)"
}

down() {
    local pid
    running_rootfs
    if pid=$(engine_pid); then
        remove_objects
        stop_engine "$pid"
    fi
    clean_up
}

main() {
    [ $# -eq 2 ] || usage
    case "$1" in up | down) ;; *) usage ;; esac
    select_engine "$2"
    require_root
    "$1"
}

main "$@"
