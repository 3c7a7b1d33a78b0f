#!/usr/bin/env bash
# Build the local test image pycilium/busybox:latest without any registry: an empty rootfs
# with Debian's static busybox and a link for every applet, imported with `docker import`.
# Does nothing when the image already exists. Prints one line per thing it actually does.
#
# Environment: DOCKER (default /usr/bin/docker), IMAGE (default pycilium/busybox:latest).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

IMAGE=${IMAGE:-pycilium/busybox:latest}
BUSYBOX=/bin/busybox   # from busybox-static (statically linked: needs no libc in the image)

make_rootfs() {
    local root=$1 applet path
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,var/run,run,proc,sys,dev,www}
    install -d -m 1777 "$root/tmp"
    install -m 0755 "$BUSYBOX" "$root/bin/busybox"
    # Each applet at busybox's own place (sbin/ip, usr/bin/wget, ...) and also in /bin,
    # so both `sh -c ip` and absolute /bin/<applet> work whatever PATH a caller uses.
    while read -r path; do
        [ -e "$root/$path" ] || ln -s /bin/busybox "$root/$path"
    done < <("$BUSYBOX" --list-full)
    while read -r applet; do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done < <("$BUSYBOX" --list)
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    # Docker bind-mounts its own versions over these; they only need to exist.
    : >"$root/etc/hosts"
    : >"$root/etc/hostname"
    : >"$root/etc/resolv.conf"
}

main() {
    if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    [ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install busybox-static (scripts/setup-host.sh does)"
    "$BUSYBOX" --list | grep -qx ping6 || die "$BUSYBOX has no ping6 applet"

    TMP_ROOT=$(mktemp -d)
    trap 'rm -rf "$TMP_ROOT"' EXIT
    make_rootfs "$TMP_ROOT/rootfs"
    tar -C "$TMP_ROOT/rootfs" --numeric-owner --owner=0 --group=0 -c . |
        "$DOCKER" import \
            -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'CMD ["/bin/sh"]' \
            -m "pycilium: busybox-static, built by scripts/build-image.sh" \
            - "$IMAGE" >/dev/null
    say "built $IMAGE from $BUSYBOX ($("$BUSYBOX" --list | wc -l) applets)"

    "$DOCKER" run --rm --net none "$IMAGE" true ||
        die "'$DOCKER run --rm --net none $IMAGE true' failed"
}

main "$@"
