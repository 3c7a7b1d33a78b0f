#!/usr/bin/env bash
# Build the benchmark image (default pycilium/bench-iperf3:latest) without a registry: a Debian
# `debootstrap --variant=minbase` rootfs with iperf3, imported with `docker import`.
# The mirror is read from this machine's apt sources at run time (or DEBIAN_MIRROR); it is never
# written into the repository. The rootfs tarball is cached under $CACHE, so a rebuild (e.g.
# after `docker rmi`) takes seconds. Does nothing when the image already exists.
#
# Environment: DOCKER (default /usr/bin/docker), BENCH_IMAGE, CACHE (default
# /var/cache/pycilium/bench), SUITE (default: the host's codename), DEBIAN_MIRROR.
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
BENCH_IMAGE=${BENCH_IMAGE:-pycilium/bench-iperf3:latest}
CACHE=${CACHE:-/var/cache/pycilium/bench}
SUITE=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
PACKAGES=(iperf3)
tmp=

say() { printf 'bench-image: %s\n' "$*" >&2; }
die() { printf 'bench-image: ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/apt-sources.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/apt-sources.sh"

main() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    if "$DOCKER" image inspect "$BENCH_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    local key tarball mirror
    key=$(printf '%s %s' "$SUITE" "${PACKAGES[*]}" | sha256sum | cut -c1-12)
    tarball=$CACHE/rootfs-$SUITE-$key.tar
    if [ ! -s "$tarball" ]; then
        mirror=${DEBIAN_MIRROR:-$(apt_sources | awk -v s="$SUITE" '$2 == s { print $1; exit }')}
        [ -n "$mirror" ] || die "no Debian mirror for '$SUITE' in the apt sources (set DEBIAN_MIRROR)"
        command -v debootstrap >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2
        mkdir -p "$CACHE"
        tmp=$(mktemp -d "$CACHE/build.XXXXXX")
        trap 'rm -rf "${tmp:-}"' EXIT
        say "debootstrap --variant=minbase --include=${PACKAGES[*]} $SUITE (first build only: a few minutes)"
        debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
            "$SUITE" "$tmp/rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
            { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
        rm -rf "$tmp"/rootfs/var/lib/apt/lists/* "$tmp"/rootfs/var/cache/apt/*.bin \
            "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/usr/share/doc/* \
            "$tmp"/rootfs/usr/share/man/*
        : >"$tmp/rootfs/etc/apt/sources.list"   # no mirror host in the image either
        tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
        mv "$tmp/rootfs.tar" "$tarball"
    fi
    "$DOCKER" import -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["/bin/sh"]' \
        -m "pycilium bench: debootstrap minbase + ${PACKAGES[*]}" - "$BENCH_IMAGE" <"$tarball" >/dev/null
    "$DOCKER" run --rm --net none "$BENCH_IMAGE" iperf3 --version >/dev/null ||
        die "$BENCH_IMAGE was built but cannot run iperf3"
    say "built $BENCH_IMAGE from $tarball"
}

main "$@"
