"""A user-space TCP proxy for published ports on the host's loopback addresses.

The kernel does not route loopback-sourced packets out of a veth, so DNAT cannot carry
127.0.0.1 or [::1] to a container; like Docker's own docker-proxy, a listener on the
loopback address forwards each connection instead.
"""

import contextlib
import logging
import socket
import threading

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CHUNK = 65536


class LoopbackProxy:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.listen = listen
        self.target = target
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now (so a taken port is an error for the caller), serve in the background."""
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind(self.listen)
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            raise
        self._thread = threading.Thread(
            target=self._accept, name=f"proxy {self.listen}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            log.info("proxy %s -> %s: %s", self.listen, self.target, exc)
            client.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until the source ends, then pass the end on (half-close)."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
