"""The Application's statistics service: the registry, the stats_period timer, the HTTP port.

The Application passes in what /metrics and /api/snapshot serve (see http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .counters import Counters
from .http import start_http
from .registry import Registry

if TYPE_CHECKING:
    from ..app import Application
    from ..net.client_conn import ClientConn


class Metrics:
    def __init__(self, app: Application,
                 metrics_text: Callable[[Application], Awaitable[str]],
                 snapshot: Callable[[Application], Awaitable[dict[str, object]]]) -> None:
        self.app = app
        self._metrics_text = metrics_text
        self._snapshot = snapshot
        self.registry = Registry()
        # Failures and refusals; the connections that see them count them here.
        self.events = self.registry.events
        self._timer: asyncio.TimerHandle | None = None
        self._http: asyncio.AbstractServer | None = None

    def login(self, client: ClientConn) -> Counters:
        return self.registry.login(client)

    def logout(self, client: ClientConn) -> None:
        self.registry.logout(client)

    async def start(self) -> None:
        loop = self.app.loop
        self.registry.start_period(loop.time())
        self._arm()
        own = self.app.config.pgusher
        if own.http_port:
            try:
                self._http = await start_http(self.app, own.http_addr, own.http_port,
                                              self._metrics_text, self._snapshot)
            except OSError as exc:
                raise ConfigError(f"cannot listen on http_addr {own.http_addr} "
                                  f"http_port {own.http_port}: {exc.strerror}") from None

    def _arm(self) -> None:
        period = max(self.app.config.settings.stats_period, 0.1)
        self._timer = self.app.loop.call_later(period, self._period)

    def _period(self) -> None:
        settings = self.app.config.settings
        self.registry.roll_up(self.app.loop.time(), settings.log_stats)
        self._arm()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(OSError):
                await self._http.wait_closed()
            self._http = None
