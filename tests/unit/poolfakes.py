"""Fakes for pool tests without sockets: an application with a settable clock, a target and
clients that record how they were answered."""

from __future__ import annotations

from typing import Any

from pgusher.config.settings import PgusherSettings, Settings
from pgusher.errors import PgusherError
from pgusher.pooling.counts import ServerCounts
from pgusher.pooling.pool import Pool


class Timer:
    def __init__(self, loop: Loop, when: float, callback: Any) -> None:
        self.loop, self.when, self.callback, self.cancelled = loop, when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Timer:
        timer = Timer(self, self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def run_until(self, when: float) -> None:
        """Advance the clock, firing the timers due on the way."""
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= when),
                         key=lambda t: t.when)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = when


class Target:
    name = "app"
    dbname = "app"


class App:
    def __init__(self, **settings: Any) -> None:
        self.loop = Loop()
        self.config = type("Config", (), {"settings": Settings(**settings),
                                          "pgusher": PgusherSettings()})()
        self.paused = False
        self.paused_dbs: set[str] = set()
        self.shutting_down = False
        self.shared = None
        self.fleet = None
        self.pool_size = 3
        self.server_counts = ServerCounts()

    def effective_pool_mode(self, target: Target, user: str) -> str:
        return "transaction"

    def effective_pool_size(self, pool: Pool) -> int:
        return self.pool_size

    def effective_reserve_size(self, pool: Pool) -> int:
        return 0

    def effective_max_db_connections(self, target: Target) -> int:
        return 0

    def effective_max_user_connections(self, user: str) -> int:
        return 0


class Client:
    def __init__(self, application: str = "") -> None:
        self.stats = type("Stats", (), {"application": application})()
        self.closed = False
        self.waiting = False
        self.error: PgusherError | None = None

    def start_wait(self) -> None:
        self.waiting = True

    def stop_wait(self) -> None:
        self.waiting = False

    def fatal(self, exc: PgusherError, log_as: str | None = None) -> None:
        self.closed = True
        self.error = exc
