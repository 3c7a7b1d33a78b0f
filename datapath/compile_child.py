"""The child process that compiles and loads the BPF programs for datapath.loader.

Run as ``python compile_child.py SOCKET_FD SOURCE FUNCTION... -- CFLAGS...``: compiles SOURCE
with bcc, loads each FUNCTION as a tc classifier (``NAME:xdp``: as an XDP program), and sends
the program fds, in that order,
over the unix socket SOCKET_FD. The map fds the cflags name are inherited from the parent
under the same numbers. On failure it prints why on stderr and exits non-zero.

It imports nothing from the driver (it runs by path, whatever the working directory), and
exists so that clang and LLVM (bcc's compiler, about 100 MiB once used) live and die here,
not in the long-running driver.
"""

import socket
import sys


def main(argv: list[str]) -> int:
    sock_fd, source, *rest = argv[1:]
    split = rest.index("--")
    functions, cflags = rest[:split], rest[split + 1 :]
    from bcc import BPF

    try:
        bpf = BPF(src_file=source.encode(), cflags=cflags)
    except Exception as exc:
        print(f"compiling {source} failed: {exc}", file=sys.stderr)
        return 1
    fds = []
    for function in functions:
        name, _, kind = function.partition(":")
        prog_type = BPF.XDP if kind == "xdp" else BPF.SCHED_CLS
        try:
            fds.append(bpf.load_func(name.encode(), prog_type).fd)
        except Exception as exc:
            print(f"the kernel rejected BPF program {function}: {exc}", file=sys.stderr)
            return 1
    with socket.socket(fileno=int(sock_fd)) as sock:
        socket.send_fds(sock, [b"loaded"], fds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
