#!/bin/bash
# What pycilium's two tc programs cost per packet and per operation: kernel BPF run-time
# statistics (kernel.bpf_stats_enabled, on only meanwhile) around tcpbench crr and rr, 3 s
# each, between two containers on a cilium network of the `make run` driver, IPv6 then
# IPv4. Counts every program named from_container/to_container on the host, so run it
# with nothing else using those (no test suite). After `make bench` (which builds
# tcpbench), as root:   flock /tmp/pycilium-bench.lock bench/bpf-stats.sh
set -e
D=${DOCKER:-/usr/bin/docker}; NET=pcb-stats
T=$(dirname "$0")/../build/bench/tcpbench
[ -x "$T" ] || { echo "no $T: run 'make bench' first" >&2; exit 1; }
cleanup() { $D rm -f pcb-stats-a pcb-stats-b >/dev/null 2>&1 || true; $D network rm $NET >/dev/null 2>&1 || true; sysctl -qw kernel.bpf_stats_enabled=0; }
trap cleanup EXIT
$D network create -d cilium --ipam-driver cilium --ipv6 $NET >/dev/null
for c in a b; do $D run -d --name pcb-stats-$c --net $NET pycilium/busybox:latest sleep 3600 >/dev/null; done
sleep 2
pa=$($D inspect -f '{{.State.Pid}}' pcb-stats-a); pb=$($D inspect -f '{{.State.Pid}}' pcb-stats-b)
b6=$($D inspect -f '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}' pcb-stats-b)
b4=$($D inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' pcb-stats-b)
nsenter -t $pb -n $T server 5001 & SRV=$!
trap 'kill $SRV 2>/dev/null; cleanup' EXIT
sleep 0.5
stats() { bpftool prog show -j | python3 -c '
import json,sys
for p in json.load(sys.stdin):
    if p.get("name") in ("from_container","to_container"):
        print(p["name"], p.get("run_time_ns",0), p.get("run_cnt",0))' | awk '{t[$1]+=$2; c[$1]+=$3} END {for (n in t) printf "%s %.0f %.0f\n", n, t[n], c[n]}' | sort; }
sysctl -qw kernel.bpf_stats_enabled=1
for mode in crr rr; do for addr in $b6 $b4; do
  before=$(stats); out=$(nsenter -t $pa -n $T $mode $addr 5001 3); after=$(stats)
  python3 - "$mode" "$addr" "$out" "$before" "$after" <<'PY'
import sys
mode, addr, out, before, after = sys.argv[1:]
b = {l.split()[0]: list(map(int, l.split()[1:])) for l in before.splitlines()}
a = {l.split()[0]: list(map(int, l.split()[1:])) for l in after.splitlines()}
ops = int(out.split()[0])
parts = []
for name in sorted(a):
    t, c = a[name][0] - b[name][0], a[name][1] - b[name][1]
    parts.append(f"{name} {c/ops:.1f} runs/op, {t/max(c,1):.0f} ns/run, {t/ops:.0f} ns/op")
print(f"{mode} {addr}: {out.split()[2].split('.')[0]}/s; " + "; ".join(parts))
PY
done; done
