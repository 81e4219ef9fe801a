"""A TCP proxy on loopback that a test can cut, for a store that goes away
while a server uses it: what a restart, a failover or a cut network looks
like from the server's side.

- ``open()``: bytes pass both ways (the start);
- ``cut()``: every connection is closed and new ones are refused, as a
  stopped database server does;
- ``hold()``: every connection is closed; new ones are accepted and never
  answered, as a host that is gone behind a firewall that drops packets does;
- ``stall()``: connections stay open and what either side sends is held
  back, until ``open()`` lets it through or a cut or hold drops it.

Threads, not asyncio: the proxy runs beside synchronous test code.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode = "open"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def open(self) -> None:
        self._mode = "open"
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def cut(self) -> None:
        self._mode = "cut"
        self._drop_all()

    def hold(self) -> None:
        self._mode = "hold"
        self._drop_all()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._flowing.set()  # held-back bytes meet closed sockets; the pumps end

    def _keep(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.update(sockets)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._mode == "cut":
                # An immediate reset, as from a port nothing listens on.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            if self._mode == "hold":
                self._keep(client)  # accepted, never answered
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._keep(client, server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                self._flowing.wait()
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
