"""Point-in-time figures: what each pool, application and user is doing right now.

Strategy: one pass over the clients and one over each pool's servers, done when someone asks
(a console SHOW, a scrape, the dashboard), never on the data path. The console, the Prometheus
text and the JSON snapshot all read the same figures, so they cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import VERSION_STRING
from ..pooling.states import LOGIN_WAIT, READY
from .counters import Counters

if TYPE_CHECKING:
    from ..app import Application, DbTarget
    from ..pooling.pool import Pool


@dataclass
class PoolFigures:
    cl_active: int = 0
    cl_waiting: int = 0
    sv_active: int = 0
    sv_idle: int = 0
    sv_used: int = 0
    sv_tested: int = 0
    sv_login: int = 0
    maxwait: float = 0.0  # seconds the oldest waiting client has waited
    # Transaction mode: clients that keep their server for state that cannot move, by why.
    pinned: dict[str, int] = field(default_factory=dict)


@dataclass
class Live:
    """Gauges of one Counters object: clients waiting now, server connections held now."""

    waiting: int = 0
    held: int = 0


@dataclass
class Scan:
    pools: dict[Pool, PoolFigures] = field(default_factory=dict)
    live: dict[Counters, Live] = field(default_factory=dict)


def scan(app: Application) -> Scan:
    out = Scan()
    pools = out.pools
    for each in app.pools.values():
        pools[each] = pool_servers(app, each)
    now = app.loop.time()
    live = out.live
    for client in app.clients:
        pool = client.pool
        if pool is None or client.closed:
            continue
        figures = pools.get(pool)
        if figures is None:
            continue
        if client.state == LOGIN_WAIT:
            figures.cl_waiting += 1
            continue
        if client.state != READY:
            continue
        stats = client.stats
        gauge = live.get(stats)
        if gauge is None:
            gauge = live[stats] = Live()
        if client.waiting:
            figures.cl_waiting += 1
            gauge.waiting += 1
            waited = now - client.wait_started
            if waited > figures.maxwait:
                figures.maxwait = waited
        else:
            figures.cl_active += 1
        if client.server is not None:
            gauge.held += 1
        if client.pinned:
            figures.pinned[client.pinned] = figures.pinned.get(client.pinned, 0) + 1
    return out


def pool_servers(app: Application, pool: Pool) -> PoolFigures:
    figures = PoolFigures(sv_login=len(pool.login), sv_active=len(pool.active),
                          sv_tested=len(pool.tested))
    delay = pool.check_delay
    now = app.now
    for server in pool.idle:
        if delay is not None and now - server.idle_since >= delay:
            figures.sv_used += 1  # will run server_check_query before its next use
        else:
            figures.sv_idle += 1
    return figures


# Applications whose history goes with a snapshot: the busiest by clients (the rest are
# listed without it, which keeps the page's JSON small with thousands of names).
HISTORY_APPLICATIONS = 50


def database_targets(app: Application, pools: Iterable[Pool]) -> list[tuple[str, DbTarget]]:
    """Every configured database (used or not yet) and every database with a pool, by name."""
    targets = {pool.db_name: pool.target for pool in pools}
    for name in app.config.databases:
        if name != "*" and name not in targets:
            target = app.find_target(name)
            if target is not None:
                targets[name] = target
    return sorted(targets.items())


def app_label(name: str) -> str:
    return name if name else "(unnamed)"


def json_snapshot(app: Application) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON-ready data."""
    result = scan(app)
    registry = app.metrics.registry
    pools = []
    for pool, f in result.pools.items():
        target = pool.target
        max_db = app.effective_max_db_connections(target)
        pools.append({
            "database": pool.db_name, "user": pool.user, "pool_mode": pool.mode,
            "cl_active": f.cl_active, "cl_waiting": f.cl_waiting,
            "sv_active": f.sv_active, "sv_idle": f.sv_idle + f.sv_used,
            "sv_tested": f.sv_tested, "sv_login": f.sv_login,
            "pool_size": pool.limit, "max_db_connections": max_db,
            "db_server_connections": app.db_server_count(pool.db_name),
            "maxwait_seconds": round(f.maxwait, 6),
            "paused": pool.paused, "disabled": pool.db_name in app.disabled_dbs,
        })
    databases = []
    settings = app.config.settings
    for name, target in database_targets(app, result.pools):
        conf = target.entry
        databases.append({
            "database": name, "paused": app.paused or name in app.paused_dbs,
            "disabled": name in app.disabled_dbs, "clients": app.client_counts.db.get(name, 0),
            "server_connections": app.db_server_count(name),
            "pool_size": conf.pool_size if conf.pool_size is not None
            else settings.default_pool_size,
            "max_db_connections": app.effective_max_db_connections(target),
            "pool_mode": conf.pool_mode or settings.pool_mode,
            "pool_count": sum(1 for p in result.pools if p.db_name == name),
        })
    where: dict[str, tuple[set[str], set[str]]] = {}
    for db, user, application in registry.counters:
        seen_dbs, seen_users = where.setdefault(application, (set(), set()))
        seen_dbs.add(db)
        seen_users.add(user)
    held: dict[str, list[int]] = {}
    for counters, gauge in result.live.items():
        entry = held.setdefault(counters.application, [0, 0])
        entry[0] += gauge.waiting
        entry[1] += gauge.held
    applications = []
    for name, c in registry.by("application").items():
        waiting, servers = held.get(name, [0, 0])
        seen_dbs, seen_users = where.get(name, (set(), set()))
        applications.append(_figures(c) | {
            "application": app_label(name), "clients_waiting": waiting,
            "server_connections": servers, "databases": sorted(seen_dbs),
            "users": sorted(seen_users)})
    users = [_figures(c) | {"user": name} for name, c in registry.by("user").items()]
    applications.sort(key=lambda a: (-a["clients"], a["application"]))
    shown = [a["application"] for a in applications[:HISTORY_APPLICATIONS]]
    return {
        "version": VERSION_STRING,
        "time": time.time(),
        "paused": app.paused,
        "clients": len(app.clients),
        "pools": sorted(pools, key=lambda p: (p["database"], p["user"])),
        "applications": applications,
        "users": sorted(users, key=lambda u: (-u["xact_time_seconds"], u["user"])),
        "averages": registry.averages_of(""),
        "databases": databases,
        "failures": _failures(app),
        "fleet": _fleet(app),
        "history": app.metrics.history.to_json(shown),
    }


_FLEET_KEYS = ("database", "instance", "demand", "share", "granted", "live",
               "heartbeat_age", "budget")


def _fleet(app: Application) -> list[dict[str, Any]]:
    """SHOW FLEET's rows, this member's first in each database (``self``)."""
    fleet = app.fleet
    if fleet is None:
        return []
    out = []
    for name in sorted(fleet.databases):
        for i, row in enumerate(fleet.databases[name].rows()):
            out.append(dict(zip(_FLEET_KEYS, row, strict=True)) | {"self": i == 0})
    return out


def _failures(app: Application) -> dict[str, int]:
    events = app.metrics.events
    return {"auth": sum(events.auth_failures.values()),
            "no_such_user": events.auth_failures["no_such_user"],
            "refusals": sum(events.refusals.values()),
            "server_connect": sum(events.server_connect_failures.values()),
            "server_login": sum(events.server_login_failures.values()),
            "query_wait_timeouts": sum(events.wait_timeouts.values())}


def _figures(c: Counters) -> dict[str, Any]:
    return {
        "clients": c.clients, "clients_peak": c.clients_peak,
        "transactions": c.xact_count, "queries": c.query_count,
        "bytes_received": c.bytes_in, "bytes_sent": c.bytes_out,
        "wait_seconds": round(c.wait_time, 6), "wait_max_seconds": round(c.wait_max, 6),
        "xact_time_seconds": round(c.xact_time, 6), "query_time_seconds": round(c.query_time, 6),
    }
