#!/usr/bin/env bash
# Prepare this host for pycilium: Debian packages, kernel headers for bcc, bpffs, the
# project venv and a running dockerd. Prints one line per thing it actually does.
# Idempotent: a second run changes nothing, prints nothing and takes about a second.
#
# Environment: VENV (default .venv), DOCKER (default /usr/bin/docker).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$REPO_ROOT/$VENV" ;; esac
SYSTEM_PYTHON=/usr/bin/python3     # Debian's python: bcc (python3-bpfcc) lives in its dist-packages
DOCKERD=/usr/sbin/dockerd        # where Debian's docker.io installs it (not on a user's PATH)
DOCKERD_LOG=/var/log/dockerd.log
DOCKERD_PIDFILE=/var/run/docker.pid
DOCKERD_MARK=$STATE_DIR/dockerd.started-by-make
STAMP=$VENV/.pycilium-install.stamp

PACKAGES=(
    docker.io docker-compose
    python3-bpfcc libbpf1 bpfcc-tools linux-headers-amd64
    busybox-static
    python3-venv python3-pip
    iproute2 iptables iputils-ping curl bpftool tcpdump
    make
    systemd              # systemd-analyze: the suite verifies contrib/systemd/pycilium.service
)

# --- Debian packages ---------------------------------------------------------------------

pkg_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [ "$status" = "install ok installed" ]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    run_logged apt-get update
    run_logged apt-get install -y --no-install-recommends "${missing[@]}"
}

# --- kernel headers for bcc --------------------------------------------------------------

# link_kernel_headers MODULES_DIR SRC_DIR
# Only when MODULES_DIR/build is missing or a dangling link (a host with the right headers
# for its own kernel keeps them): link build -> SRC_DIR/linux-headers-<ver>-amd64 and
# source -> SRC_DIR/linux-headers-<ver>-common, newest installed Debian headers.
link_kernel_headers() {
    local moddir=$1 srcdir=$2 amd64 common
    [ -d "$moddir/build" ] && return 0
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

mount_bpffs() {
    if awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/mounts; then
        return 0
    fi
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
    say "mounted bpffs at /sys/fs/bpf"
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

# --- dockerd ---------------------------------------------------------------------------------

start_dockerd() {
    "$DOCKER" info >/dev/null 2>&1 && return 0
    local pid=""
    # A dockerd that is still coming up (e.g. started by the package's init script) has
    # its pid file already: wait for it rather than starting a second one.
    if [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
        say "waiting for the dockerd that is already starting (pid $(cat "$DOCKERD_PIDFILE"))"
    else
        mkdir -p "$STATE_DIR"
        setsid nohup "$DOCKERD" >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$DOCKERD_MARK"
        say "started dockerd (pid $pid, log $DOCKERD_LOG, recorded in $DOCKERD_MARK)"
    fi
    local i
    for i in $(seq 1 120); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
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

main() {
    require_root
    install_packages
    link_kernel_headers "/lib/modules/$(uname -r)" /usr/src
    mount_bpffs
    setup_venv
    start_dockerd
}

# Sourcing this file (e.g. to test one function) does not run anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
