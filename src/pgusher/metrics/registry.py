"""The registry of counters, the per-stats_period averages and the log_stats line.

Strategy: one :class:`Counters` object per (database, user, application), created when the
first client of that triple logs in and kept for the life of the process (totals are "since
process start", as PgBouncer's). Client counts and their peaks are kept here at login and
logout for the triple and for each of its three parts, because a peak cannot be summed.

Every stats_period the per-database totals are compared with the previous roll-up to give
PgBouncer's averages (rates per second, times per transaction, query or assignment); they are
kept until the next roll-up, which is what SHOW STATS_AVERAGES and the log line show.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..log import log
from .counters import SUMMED, UNCOUNTED, Counters, Events

if TYPE_CHECKING:
    from ..net.client_conn import ClientConn

# Distinct application names kept per (database, user); later names count as OTHER_APP, so a
# client that invents names cannot grow the registry (or a Prometheus scrape) without bound.
MAX_APPLICATIONS = 100
OTHER_APP = "(other)"

# The averages, in SHOW STATS order (without the "avg_" prefix of their column names).
AVERAGE_NAMES = ("server_assignment_count", "xact_count", "query_count", "recv", "sent",
                 "xact_time", "query_time", "wait_time", "client_parse_count",
                 "server_parse_count", "bind_count", "client_connect_count")

_INDEX = {name: i for i, name in enumerate(SUMMED)}


def averages(cur: tuple[float, ...], old: tuple[float, ...], seconds: float) -> dict[str, int]:
    """PgBouncer's averages between two snapshots ``seconds`` apart (integers, as it shows)."""
    d = [c - o for c, o in zip(cur, old, strict=True)]
    xacts = d[_INDEX["xact_count"]]
    queries = d[_INDEX["query_count"]]
    assigns = d[_INDEX["assign_count"]]

    def rate(name: str) -> int:
        return int(d[_INDEX[name]] / seconds) if seconds > 0 else 0

    def per(name: str, count: float) -> int:
        return int(d[_INDEX[name]] * 1_000_000 / count) if count > 0 else 0

    return {
        "server_assignment_count": rate("assign_count"),
        "xact_count": rate("xact_count"),
        "query_count": rate("query_count"),
        "recv": rate("bytes_in"),
        "sent": rate("bytes_out"),
        "xact_time": per("xact_time", xacts),
        "query_time": per("query_time", queries),
        "wait_time": per("wait_time", assigns),
        "client_parse_count": 0,
        "server_parse_count": 0,
        "bind_count": 0,
        "client_connect_count": rate("login_count"),
    }


def application_of(client: ClientConn) -> str:
    """The client's application_name as it gave it (without application_name_add_host's tail)."""
    name = client.params.get("application_name", "")
    if client.app.config.settings.application_name_add_host:
        tail = f" - {client.addr}"
        if name.endswith(tail):
            name = name[:-len(tail)]
    return name


class Registry:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, str, str], Counters] = {}
        self.events = Events()
        self._apps_per_pair: dict[tuple[str, str], int] = {}
        # (kind, name) -> [clients now, peak]; kind is "database", "user" or "application".
        self.gauges: dict[tuple[str, str], list[int]] = {}
        # Ids for SHOW CLIENTS / SERVERS and KILL_CLIENT, in order of first sight.
        self.ids: dict[object, int] = {}
        self._next_id = itertools.count(1)
        # Averages per database (and "" for all), from the last stats_period roll-up.
        self.averages: dict[str, dict[str, int]] = {}
        self._last: dict[str, tuple[float, ...]] = {}
        self._last_time = 0.0

    def number_ids(self, first: int, step: int) -> None:
        """Give ids first, first + step, ... (workers: no two workers give the same id)."""
        self._next_id = itertools.count(first, step)

    # ------------------------------------------------------------------ login and logout

    def login(self, client: ClientConn) -> Counters:
        db, user, app = client.db_name, client.user, application_of(client)
        key = (db, user, app)
        counters = self.counters.get(key)
        if counters is None:
            pair = (db, user)
            seen = self._apps_per_pair.get(pair, 0)
            if seen >= MAX_APPLICATIONS:
                key = (db, user, OTHER_APP)
                counters = self.counters.get(key)
            if counters is None:
                counters = Counters(*key)
                self.counters[key] = counters
                self._apps_per_pair[pair] = seen + 1
        counters.login_count += 1
        counters.clients += 1
        if counters.clients > counters.clients_peak:
            counters.clients_peak = counters.clients
        for level in (("database", db), ("user", user), ("application", counters.application)):
            gauge = self.gauges.get(level)
            if gauge is None:
                gauge = self.gauges[level] = [0, 0]
            gauge[0] += 1
            if gauge[0] > gauge[1]:
                gauge[1] = gauge[0]
        self.id_of(client)
        return counters

    def logout(self, client: ClientConn) -> None:
        self.ids.pop(client, None)
        counters = client.stats
        if counters is UNCOUNTED:
            return
        counters.clients -= 1
        for level in (("database", counters.database), ("user", counters.user),
                      ("application", counters.application)):
            self.gauges[level][0] -= 1

    def id_of(self, obj: object) -> int:
        ident = self.ids.get(obj)
        if ident is None:
            ident = self.ids[obj] = next(self._next_id)
        return ident

    def forget_ids(self, keep: Iterable[object]) -> None:
        """Drop ids of objects not in ``keep`` (closed servers, found when listing them)."""
        alive = set(keep)
        for obj in [o for o in self.ids if o not in alive]:
            del self.ids[obj]

    # ------------------------------------------------------------------ sums

    def by(self, kind: str) -> dict[str, Counters]:
        """Counters summed per database, user or application name."""
        attr = {"database": 0, "user": 1, "application": 2}[kind]
        out: dict[str, Counters] = {}
        for key, counters in self.counters.items():
            name = key[attr]
            total = out.get(name)
            if total is None:
                total = out[name] = Counters(*(name if i == attr else "" for i in range(3)))
            total.add(counters)
        for name, total in out.items():
            total.clients_peak = self.gauges.get((kind, name), [0, 0])[1]
        return out

    def total(self) -> Counters:
        total = Counters()
        for counters in self.counters.values():
            total.add(counters)
        return total

    # ------------------------------------------------------------------ stats_period

    def start_period(self, now: float) -> None:
        self._last_time = now
        self._last = {}

    def roll_up(self, now: float, log_stats: bool) -> None:
        """End a stats_period: compute averages since the last roll-up, log them if asked."""
        seconds = now - self._last_time
        current = {name: c.snapshot() for name, c in self.by("database").items()}
        current[""] = self.total().snapshot()
        zero = (0,) * len(SUMMED)
        self.averages = {name: averages(snap, self._last.get(name, zero), seconds)
                         for name, snap in current.items()}
        self._last = current
        self._last_time = now
        if log_stats:
            a = self.averages[""]
            log.info("stats: %d xacts/s, %d queries/s, %d client parses/s, %d server parses/s, "
                     "%d binds/s, in %d B/s, out %d B/s, xact %d us, query %d us, wait %d us",
                     a["xact_count"], a["query_count"], a["client_parse_count"],
                     a["server_parse_count"], a["bind_count"], a["recv"], a["sent"],
                     a["xact_time"], a["query_time"], a["wait_time"])

    def averages_of(self, database: str) -> dict[str, int]:
        found = self.averages.get(database)
        if found is None:
            return dict.fromkeys(AVERAGE_NAMES, 0)
        return found
