"""The dashboard's last 15 minutes: a few figures per pool and application, in memory.

Strategy: every :data:`INTERVAL` seconds the service takes one point from the same scan the
console uses and appends it to a fixed-length ring per pool and per application (180 points:
15 minutes). Rates (transactions and queries per second) are the change in the registry's
totals since the previous point, divided by the time between them. Points are stamped with
wall-clock times rounded to the interval, so the rings of several workers line up and can be
added point by point (admin/merge.py). Nothing here runs on the data path, and the rings of a
pool or application that went away are dropped once all their points are zero.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .counters import Counters
from .snapshot import app_label, scan

if TYPE_CHECKING:
    from ..app import Application

INTERVAL = 5.0
POINTS = 180  # 15 minutes

# The figures kept, in the order of each point's values.
POOL_SERIES = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait")
APP_SERIES = ("clients", "waiting", "xact_rate", "query_rate")


class History:
    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=POINTS)
        self.pools: dict[str, dict[str, deque[float]]] = {}
        self.applications: dict[str, dict[str, deque[float]]] = {}
        self._last: dict[str, tuple[int, int]] = {}  # application -> (xacts, queries)
        self._last_time = 0.0

    @staticmethod
    def delay(wall: float) -> float:
        """Seconds until just after the next multiple of INTERVAL (the next point's time)."""
        return INTERVAL - wall % INTERVAL + 0.01

    def sample(self, app: Application, wall: float) -> None:
        """Append one point for every pool and application (``wall``: time.time())."""
        stamp = (wall // INTERVAL) * INTERVAL
        if self.times and stamp <= self.times[-1]:
            return  # a timer that fired early: the point of this interval is taken
        result = scan(app)
        pools: dict[str, tuple[float, ...]] = {}
        for pool, f in result.pools.items():
            pools[f"{pool.db_name}/{pool.user}"] = (f.cl_active, f.cl_waiting, f.sv_active,
                                                    f.sv_idle + f.sv_used, round(f.maxwait, 3))
        live: dict[str, list[int]] = {}
        for counters, gauge in result.live.items():
            entry = live.setdefault(app_label(counters.application), [0])
            entry[0] += gauge.waiting
        seconds = wall - self._last_time if self._last_time else 0.0
        apps: dict[str, tuple[float, ...]] = {}
        for name, c in app.metrics.registry.by("application").items():
            label = app_label(name)
            apps[label] = (c.clients, live.get(label, [0])[0],
                           *self._rates(label, c, seconds))
        self._last_time = wall
        self.times.append(stamp)
        self._append(self.pools, POOL_SERIES, pools)
        self._append(self.applications, APP_SERIES, apps)

    def _rates(self, label: str, c: Counters, seconds: float) -> tuple[float, float]:
        before = self._last.get(label)
        self._last[label] = (c.xact_count, c.query_count)
        if before is None or seconds <= 0:
            return 0.0, 0.0
        return (round((c.xact_count - before[0]) / seconds, 2),
                round((c.query_count - before[1]) / seconds, 2))

    def _append(self, rings: dict[str, dict[str, deque[float]]], names: tuple[str, ...],
                points: dict[str, tuple[float, ...]]) -> None:
        filled = len(self.times) - 1  # points taken before this one
        for key, values in points.items():
            ring = rings.get(key)
            if ring is None:
                # A newcomer's earlier points are zero, so every ring has the same length.
                ring = rings[key] = {n: deque([0.0] * filled, maxlen=POINTS) for n in names}
            for name, value in zip(names, values, strict=True):
                ring[name].append(value)
        for key in [k for k in rings if k not in points]:
            ring = rings[key]
            for name in names:
                ring[name].append(0.0)
            if all(not any(ring[n]) for n in names):
                del rings[key]

    def to_json(self, applications: Iterable[str]) -> dict[str, Any]:
        """Every pool's rings and those of ``applications`` (the ones a page shows)."""
        rings = self.applications
        return {
            "interval": INTERVAL,
            "times": list(self.times),
            "pools": {k: {n: list(v) for n, v in ring.items()} for k, ring in self.pools.items()},
            "applications": {k: {n: list(v) for n, v in rings[k].items()}
                             for k in applications if k in rings},
        }
