"""Two XDP helpers of bench/xdpbench.py, run by path (they import bcc, not the driver).

xdpgen.py gen DEVICE FRAME_HEX SECONDS
    In the sender's namespace: send FRAME as fast as the kernel can, out of DEVICE (a
    veth), for SECONDS, as XDP frames: BPF_PROG_TEST_RUN in live-frames mode runs a
    program that redirects each copy to DEVICE, so the peer receives them the way a NIC
    receives frames, with no socket and no skb on the way (the in-kernel generator
    xdp-trafficgen uses). Prints "ready" once compiled, starts at a line on stdin, then
    prints "<frames> <seconds>".
xdpgen.py pass DEVICE
    Attach an XDP program that passes everything to DEVICE (native mode), print "ready",
    detach when stdin closes: a veth takes redirected frames only with an XDP program.
"""

import ctypes as ct
import socket
import sys
import time

from bcc import BPF

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
XDP_FLAGS_DRV_MODE = 4
REPEAT = 1 << 20  # frames a test run
BATCH = 64


class TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf)."""

    _fields_ = (
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    )


def libbpf() -> ct.CDLL:
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.c_void_p]
    lib.bpf_xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.c_void_p]
    lib.bpf_xdp_detach.argtypes = [ct.c_int, ct.c_uint32, ct.c_void_p]
    return lib


def generate(device: str, frame: bytes, seconds: float) -> None:
    ifindex = socket.if_nametoindex(device)
    source = b"int gen(struct xdp_md *ctx) { return bpf_redirect(IFINDEX, 0); }"
    program = BPF(text=source, cflags=[f"-DIFINDEX={ifindex}"]).load_func(b"gen", BPF.XDP)
    lib = libbpf()
    data = ct.create_string_buffer(frame, len(frame))
    print("ready", flush=True)
    sys.stdin.readline()
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        opts = TestRunOpts(
            sz=ct.sizeof(TestRunOpts),
            data_in=ct.addressof(data),
            data_size_in=len(frame),
            repeat=REPEAT,
            flags=BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size=BATCH,
        )
        if lib.bpf_prog_test_run_opts(program.fd, ct.byref(opts)) < 0:
            sys.exit(f"xdpgen: live-frames test run failed: errno {ct.get_errno()}")
        sent += REPEAT
    print(sent, f"{time.monotonic() - start:.3f}", flush=True)


def pass_through(device: str) -> None:
    ifindex = socket.if_nametoindex(device)
    program = BPF(text=b"int pass(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = program.load_func(b"pass", BPF.XDP)
    lib = libbpf()
    if lib.bpf_xdp_attach(ifindex, fn.fd, XDP_FLAGS_DRV_MODE, None) < 0:
        sys.exit(f"xdpgen: cannot attach to {device}: errno {ct.get_errno()}")
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        lib.bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE, None)


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        generate(sys.argv[2], bytes.fromhex(sys.argv[3]), float(sys.argv[4]))
    else:
        pass_through(sys.argv[2])
