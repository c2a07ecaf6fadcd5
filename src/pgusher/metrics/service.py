"""The Application's statistics service: the registry, the stats_period timer, the HTTP port
and the dashboard's history (sampled only while the HTTP endpoint is on).

The Application passes in what /metrics and /api/snapshot serve (see http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .counters import Counters
from .history import History
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
        self.history = History()
        self._timer: asyncio.TimerHandle | None = None
        self._history_timer: asyncio.TimerHandle | None = None
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
            self._sample()

    def _arm(self) -> None:
        period = max(self.app.config.settings.stats_period, 0.1)
        self._timer = self.app.loop.call_later(period, self._period)

    def _period(self) -> None:
        settings = self.app.config.settings
        self.registry.roll_up(self.app.loop.time(), settings.log_stats)
        self._arm()

    def _sample(self) -> None:
        wall = time.time()
        self.history.sample(self.app, wall)
        self._history_timer = self.app.loop.call_later(History.delay(wall), self._sample)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._history_timer is not None:
            self._history_timer.cancel()
            self._history_timer = None
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(OSError):
                await self._http.wait_closed()
            self._http = None
