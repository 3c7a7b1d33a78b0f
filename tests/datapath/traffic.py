"""Real TCP/UDP traffic between test namespaces: small Python programs run inside them."""

import subprocess
import sys

SERVER = r"""
import socket, sys, threading
port, proto = int(sys.argv[1]), sys.argv[2]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))

def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)

if kind == socket.SOCK_STREAM:
    s.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    s.sendto(data, peer)
"""

# Connects, then echoes each stdin line through the server; exit 0 if the echo came back.
CLIENT = r"""
import socket, sys
host, port, proto, timeout, lines = sys.argv[1:6]
port, timeout = int(port), float(timeout)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.settimeout(timeout)
s.connect((host, port))
if lines == "stdin":
    print("connected", flush=True)
    for line in sys.stdin:
        s.sendall(line.encode())
        print(s.recv(4096).decode().strip(), flush=True)
    sys.exit(0)
s.sendall(b"hello")
sys.exit(0 if s.recv(100) == b"hello" else 1)
"""


# Answers every message with "<name> <peer address> <message>": which server, seen from whom.
NAMED_SERVER = r"""
import socket, sys, threading
port, proto, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))

def answer(data, peer):
    return f"{name} {peer[0].removeprefix('::ffff:')} {data.decode().strip()}\n".encode()

def serve(conn, peer):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(answer(data, peer))

if kind == socket.SOCK_STREAM:
    s.listen(64)
    print("ready", flush=True)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    s.sendto(answer(data, peer), peer)
"""

# count new flows (TCP connections; UDP from fresh unconnected sockets), one line each:
# "<server name> <client address the server saw> <source of the answer>", or "fail".
ASK_CLIENT = r"""
import socket, sys
host, port, proto, count, timeout = sys.argv[1:6]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
for i in range(int(count)):
    s = socket.socket(family, kind)
    s.settimeout(float(timeout))
    try:
        if kind == socket.SOCK_STREAM:
            s.connect((host, int(port)))
            s.sendall(b"q")
            data, source = s.recv(4096), s.getpeername()
        else:
            s.sendto(b"q", (host, int(port)))
            data, source = s.recvfrom(4096)
        name, seen = data.decode().split()[:2]
        print(name, seen, source[0], flush=True)
    except OSError:
        print("fail", flush=True)
    finally:
        s.close()
"""

# How a datagram to a closed port ended: a connected UDP socket learns of the ICMP port
# unreachable as ECONNREFUSED ("refused"), "answered" or "timeout".
UDP_PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"x")
try:
    s.recv(10)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


def netns_cmd(netns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *args]


def serve(netns: str, port: int, proto: str = "tcp") -> subprocess.Popen:
    """An echo server on [::]:port (both families) in netns; returns once it listens."""
    proc = subprocess.Popen(
        netns_cmd(netns, sys.executable, "-c", SERVER, str(port), proto),
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdout.readline().strip() != "ready":
        stop(proc)
        raise RuntimeError(f"echo server on port {port} did not start")
    return proc


def serve_named(netns: str, port: int, proto: str, name: str) -> subprocess.Popen:
    """A NAMED_SERVER on [::]:port (both families) in netns; returns once it listens."""
    proc = subprocess.Popen(
        netns_cmd(netns, sys.executable, "-c", NAMED_SERVER, str(port), proto, name),
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdout.readline().strip() != "ready":
        stop(proc)
        raise RuntimeError(f"named server on port {port} did not start")
    return proc


def ask(netns: str, addr, port: int, proto: str, count: int, timeout: float = 2) -> list:
    """count new flows from netns to addr:port: (server name, client seen, answer source)
    per flow, None for a flow that got no answer."""
    cmd = netns_cmd(netns, sys.executable, "-c", ASK_CLIENT, str(addr), str(port), proto)
    done = subprocess.run(
        [*cmd, str(count), str(timeout)], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.splitlines()
    return [tuple(line.split()) if line != "fail" else None for line in lines]


def exchange(netns: str, addr, port: int, proto: str = "tcp", timeout: float = 2) -> bool:
    """Whether a client in netns gets its message echoed by addr:port."""
    cmd = netns_cmd(netns, sys.executable, "-c", CLIENT, str(addr), str(port), proto)
    done = subprocess.run([*cmd, str(timeout), "once"], capture_output=True, timeout=30)
    return done.returncode == 0


class Session:
    """A long-lived connection from netns to addr:port; echo() sends a line through it."""

    def __init__(self, netns: str, addr, port: int, proto: str = "tcp"):
        cmd = netns_cmd(netns, sys.executable, "-c", CLIENT, str(addr), str(port), proto)
        self.proc = subprocess.Popen(
            [*cmd, "3", "stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self.proc.stdout.readline().strip() != "connected":
            self.close()
            raise RuntimeError(f"cannot connect to {addr}:{port}")

    def echo(self, text: str) -> bool:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == text

    def request(self, text: str) -> str:
        """Send a line, return the answer line ("" when none came)."""
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
