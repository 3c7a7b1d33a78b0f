"""The XDP prefilter with real packets: a UDP flood from a namespace behind a veth, whose
host end carries the prefilter in native XDP, is dropped for a denied source prefix and
passes for another; the counters match what was sent; the list changes under load
without losing an allowed packet or letting a denied one through. Devices without native
XDP get generic XDP; another program's device is refused; uninstall finds ours by map.

Addresses: 198.51.100.224/28 and 2001:db8:7d9::/64, on a veth made here (nothing leaves).
"""

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from datapath import DatapathError, uninstall, xdp

from .conftest import run

HOST4, DENIED4, ALLOWED4 = "198.51.100.225", "198.51.100.226", "198.51.100.234"
DENIED_NET4 = "198.51.100.224/29"  # .224-.231: the denied source, not the allowed one
HOST6, DENIED6, ALLOWED6 = "2001:db8:7d9::1", "2001:db8:7d9::2", "2001:db8:7d9::8002"
DENIED_NET6 = "2001:db8:7d9::/113"  # ::0-::7fff
PORT = 9

# Sends COUNT datagrams from SRC to DST:PORT, each carrying its sequence number; waits
# PAUSE seconds after every 100 (0: as fast as it goes). Prints how many it sent.
SENDER = r"""
import socket, struct, sys, time
src, dst = sys.argv[1:3]
port, count, pause = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
payload = bytes(18)
for seq in range(count):
    s.sendto(struct.pack("!I", seq) + payload, (dst, port))
    if pause and seq % 100 == 99:
        time.sleep(pause)
print(count, flush=True)
"""


class Receiver:
    """A UDP socket on the host end, counting sequence numbers by source address."""

    def __init__(self, host: str):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        self.sock.bind((host, PORT))
        self.sock.settimeout(0.2)
        self.seen: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            self.seen.setdefault(peer[0], []).append(int.from_bytes(data[:4], "big"))

    def close(self) -> dict[str, list[int]]:
        time.sleep(0.3)  # what is in flight lands
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.seen


class Wire:
    """A veth: host end `device`, the other end eth0 of namespace `netns`."""

    def __init__(self):
        tag = f"{os.getpid() & 0xFFFFF:05x}"
        self.device, self.netns = f"xpf{tag}", f"xpf-{tag}"
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.device, "type", "veth", "peer", "name", f"xpp{tag}")
        run("ip", "link", "set", f"xpp{tag}", "netns", self.netns)
        self.ns("ip", "link", "set", f"xpp{tag}", "name", "eth0")
        run("ip", "addr", "add", f"{HOST4}/28", "dev", self.device)
        run("ip", "-6", "addr", "add", f"{HOST6}/64", "dev", self.device, "nodad")
        run("ip", "link", "set", self.device, "up")
        mac = Path(f"/sys/class/net/{self.device}/address").read_text().strip()
        for address in (f"{DENIED4}/28", f"{ALLOWED4}/28"):
            self.ns("ip", "addr", "add", address, "dev", "eth0")
        for address in (f"{DENIED6}/64", f"{ALLOWED6}/64"):
            self.ns("ip", "-6", "addr", "add", address, "dev", "eth0", "nodad")
        self.ns("ip", "link", "set", "eth0", "up")
        # Neighbour discovery from a denied source is dropped too: the host's MAC is static.
        for host in (HOST4, HOST6):
            self.ns(
                "ip", "neigh", "replace", host, "lladdr", mac, "dev", "eth0", "nud", "permanent"
            )

    def ns(self, *args: str) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.netns, *args)

    def send(self, src: str, dst: str, count: int, pause: float = 0.0) -> subprocess.Popen:
        command = ["ip", "netns", "exec", self.netns, sys.executable, "-c", SENDER]
        command += [src, dst, str(PORT), str(count), str(pause)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    def sent(self, src: str, dst: str, count: int, pause: float = 0.0) -> int:
        proc = self.send(src, dst, count, pause)
        return int(proc.communicate(timeout=60)[0])

    def tx_dropped(self) -> int:
        """Frames the namespace's end could not hand to the host end (a full ring)."""
        return int(self.ns("cat", "/sys/class/net/eth0/statistics/tx_dropped").stdout)

    def remove(self) -> None:
        run("ip", "link", "del", self.device, check=False)
        run("ip", "netns", "del", self.netns, check=False)


@pytest.fixture
def wire(datapath):
    made = Wire()
    yield made
    datapath.detach_prefilter(made.device)
    datapath.set_prefilter([])
    made.remove()


def test_a_flood_from_a_denied_prefix_is_dropped_and_counted_and_another_passes(
    datapath, wire, event_log
):
    datapath.set_prefilter([DENIED_NET4, DENIED_NET6])
    assert datapath.attach_prefilter(wire.device) == xdp.NATIVE
    assert datapath.prefilter_devices() == {wire.device: xdp.NATIVE}
    drops_before = datapath.drop_counts()["DROP_PREFILTER"]
    dropped_before = wire.tx_dropped()
    receivers = Receiver(HOST4), Receiver(HOST6)
    started = time.monotonic()
    flood = wire.sent(DENIED4, HOST4, 20000)
    elapsed = time.monotonic() - started
    allowed = wire.sent(ALLOWED4, HOST4, 2000)
    flood6 = wire.sent(DENIED6, HOST6, 2000)
    allowed6 = wire.sent(ALLOWED6, HOST6, 2000)
    seen = {**receivers[0].close(), **receivers[1].close()}
    assert wire.tx_dropped() == dropped_before  # every frame reached the program
    assert DENIED4 not in seen and DENIED6 not in seen
    assert sorted(seen[ALLOWED4]) == list(range(allowed))
    assert sorted(seen[ALLOWED6]) == list(range(allowed6))
    assert datapath.prefilter_drops() == {DENIED_NET4: flood, DENIED_NET6: flood6}
    assert datapath.drop_counts()["DROP_PREFILTER"] - drops_before == flood + flood6
    event = event_log.wait_for(reason_name="DROP_PREFILTER", src=ipaddress.ip_address(DENIED4))
    assert event is not None
    assert (event.dst, event.ifindex) == (ipaddress.ip_address(HOST4), wire_ifindex(wire))
    # A drop event per prefix and CPU per millisecond at most: a flood cannot bury the rest.
    flood_events = [e for e in event_log.events if e.src == ipaddress.ip_address(DENIED4)]
    assert len(flood_events) <= (elapsed * 1000 + 2) * os.cpu_count()


def wire_ifindex(wire: Wire) -> int:
    return socket.if_nametoindex(wire.device)


def test_changing_the_list_under_load_loses_no_allowed_packet(datapath, wire):
    datapath.set_prefilter([DENIED_NET4])
    datapath.attach_prefilter(wire.device)
    receiver = Receiver(HOST4)
    flood = wire.send(DENIED4, HOST4, 200000)
    allowed = wire.send(ALLOWED4, HOST4, 20000, pause=0.002)
    # Every list covers the denied source (by prefixes of several lengths, in turn) and
    # never the allowed one; the rest churns.
    covers = [DENIED_NET4, "198.51.100.226/32", "198.51.100.224/30"]
    updates = 0
    while allowed.poll() is None:
        others = [f"203.0.113.{(updates + i) % 256}/32" for i in range(50)]
        others += [f"2001:db8:ffff:{(updates + i) % 4096:x}::/64" for i in range(50)]
        cover = covers[updates % 3]
        datapath.set_prefilter([cover, *others])
        updates += 1
    sent_allowed = int(allowed.communicate(timeout=60)[0])
    flood.communicate(timeout=120)
    seen = receiver.close()
    assert updates > 20, "the list changed too few times while the traffic ran"
    assert DENIED4 not in seen
    assert sorted(seen[ALLOWED4]) == list(range(sent_allowed))


def test_a_device_without_native_xdp_gets_generic(datapath):
    device = f"xpd{os.getpid() & 0xFFFFF:05x}"
    run("ip", "link", "add", device, "type", "bridge")  # no native XDP (nor a dummy module here)
    try:
        assert datapath.attach_prefilter(device) == xdp.GENERIC
        assert datapath.prefilter_devices()[device] == xdp.GENERIC
        # Again: the program replaced in the mode the device has.
        assert datapath.attach_prefilter(device) == xdp.GENERIC
        assert datapath.detach_prefilter(device)
        assert device not in datapath.prefilter_devices()
        assert not datapath.detach_prefilter(device)
    finally:
        run("ip", "link", "del", device, check=False)


def test_a_missing_device_is_refused(datapath):
    with pytest.raises(DatapathError, match="no device"):
        datapath.attach_prefilter("xpfnosuch0")


def test_another_programs_device_is_refused_and_left_alone(datapath, wire):
    from bcc import BPF

    other = BPF(text=b"int other(struct xdp_md *ctx) { return XDP_PASS; }")
    program = other.load_func(b"other", BPF.XDP)
    ifindex = wire_ifindex(wire)
    xdp.attach(ifindex, program.fd, xdp.GENERIC)
    try:
        with pytest.raises(DatapathError, match="another XDP program"):
            datapath.attach_prefilter(wire.device)
        assert not datapath.detach_prefilter(wire.device)
        assert wire.device not in datapath.prefilter_devices()
        assert xdp.attached_programs()[wire.device].mode == xdp.GENERIC
    finally:
        xdp.detach(ifindex, xdp.GENERIC)
        other.cleanup()


def test_uninstall_detaches_the_instances_prefilter_by_its_pinned_map(datapath, wire, pin_dir):
    datapath.attach_prefilter(wire.device)
    assert uninstall.detach_prefilter(Path(pin_dir)) == [wire.device]
    assert wire.device not in xdp.attached_programs()
    assert uninstall.detach_prefilter(Path(pin_dir)) == []


def test_a_new_prefix_counts_from_zero_on_a_reused_id(datapath, wire):
    datapath.set_prefilter([DENIED_NET4])
    datapath.attach_prefilter(wire.device)
    dropped = wire.sent(DENIED4, HOST4, 500)
    assert datapath.prefilter_drops() == {DENIED_NET4: dropped}
    datapath.set_prefilter([])
    datapath.set_prefilter(["198.51.100.226/32"])  # the id DENIED_NET4 had
    assert datapath.prefilter_drops() == {"198.51.100.226/32": 0}


@pytest.mark.parametrize("bad", ["198.51.100.1/24", "2001:db8::/129", "x"])
def test_an_invalid_list_changes_nothing(datapath, bad):
    datapath.set_prefilter([DENIED_NET4])
    try:
        with pytest.raises(DatapathError, match="invalid prefilter CIDR"):
            datapath.set_prefilter(["203.0.113.0/24", bad])
        assert set(datapath.prefilter_drops()) == {DENIED_NET4}
    finally:
        datapath.set_prefilter([])
