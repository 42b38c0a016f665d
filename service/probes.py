"""/healthz, /readyz and /metrics over a minimal HTTP/1.1 server, plus the `serve --check` probe.

Health: the event loop answers. Readiness: both RabbitMQ connections are open, the job store
answers and the outbox relay is not stuck. No web framework: three GET routes do not need one.
Probes answer within STORE_WAIT_S (a kubelet gives up after 1 s by default): while the job store
does not answer they say so, and never pile threads up behind it (`StoreCheck`).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Awaitable, Callable

log = logging.getLogger(__name__)
Route = Callable[[], Awaitable[tuple[int, bytes, str]]]
STORE_WAIT_S = 0.5  # a job store that answers does so in milliseconds


class StoreCheck:
    """Whether the job store answers, with at most one question in flight: a probe that comes while
    the last one still waits (for the store's own deadline) waits on that one, never starts another."""

    def __init__(self, ping: Callable[[], object]):
        self.ping = ping
        self.asking: asyncio.Future | None = None

    async def answers(self) -> bool:
        if self.asking is None or self.asking.done():
            self.asking = asyncio.ensure_future(asyncio.to_thread(self.ping))
            self.asking.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, not logged
        try:
            await asyncio.wait_for(asyncio.shield(self.asking), STORE_WAIT_S)
            return True
        except Exception:  # no answer in time, or the store's error
            return False


class ProbeServer:
    def __init__(self, routes: dict[str, Route]):
        self.routes = routes
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, "0.0.0.0", port)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode(errors="replace").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            route = self.routes.get(path)
            status, body, ctype = await route() if route else (404, b"not found\n", "text/plain")
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def check(port: int, path: str = "/healthz", timeout_s: float = 5.0) -> int:
    """Exit code for Docker/Kubernetes probes: 0 when the endpoint answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1
