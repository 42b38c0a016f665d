"""/healthz, /readyz and /metrics over a minimal HTTP/1.1 server, plus the `serve --check` probe.

Health: the event loop answers. Readiness: both RabbitMQ connections are open, the job store
answers and the outbox relay is not stuck. No web framework: three GET routes do not need one.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Awaitable, Callable

log = logging.getLogger(__name__)
Route = Callable[[], Awaitable[tuple[int, bytes, str]]]


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
