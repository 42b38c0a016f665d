"""A PostgreSQL that accepts connections and never answers: a TCP front for the local server that
can be told to stall. While stalled it accepts connections and forwards nothing; the connections
it froze stay dead for good, like those a network partition leaves behind. Once resumed, new
connections reach the real server again. Upstream is the server's Unix socket, so the tests'
trust authentication still applies."""

from __future__ import annotations

import selectors
import socket
import threading
from dataclasses import dataclass, field

from tests.support.servers import PG_SOCKET_DIR

UPSTREAM = f"{PG_SOCKET_DIR}/.s.PGSQL.5432"


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket | None
    frozen: threading.Event = field(default_factory=threading.Event)


class StallingProxy:
    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled, self.closed = threading.Event(), threading.Event()
        self.pairs: list[_Pair] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="stalling-proxy", daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def stall(self) -> None:
        """From now on nothing gets through, on the open connections or on new ones."""
        with self.lock:
            self.stalled.set()
            for pair in self.pairs:
                pair.frozen.set()

    def resume(self) -> None:
        """New connections reach the server again; the frozen ones stay frozen."""
        self.stalled.clear()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        with self.lock:
            for pair in self.pairs:
                for sock in (pair.client, pair.server):
                    if sock is not None:
                        sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.stalled.is_set():  # accepted, and never answered
                    self.pairs.append(_Pair(client, None, frozen=_set_event()))
                    continue
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.connect(UPSTREAM)
                pair = _Pair(client, server)
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(pair.client, selectors.EVENT_READ, pair.server)
            selector.register(pair.server, selectors.EVENT_READ, pair.client)
            while not self.closed.is_set() and not pair.frozen.is_set():
                for key, _ in selector.select(timeout=0.1):
                    if pair.frozen.is_set():
                        break
                    try:
                        data = key.fileobj.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event
