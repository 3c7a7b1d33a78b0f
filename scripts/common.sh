# Shared helpers for scripts/*.sh. Source it; do not run it.
# shellcheck shell=bash

# docker_client DEFAULT: the client of the host's engine. /usr/bin/docker is where docker.io,
# docker-ce-cli and moby-cli all put it, and it matches their engine (on these machines a
# CLI 28 in /usr/local/bin comes first on PATH): PATH is only the fallback, for engines
# installed elsewhere. Before any engine is installed: /usr/bin/docker, where docker.io goes.
docker_client() {
    local default=$1
    if [ -x "$default" ]; then
        echo "$default"
    else
        command -v docker || echo "$default"
    fi
}
DOCKER=${DOCKER:-$(docker_client /usr/bin/docker)}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${STATE_DIR:-/run/pycilium}
LOG_DIR=${LOG_DIR:-/var/log/pycilium}
SETUP_LOG=${SETUP_LOG:-$LOG_DIR/setup.log}

# One line per thing actually done, prefixed with the script name.
say() { printf '%s: %s\n' "$(basename "$0" .sh)" "$*"; }
die() { printf '%s: ERROR: %s\n' "$(basename "$0" .sh)" "$*" >&2; exit 1; }

# Run a noisy command with its output going to $SETUP_LOG; show the tail only on failure.
run_logged() {
    mkdir -p "$(dirname "$SETUP_LOG")"
    printf '\n==> %s: %s\n' "$(date -Is)" "$*" >>"$SETUP_LOG"
    if ! "$@" >>"$SETUP_LOG" 2>&1; then
        printf '%s: ERROR: command failed: %s\n--- last lines of %s ---\n' \
            "$(basename "$0" .sh)" "$*" "$SETUP_LOG" >&2
        tail -n 40 "$SETUP_LOG" >&2
        return 1
    fi
}

# require_debootstrap: install Debian's debootstrap when missing (root filesystems of the
# managed plugin and of the Docker 26 engine).
require_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return 0
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive run_logged apt-get install -y --no-install-recommends debootstrap
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, mounts bpffs, starts dockerd)"
}

# pids_in_mount_ns NS: the pids of the processes whose mount namespace is NS (as readlink
# shows it: mnt:[INODE]), one a line.
pids_in_mount_ns() {
    local ns=$1 p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
    done
    return 0
}

# with_descendants ROOTS: the pids in ROOTS (one a line) and those of all their descendants,
# walking down the pid/ppid table once (cluster.sh's and engine.sh's `down`: containers run in
# namespaces of their own, so only their ancestry ties them to a host or an engine).
with_descendants() {
    ps -e -o pid=,ppid= | awk -v roots="$1" '
        BEGIN { n = split(roots, r, "\n"); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                added = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 }
            } while (added)
            for (p in keep) print p
        }'
}
