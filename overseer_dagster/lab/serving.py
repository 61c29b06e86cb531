"""An aiohttp server on a loopback port that can be closed abruptly and re-bound on the same port."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

LOOPBACK = "127.0.0.1"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


class Listener:
    def __init__(self, make_app: Callable[[], web.Application], *, host: str = LOOPBACK, port: int = 0) -> None:
        self._make_app = make_app
        self.host = host
        self.port = port  # 0 until first bound; then kept, so a restart re-binds the same port
        self._runner: web.AppRunner | None = None

    @property
    def listening(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        # handler_cancellation: a client disconnect cancels its handler, so slots are freed at once (as vLLM).
        runner = web.AppRunner(self._make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        # A deep backlog: a burst of hundreds of connects must not overflow it (dropped SYNs retry after 1 s).
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, backlog=2048)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    def abort_connections(self) -> None:
        """Reset every open connection (in-flight handlers are cancelled), as a dying process would."""
        if self._runner is None or self._runner.server is None:
            return
        for conn in self._runner.server.connections:
            if conn.transport is not None:
                conn.transport.abort()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            for conn in runner.server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
        await runner.cleanup()
