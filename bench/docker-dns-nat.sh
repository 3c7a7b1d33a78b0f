#!/bin/bash
# What Docker's embedded-DNS NAT rules, which it puts into every container's namespace, cost
# the IPv4 connection rate (they turn on netfilter conntrack there). Two pairs of raw
# namespaces joined by host routes, one pair with those rules at both ends; tcpbench crr
# between the ends of each pair, interleaved, 5 rounds of 2 s. Run after `make bench` (which
# builds tcpbench), as root, under the bench lock:
#   flock /tmp/pycilium-bench.lock bench/docker-dns-nat.sh
# Addresses are in 198.18.200.0/24 (benchmarking range), kept unreachable meanwhile; the
# namespaces have no default route.
set -e
T=$(dirname "$0")/../build/bench/tcpbench
[ -x "$T" ] || { echo "no $T: run 'make bench' first" >&2; exit 1; }
SRVS=()
cleanup() {
  kill "${SRVS[@]}" 2>/dev/null || true
  for ns in pcbd-pa pcbd-pb pcbd-na pcbd-nb; do ip netns del $ns 2>/dev/null || true; done
  ip route del unreachable 198.18.200.0/24 2>/dev/null || true
  iptables -D FORWARD -i pcbd+ -j ACCEPT 2>/dev/null || true
  iptables -D FORWARD -o pcbd+ -j ACCEPT 2>/dev/null || true
}
trap cleanup EXIT
ip route add unreachable 198.18.200.0/24
iptables -I FORWARD -i pcbd+ -j ACCEPT; iptables -I FORWARD -o pcbd+ -j ACCEPT
end() {  # end NS IFNAME IP
  ip netns add $1
  ip link add $2 type veth peer name eth0 netns $1
  ip -n $1 link set lo up; ip -n $1 link set eth0 up; ip link set $2 up
  ip -n $1 addr add $3/32 dev eth0
  ip -n $1 route add 169.254.1.1 dev eth0
  ip -n $1 route add 198.18.200.0/24 via 169.254.1.1 dev eth0 onlink
  ip -n $1 neigh add 169.254.1.1 lladdr $(cat /sys/class/net/$2/address) dev eth0
  ip route add $3/32 dev $2
}
end pcbd-pa pcbdpa 198.18.200.1; end pcbd-pb pcbdpb 198.18.200.2
end pcbd-na pcbdna 198.18.200.3; end pcbd-nb pcbdnb 198.18.200.4
for ns in pcbd-na pcbd-nb; do  # what dockerd puts into a container's nat table
  ip netns exec $ns iptables-restore < "$(dirname "$0")/docker-dns-nat.rules"
done
ip netns exec pcbd-pb $T server 5001 & SRVS+=($!)
ip netns exec pcbd-nb $T server 5001 & SRVS+=($!)
sleep 0.5
ip netns exec pcbd-pa ping -c1 -W1 198.18.200.2 >/dev/null
ip netns exec pcbd-na ping -c1 -W1 198.18.200.4 >/dev/null
for round in 1 2 3 4 5; do
  echo "round $round plain:  $(ip netns exec pcbd-pa timeout 10 $T crr 198.18.200.2 5001 2)"
  echo "round $round dnsnat: $(ip netns exec pcbd-na timeout 10 $T crr 198.18.200.4 5001 2)"
done
