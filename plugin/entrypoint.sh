#!/bin/bash
# Entrypoint of the pycilium managed plugin (plugin/config.json): check what the driver needs
# from the host, reach the host paths that bind mounts cannot follow, then exec the driver.
# Anything printed here lands in dockerd's log, on lines tagged plugin=<plugin id>.
set -euo pipefail

# The host's root, as the containerd shim that started the plugin sees it: the plugin shares
# the host's pid namespace (pidhost) and may look into the shim's (CAP_SYS_PTRACE). Not
# /proc/1/root: pid 1 may hold capabilities the plugin cannot have, and then it is denied.
HOST=/proc/$PPID/root
PIN_DIR=${CILIUM_BPF_PIN_DIR:-/sys/fs/bpf/pycilium}
API_SOCKET=${CILIUM_API_SOCKET:-/var/run/cilium/cilium.sock}

# Say why, then wait to be stopped rather than exit: Docker restarts a plugin that exits while
# `docker plugin enable` waits for its socket, and a restart still under way when enable
# gives up leaves a container behind ("id already in use" on the next enable).
fail() {
    echo "pycilium plugin: ERROR: $*" >&2
    exec sleep infinity
}

# Is $1 on a BPF filesystem? (the mount at /sys/fs/bpf is the host's, bound by config.json)
on_bpffs() {
    awk -v p="$1" '$3 == "bpf" && (p == $2 || index(p, $2 "/") == 1) { f = 1 } END { exit !f }' \
        /proc/self/mounts
}

# The driver would mount a bpffs of its own here, private to the plugin: pinned maps would
# vanish with it and containers lose their datapath state on every plugin restart.
on_bpffs "$PIN_DIR" ||
    fail "no BPF filesystem (bpffs) at /sys/fs/bpf on the host, so pinned maps ($PIN_DIR)" \
        "cannot outlive the plugin. On the host: mount -t bpf bpf /sys/fs/bpf," \
        "then: docker plugin enable <this plugin>."

[ -d "$HOST/" ] && [ -r "$HOST/etc" ] ||
    fail "cannot see the host's root at $HOST (config.json needs pidhost and CAP_SYS_PTRACE)"
echo "pycilium plugin: host root $HOST ($(cat "/proc/$PPID/comm"))"

# Docker makes /proc/sys read-only in plugins; the driver sets forwarding and per-veth sysctls
# of the host's network namespace (network type host).
if ! (: >>/proc/sys/net/ipv4/ip_forward) 2>/dev/null; then
    umount /proc/sys 2>/dev/null || mount -o remount,rw /proc/sys ||
        fail "cannot make /proc/sys writable (CAP_SYS_ADMIN missing?)"
fi

# The node id derives from the host's machine id, as for the driver run on the host.
if [ -s "$HOST/etc/machine-id" ]; then
    cp "$HOST/etc/machine-id" /etc/machine-id
fi

# host_realpath PATH: PATH with the host's symlinks resolved, as a path on the host. Needed
# because an absolute symlink met under $HOST (e.g. the host's /var/run -> /run) resolves
# in the plugin's root, not the host's.
host_realpath() {
    local out="" comp target hops=0
    local -a parts rest
    IFS=/ read -ra parts <<<"${1#/}"
    while [ ${#parts[@]} -gt 0 ]; do
        comp=${parts[0]}
        parts=("${parts[@]:1}")
        case $comp in
            "" | .) continue ;;
            ..) out=${out%/*}; continue ;;
        esac
        if [ -L "$HOST$out/$comp" ]; then
            hops=$((hops + 1))
            [ "$hops" -le 40 ] || fail "too many symlinks in the host path $1"
            target=$(readlink "$HOST$out/$comp")
            [[ $target == /* ]] && out=""
            IFS=/ read -ra rest <<<"${target#/}"
            parts=("${rest[@]}" "${parts[@]}")
        else
            out=$out/$comp
        fi
    done
    echo "${out:-/}"
}

# host_link PATH: PATH in the plugin becomes a symlink to the same PATH on the host. Bind
# mounts are not enough for these: Docker's network namespaces are mounted on the host after
# the plugin starts (a bind of the private /run would never show them), the Docker socket is
# re-created when dockerd restarts, and the API socket's directory and the xtables lock are
# on the host's /run, empty after a reboot (a bind mount of a missing source fails the
# plugin's start).
host_link() {
    local path=$1 target
    target=$HOST$(host_realpath "$path")
    [ -L "$path" ] && [ "$(readlink "$path")" = "$target" ] && return 0
    if [ -d "$path" ] && [ ! -L "$path" ]; then
        rmdir "$path" 2>/dev/null || fail "$path is a non-empty directory in the plugin's rootfs"
    fi
    mkdir -p "$(dirname "$path")"
    ln -sfn "$target" "$path"
}

host_link /var/run/docker/netns
host_link /var/run/docker.sock
# iptables-legacy serialises on this lock with the host's iptables (dockerd's among them);
# iptables-nft ignores it.
host_link /run/xtables.lock
api_dir=$(dirname "$API_SOCKET")
host_api_dir=$HOST$(host_realpath "$api_dir")
[ -d "$host_api_dir" ] || mkdir -p -m 0755 "$host_api_dir"
host_link "$api_dir"

exec /opt/pycilium/bin/cilium-docker "$@"
