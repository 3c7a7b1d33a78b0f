#!/usr/bin/env bash
# Build the driver as a Docker managed (v2) plugin, with no registry: a Debian rootfs made
# with debootstrap from this machine's configured Debian mirror (read from the apt sources
# at run time), bcc and the project inside, then `docker plugin create` and `enable`.
#
#   scripts/build-plugin.sh        (what `make plugin` runs)
#
# Idempotent: the debootstrap + apt result is cached under $CACHE (keyed by the package
# list), the dependency wheels too (keyed by setup.cfg/pyproject.toml), and the plugin is
# created again only when the project, plugin/ or this script changed. A second run with an
# unchanged tree prints one line and takes a second or two.
#
# Environment:
#   PLUGIN           plugin NAME:TAG (default pycilium:latest); -d and --ipam-driver need it whole
#   PLUGIN_ENABLE    1 (default) enables the plugin; 0 leaves it disabled (to `docker plugin set` first)
#   PLUGIN_SETTINGS  space-separated `docker plugin set` arguments applied before enabling,
#                    e.g. "CILIUM_VETH_PREFIX=lxp state.source=/var/lib/other"
#   PLUGIN_TIMEOUT   seconds `docker plugin enable` waits for the driver (default 120)
#   CACHE            build cache (default /var/cache/pycilium/plugin)
#   DEBIAN_MIRROR    override the mirror read from the apt sources
#   DOCKER, VENV     as for the other scripts
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLUGIN=${PLUGIN:-pycilium:latest}
PLUGIN_ENABLE=${PLUGIN_ENABLE:-1}
PLUGIN_SETTINGS=${PLUGIN_SETTINGS:-}
PLUGIN_TIMEOUT=${PLUGIN_TIMEOUT:-120}
CACHE=${CACHE:-/var/cache/pycilium/plugin}
UI_ASSETS=${UI_ASSETS:-/var/cache/pycilium/ui}   # cytoscape.js, as setup-host.sh fetched it
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$REPO_ROOT/$VENV" ;; esac
SUITE=bookworm
PLUGIN_SRC=$REPO_ROOT/plugin
# Where the state directory mount of plugin/config.json points by default; Docker does not
# create bind-mount sources, so it must exist before `enable`.
DEFAULT_STATE_SOURCE=/var/lib/pycilium-plugin

# Inside the rootfs: bcc for Debian's python3, a venv for the rest, the tools the driver runs.
ROOTFS_PACKAGES=(python3 python3-venv python3-bpfcc iproute2 iptables ca-certificates)
# Bump to rebuild every cached rootfs (a change of how it is made, not of what is in it).
BASE_FORMAT=1

case "$PLUGIN" in
    *:*) ;;
    *) PLUGIN=$PLUGIN:latest ;;
esac

# --- the Debian mirror, from this machine's apt sources ---------------------------------

# shellcheck source=scripts/apt-sources.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-sources.sh"

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    apt_sources | awk -v suite="$SUITE" '$2 == suite { print $1; exit }'
}

# --- cached base rootfs: debootstrap + apt ---------------------------------------------

# The host's iptables backend (nft or legacy): the plugin must write to the same tables.
iptables_backend() {
    case "$(readlink -f /usr/sbin/iptables 2>/dev/null)" in
        *legacy*) echo legacy ;;
        *) echo nft ;;
    esac
}

base_key() {
    printf '%s\n' "$BASE_FORMAT" "$SUITE" "$(dpkg --print-architecture)" "$(iptables_backend)" \
        "${ROOTFS_PACKAGES[@]}" | sha256sum | cut -c1-16
}

# chroot with a clean environment (the host's PIP_*/proxy settings do not apply inside).
in_root() {
    local root=$1
    shift
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"
}

build_base() {
    local base=$1 mirror tmp uri suite
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || die "no Debian mirror for '$SUITE' in /etc/apt/sources.list{,.d/*} (set DEBIAN_MIRROR)"
    require_debootstrap
    tmp=$base.tmp
    rm -rf "$tmp"
    say "debootstrap --variant=minbase $SUITE from $mirror (first build only: a few minutes)"
    run_logged debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror"
    # Updates and security sources as the host has them, for the apt run below.
    {
        apt_sources | awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security"' |
            sort -u | while read -r uri suite; do echo "deb $uri $suite main"; done
    } >"$tmp/etc/apt/sources.list"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"
    say "apt-get install ${ROOTFS_PACKAGES[*]} in the rootfs"
    run_logged in_root "$tmp" apt-get update
    run_logged in_root "$tmp" apt-get install -y --no-install-recommends "${ROOTFS_PACKAGES[@]}"
    if [ "$(iptables_backend)" = legacy ]; then
        run_logged in_root "$tmp" update-alternatives --set iptables /usr/sbin/iptables-legacy
        run_logged in_root "$tmp" update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy
    fi
    in_root "$tmp" apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* \
        "$tmp"/usr/share/info/* "$tmp"/var/log/*.log "$tmp"/var/cache/debconf/*-old
    : >"$tmp/etc/resolv.conf"
    mv "$tmp" "$base"
    touch "$base.done"
}

# Sets BASE to the cached rootfs, building it first when missing.
ensure_base() {
    BASE=$CACHE/base-$SUITE-$(base_key)
    if [ ! -f "$BASE.done" ]; then
        rm -rf "$CACHE"/base-*   # older package lists: a whole rootfs each
        build_base "$BASE"
    fi
}

# --- wheels: the project and its dependencies, built with the host venv's pip ------------

# The files the project wheel is made of, copied so the build writes nothing in the tree.
copy_source() {
    local dst=$1
    mkdir -p "$dst"
    (cd "$REPO_ROOT" && tar -c --exclude=__pycache__ --exclude='*.pyc' \
        setup.cfg pyproject.toml README.md driver datapath) | tar -C "$dst" -x
}

deps_key() {
    (cd "$REPO_ROOT" && cat setup.cfg pyproject.toml) | sha256sum | cut -c1-16
}

# Sets WHEELS to the cached dependency wheels, building them first when missing.
ensure_dep_wheels() {
    local src=$1
    WHEELS=$CACHE/wheels-$(deps_key)
    if [ ! -f "$WHEELS.done" ]; then
        rm -rf "$CACHE"/wheels-*
        say "pip wheel: the project's dependencies into $WHEELS"
        run_logged "$VENV/bin/python" -m pip wheel --disable-pip-version-check \
            --no-build-isolation --wheel-dir "$WHEELS" "$src"
        rm -f "$WHEELS"/pycilium-*.whl
        touch "$WHEELS.done"
    fi
}

# --- the plugin directory: config.json + rootfs ------------------------------------------

tree_hash() {
    local src=$1 base=$2
    {
        echo "$base"
        (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        (cd "$REPO_ROOT" && sha256sum plugin/config.json plugin/entrypoint.sh scripts/build-plugin.sh)
    } | sha256sum | cut -c1-16
}

build_plugin_dir() {
    local dir=$1 base=$2 src=$3 wheels=$4 tmp root
    tmp=$dir.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    root=$tmp/rootfs
    cp -a "$base" "$root"
    mkdir -p "$root/tmp/wheels"
    run_logged "$VENV/bin/python" -m pip wheel --disable-pip-version-check --no-deps \
        --no-build-isolation --wheel-dir "$root/tmp/wheels" "$src"
    cp "$wheels"/*.whl "$root/tmp/wheels/"
    run_logged in_root "$root" /usr/bin/python3 -m venv --system-site-packages /opt/pycilium
    run_logged in_root "$root" /opt/pycilium/bin/python -m pip install --disable-pip-version-check \
        --no-cache-dir --no-index --find-links /tmp/wheels pycilium
    rm -rf "$root/tmp/wheels"
    # The service map's graph library, where the driver's --ui-assets default looks.
    [ -d "$UI_ASSETS" ] || die "no $UI_ASSETS (cytoscape.js): run scripts/setup-host.sh first"
    mkdir -p "$root/var/cache/pycilium"
    cp -a "$UI_ASSETS" "$root/var/cache/pycilium/ui"
    install -m 0755 "$PLUGIN_SRC/entrypoint.sh" "$root/opt/pycilium/entrypoint.sh"
    # Mount points of plugin/config.json that the rootfs lacks.
    mkdir -p "$root/sys/fs/bpf" "$root/var/lib/pycilium" "$root/run/docker/plugins" "$root/usr/src"
    in_root "$root" /opt/pycilium/bin/python -c 'import bcc, driver.server.main, datapath' ||
        die "the rootfs cannot import bcc and the driver"
    cp "$PLUGIN_SRC/config.json" "$tmp/config.json"
    mv "$tmp" "$dir"
}

plugin_exists() { "$DOCKER" plugin inspect "$PLUGIN" >/dev/null 2>&1; }
plugin_field() { "$DOCKER" plugin inspect -f "$1" "$PLUGIN"; }

# The plugin's settable settings as `docker plugin set` arguments ("KEY=VALUE name.source=PATH").
current_settings() {
    "$DOCKER" plugin inspect "$PLUGIN" | "$VENV/bin/python" -c '
import json, sys
p = json.load(sys.stdin)[0]
env = {e["Name"] for e in p["Config"]["Env"] if "value" in (e.get("Settable") or [])}
mounts = {m["Name"] for m in p["Config"]["Mounts"] if "source" in (m.get("Settable") or [])}
out = [s for s in p["Settings"]["Env"] if s.split("=", 1)[0] in env]
out += [m["Name"] + ".source=" + m["Source"] for m in p["Settings"]["Mounts"] if m["Name"] in mounts]
print(" ".join(out))'
}

remove_plugin() {
    if [ "$(plugin_field '{{.Enabled}}')" = true ]; then
        "$DOCKER" plugin disable "$PLUGIN" >/dev/null ||
            die "cannot replace $PLUGIN: 'docker plugin disable' refused (networks use it? remove them first)"
    fi
    "$DOCKER" plugin rm "$PLUGIN" >/dev/null
    say "removed the previous $PLUGIN"
}

bpffs_mounted() {
    awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/mounts
}

main() {
    require_root
    "$DOCKER" info >/dev/null 2>&1 || die "no dockerd answers '$DOCKER info' (make setup starts one)"
    [ -x "$VENV/bin/python" ] || die "$VENV/bin/python not found: run 'make setup' first"
    mkdir -p "$CACHE"
    # One build at a time: builds share the cache and prune each other's old directories.
    exec 9>"$CACHE/.lock"
    flock 9

    local hash dir stamp
    ensure_base
    SRC_TMP=$(mktemp -d)
    trap 'rm -rf "$SRC_TMP"' EXIT
    copy_source "$SRC_TMP/pycilium"
    # Hashed before pip builds wheels from the copy: that leaves build/ and *.egg-info there,
    # which would make a cold wheel cache look like a changed tree.
    hash=$(tree_hash "$SRC_TMP/pycilium" "$BASE")
    ensure_dep_wheels "$SRC_TMP/pycilium"
    stamp=$CACHE/${PLUGIN//[\/:]/_}.stamp

    # The plugin as last built from this very tree: nothing to create.
    if plugin_exists && [ -s "$stamp" ] &&
        [ "$(cat "$stamp")" = "$hash $(plugin_field '{{.Id}}')" ]; then
        :
    else
        dir=$CACHE/build-$hash
        if [ ! -d "$dir" ]; then
            # Keep only the newest build directory: each one is a whole rootfs.
            rm -rf "$CACHE"/build-*
            say "building the plugin rootfs in $dir"
            build_plugin_dir "$dir" "$BASE" "$SRC_TMP/pycilium" "$WHEELS"
        fi
        local kept="" setting
        if plugin_exists; then
            kept=$(current_settings)
            remove_plugin
        fi
        run_logged "$DOCKER" plugin create "$PLUGIN" "$dir"
        # A rebuild keeps what was set on the previous plugin (ranges, state source, ...).
        for setting in $kept; do
            "$DOCKER" plugin set "$PLUGIN" "$setting" 2>/dev/null ||
                say "could not keep the setting $setting (no longer in plugin/config.json?)"
        done
        echo "$hash $(plugin_field '{{.Id}}')" >"$stamp"
        say "created $PLUGIN ($(du -sh "$dir/rootfs" | cut -f1) rootfs)"
    fi

    if [ "$(plugin_field '{{.Enabled}}')" = true ]; then
        echo "$PLUGIN is up to date and enabled"
        return 0
    fi
    if [ -n "$PLUGIN_SETTINGS" ]; then
        # shellcheck disable=SC2086
        "$DOCKER" plugin set "$PLUGIN" $PLUGIN_SETTINGS
    fi
    mkdir -p "$DEFAULT_STATE_SOURCE"
    if [ "$PLUGIN_ENABLE" = 0 ]; then
        echo "$PLUGIN is built and disabled ('$DOCKER plugin enable $PLUGIN' enables it)"
        return 0
    fi
    # With the default settings the plugin would share the API socket, pin directory, veth
    # prefix and ranges of the driver `make run` started.
    if [ -z "$PLUGIN_SETTINGS" ] && "$REPO_ROOT/scripts/driver.sh" status >/dev/null 2>&1; then
        die "the driver from 'make run' is running: 'make stop' first (or give the plugin" \
            "its own settings with PLUGIN_SETTINGS); $PLUGIN is built and left disabled"
    fi
    bpffs_mounted ||
        die "bpffs is not mounted at /sys/fs/bpf: the plugin keeps its maps there." \
            "Mount it (mount -t bpf bpf /sys/fs/bpf), then: $DOCKER plugin enable $PLUGIN"
    "$DOCKER" plugin enable --timeout "$PLUGIN_TIMEOUT" "$PLUGIN" >/dev/null ||
        die "'docker plugin enable $PLUGIN' failed: dockerd's log has the plugin's output" \
            "(lines with plugin=$(plugin_field '{{.Id}}'))"
    say "enabled $PLUGIN: docker network create -d $PLUGIN --ipam-driver $PLUGIN --ipv6 NAME"
}

main "$@"
