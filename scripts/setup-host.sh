#!/usr/bin/env bash
# Prepare this host for pycilium: Debian packages, kernel headers for bcc, bpffs, the
# project venv and a running Docker engine. It first says, one line each, what it will
# change on the host, then does it. Idempotent: a second run changes nothing, prints
# nothing and takes about a second.
#
# A Docker engine already installed (any package: docker.io, docker-ce, moby-engine...) or
# running is the one used: Debian's docker.io is installed only where there is none at all.
#
# Environment: VENV (default .venv), DOCKER (default /usr/bin/docker, else docker on PATH).
# Where it looks for an engine (tests point them elsewhere): DPKG_ADMINDIR (/var/lib/dpkg),
# DOCKER_SOCKET (/var/run/docker.sock), PROC_DIR (/proc).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$REPO_ROOT/$VENV" ;; esac
SYSTEM_PYTHON=/usr/bin/python3     # Debian's python: bcc (python3-bpfcc) lives in its dist-packages
# Where Debian's docker.io installs it (not on a user's PATH); docker-ce's is in /usr/bin.
DOCKERD=$(for d in /usr/sbin/dockerd /usr/bin/dockerd; do [ -x "$d" ] && echo "$d" && break; done)
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
DOCKERD_LOG=/var/log/dockerd.log
DOCKERD_PIDFILE=/var/run/docker.pid
DOCKERD_MARK=$STATE_DIR/dockerd.started-by-make
STAMP=$VENV/.pycilium-install.stamp
DPKG_ADMINDIR=${DPKG_ADMINDIR:-/var/lib/dpkg}
DOCKER_SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
PROC_DIR=${PROC_DIR:-/proc}

# Installed only where the host has no Docker engine of any kind.
ENGINE_PACKAGES=(docker.io)
# Any of these means an engine (or its parts) is already there: installing docker.io beside
# them would conflict with them (containerd.io against containerd, docker-ce-cli against
# docker.io's client) or give the host a second engine.
KNOWN_ENGINE_PACKAGES=(
    docker.io docker-ce docker-ce-cli docker-ee docker-engine containerd.io moby-engine moby-cli
)
PACKAGES=(
    python3-bpfcc libbpf1 bpfcc-tools linux-headers-amd64
    busybox-static
    docker-compose       # compose 1.29 (the suite and make demo); beside any engine, it needs none
    python3-venv python3-pip
    iproute2 iptables iputils-ping curl bpftool tcpdump
    make
    systemd              # systemd-analyze: the suite verifies contrib/systemd/pycilium.service
    etcd-server python3-etcd3gw  # cluster mode: etcd 3.4 and its v3 gateway client (tests/cluster)
    chromium python3-websocket   # the service map's browser test (tests/ui): headless, over DevTools
)

# --- Debian packages ---------------------------------------------------------------------

# installed_packages NAME...: those of NAME... that are installed (one a line).
installed_packages() {
    dpkg-query --admindir="$DPKG_ADMINDIR" -W -f='${Package} ${Status}\n' "$@" 2>/dev/null |
        awk '$2 == "install" && $4 == "installed" { print $1 }' || true
}

# engine_running: a Docker engine answers, or its process or socket is there (one that is
# still starting up, or whose client is not where we look).
engine_running() {
    "$DOCKER" info >/dev/null 2>&1 && return 0
    [ -S "$DOCKER_SOCKET" ] && return 0
    grep -qx dockerd "$PROC_DIR"/[0-9]*/comm 2>/dev/null
}

# engine_found: says which engine is there ("installed: PACKAGES" or "running"); fails
# when the host has none.
engine_found() {
    local installed
    installed=$(installed_packages "${KNOWN_ENGINE_PACKAGES[@]}")
    if [ -n "$installed" ]; then
        echo "installed: ${installed//$'\n'/ }"
    elif engine_running; then
        echo "running"
    else
        return 1
    fi
}

# missing_packages: the packages to install, one a line; the engine's only if there is none.
missing_packages() {
    local wanted=("${PACKAGES[@]}") installed p
    engine_found >/dev/null || wanted=("${ENGINE_PACKAGES[@]}" "${wanted[@]}")
    installed=$(installed_packages "${wanted[@]}")
    for p in "${wanted[@]}"; do
        grep -qxF "$p" <<<"$installed" || echo "$p"
    done
}

install_packages() {
    [ $# -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    run_logged apt-get update
    run_logged apt-get install -y --no-install-recommends "$@"
}

# --- kernel headers for bcc --------------------------------------------------------------

# link_kernel_headers MODULES_DIR SRC_DIR
# Only when MODULES_DIR/build is missing or a dangling link (kernel_headers_missing: a host
# with the right headers for its own kernel keeps them): link build ->
# SRC_DIR/linux-headers-<ver>-amd64 and source -> SRC_DIR/linux-headers-<ver>-common, newest
# installed Debian headers.
kernel_headers_missing() { [ ! -d "$1/build" ]; }

link_kernel_headers() {
    local moddir=$1 srcdir=$2 amd64 common
    kernel_headers_missing "$moddir" || return 0
    amd64=$(find "$srcdir" -maxdepth 1 -name 'linux-headers-*-amd64' \( -type d -o -type l \) \
        -printf '%f\n' 2>/dev/null | sort -V | tail -n 1) || true
    [ -n "$amd64" ] || die "no $srcdir/linux-headers-*-amd64 (is linux-headers-amd64 installed?)"
    common=${amd64%-amd64}-common
    [ -d "$srcdir/$common" ] || die "$srcdir/$amd64 has no matching $srcdir/$common"
    mkdir -p "$moddir"
    ln -sfn "$srcdir/$amd64" "$moddir/build"
    say "linked $moddir/build -> $srcdir/$amd64"
    if [ ! -d "$moddir/source" ]; then
        ln -sfn "$srcdir/$common" "$moddir/source"
        say "linked $moddir/source -> $srcdir/$common"
    fi
}

# --- bpffs -------------------------------------------------------------------------------

bpffs_mounted() {
    awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/mounts
}

mount_bpffs() {
    bpffs_mounted && return 0
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
}

# --- venv ----------------------------------------------------------------------------------

venv_ok() {
    # Must be Debian's python with system site packages, or bcc cannot be imported.
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] &&
        grep -Eq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" &&
        grep -Eq '^home *= */usr/bin$' "$VENV/pyvenv.cfg"
}

install_hash() {
    (cd "$REPO_ROOT" && sha256sum setup.cfg pyproject.toml)
}

setup_venv() {
    if ! venv_ok; then
        if [ -e "$VENV" ]; then
            say "recreating $VENV with $SYSTEM_PYTHON --system-site-packages (it was not)"
            run_logged "$SYSTEM_PYTHON" -m venv --clear --system-site-packages "$VENV"
        else
            say "creating $VENV with $SYSTEM_PYTHON --system-site-packages"
            run_logged "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
        fi
        rm -f "$STAMP"
    fi
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$(install_hash)" ]; then
        say "pip install -e '.[test]' into $VENV (setup.cfg/pyproject.toml changed or first run)"
        (cd "$REPO_ROOT" && run_logged "$VENV/bin/python" -m pip install \
            --disable-pip-version-check -e '.[test]')
        install_hash >"$STAMP"
    fi
    "$VENV/bin/python" -c 'import bcc' 2>/dev/null ||
        die "'import bcc' fails in $VENV (python3-bpfcc missing, or venv not from $SYSTEM_PYTHON?)"
    # bcc compiles at run time against the kernel headers: prove it works (~0.4 s).
    "$VENV/bin/python" -c 'from bcc import BPF; BPF(text="int f(void *ctx) { return 0; }")' \
        >/dev/null 2>&1 ||
        die "bcc cannot compile a trivial program: check /lib/modules/$(uname -r)/build and source"
}

# --- the service map's graph library --------------------------------------------------------

UI_ASSETS=${UI_ASSETS:-/var/cache/pycilium/ui}   # the driver's --ui-assets default

ui_assets_version() {
    sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$REPO_ROOT/driver/server/uiassets.py"
}

# cytoscape.js, pinned and checked against its sha512 (driver/server/uiassets.py).
fetch_ui_assets() {
    "$VENV/bin/python" -m driver.server.uiassets "$UI_ASSETS" | while read -r line; do say "$line"; done
}

# --- dockerd ---------------------------------------------------------------------------------

# wait_for_dockerd PID: whether the dockerd PID (already there, not ours) answers before it
# exits. One that is stopping (a kill -TERM just before) exits instead: then we start one.
wait_for_dockerd() {
    local pid=$1
    say "waiting for the dockerd that is already there (pid $pid) to answer or exit"
    for _ in $(seq 1 120); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { say "dockerd (pid $pid) exited: starting one"; return 1; }
        sleep 0.5
    done
    die "dockerd (pid $pid) neither answered 'docker info' nor exited within 60 s"
}

start_dockerd() {
    "$DOCKER" info >/dev/null 2>&1 && return 0
    local pid
    # A dockerd that is still coming up (e.g. started by the package's init script) has
    # its pid file already: wait for it rather than starting a second one.
    if [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
        wait_for_dockerd "$(cat "$DOCKERD_PIDFILE")" && return 0
    fi
    [ -x "$DOCKERD" ] || die "no dockerd in /usr/sbin or /usr/bin: start this host's engine yourself"
    mkdir -p "$STATE_DIR"
    setsid nohup "$DOCKERD" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DOCKERD_MARK"
    say "started dockerd (pid $pid, log $DOCKERD_LOG, recorded in $DOCKERD_MARK)"
    for _ in $(seq 1 120); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "--- last lines of $DOCKERD_LOG ---" >&2
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            rm -f "$DOCKERD_MARK"
            die "dockerd (pid $pid) exited during start-up"
        fi
        sleep 0.5
    done
    echo "--- last lines of $DOCKERD_LOG ---" >&2
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not answer 'docker info' within 60 s"
}

# --- what will change ----------------------------------------------------------------------

# announce_changes MODULES_DIR PACKAGE...: one line for each change to the host that main
# is about to make, before it makes any.
announce_changes() {
    local moddir=$1 engine
    shift
    if [ $# -gt 0 ]; then
        engine=$(engine_found) && engine="; the Docker engine already here is used, $engine"
        say "will install Debian packages: $* (apt-get, log $SETUP_LOG${engine:-})"
    fi
    if kernel_headers_missing "$moddir"; then
        say "will link $moddir/build and source to the newest /usr/src/linux-headers-*-amd64" \
            "and -common (the running kernel has no headers of its own)"
    fi
    bpffs_mounted || say "will mount bpffs at /sys/fs/bpf"
    [ -f "$UI_ASSETS/cytoscape-$(ui_assets_version).min.js" ] ||
        say "will fetch cytoscape.js (the service map's graph library) into $UI_ASSETS"
    "$DOCKER" info >/dev/null 2>&1 ||
        say "will start dockerd in the background (log $DOCKERD_LOG) unless one is starting already"
}

main() {
    require_root
    local moddir missing
    moddir="/lib/modules/$(uname -r)"
    mapfile -t missing < <(missing_packages)
    announce_changes "$moddir" "${missing[@]}"
    install_packages "${missing[@]}"
    link_kernel_headers "$moddir" /usr/src
    mount_bpffs
    setup_venv
    fetch_ui_assets
    start_dockerd
}

# Sourcing this file (e.g. to test one function) does not run anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
