"""Row builders for every SHOW: PgBouncer's columns filled from pgusher's own state.

Each builder returns ``(columns, rows)`` with every value already text (or None for NULL).
Where a PgBouncer column has no counterpart here (cancel-request lists, TLS, prepared
statement statistics, DNS cache, slab free lists), it holds PgBouncer's neutral value - 0, an
empty string or NULL - as docs/CONSOLE.md lists.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import VERSION_STRING
from ..config import SETTINGS_TABLE
from ..metrics.counters import Counters
from ..metrics.registry import AVERAGE_NAMES
from ..metrics.snapshot import Scan, scan
from ..net.client_conn import ClientConn
from ..net.server_conn import ServerConn
from ..net.tls import describe
from ..pooling.pool import Pool
from ..pooling.states import AUTH, LOGIN_WAIT, READY, STARTUP
from . import columns as c

if TYPE_CHECKING:
    from ..app import Application, DbTarget

Row = list[str | None]
Result = tuple[c.Columns, list[Row]]
CONSOLE_DB = "pgbouncer"


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value))
    return str(value)


def usec(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _row(values: Iterable[Any]) -> Row:
    return [text(v) for v in values]


# ---------------------------------------------------------------------- statistics


def _db_counters(app: Application) -> dict[str, Counters]:
    per_db = app.metrics.registry.by("database")
    for pool in app.pools.values():
        per_db.setdefault(pool.db_name, Counters(pool.db_name))
    per_db.setdefault(CONSOLE_DB, Counters(CONSOLE_DB))
    return dict(sorted(per_db.items()))


def _totals(x: Counters) -> list[int]:
    return [x.assign_count, x.xact_count, x.query_count, x.bytes_in, x.bytes_out,
            usec(x.xact_time), usec(x.query_time), usec(x.wait_time), 0, 0, 0, x.login_count]


def _avgs(app: Application, database: str) -> list[int]:
    found = app.metrics.registry.averages_of(database)
    return [found[name] for name in AVERAGE_NAMES]


def show_stats(app: Application) -> Result:
    rows = [_row([name, *_totals(x), *_avgs(app, name)])
            for name, x in _db_counters(app).items()]
    return c.STATS, rows


def show_stats_totals(app: Application) -> Result:
    return c.STATS_TOTALS, [_row([n, *_totals(x)]) for n, x in _db_counters(app).items()]


def show_stats_averages(app: Application) -> Result:
    return c.STATS_AVERAGES, [_row([n, *_avgs(app, n)]) for n in _db_counters(app)]


def show_totals(app: Application) -> Result:
    total = _totals(app.metrics.registry.total())
    avg = _avgs(app, "")
    names = ["server_assignment_count", "xact_count", "query_count", "client_bytes",
             "server_bytes", "xact_time", "query_time", "wait_time", "ps_client_parse_count",
             "ps_server_parse_count", "ps_bind_count", "client_connect_count"]
    rows = [_row([f"total_{n}", v]) for n, v in zip(names, total, strict=True)]
    rows += [_row([f"avg_{n}", v]) for n, v in zip(names, avg, strict=True)]
    return c.TOTALS, rows


# ---------------------------------------------------------------------- pools and databases


def _balance(target: DbTarget) -> str | None:
    if len(target.hosts) < 2:
        return None
    return target.entry.load_balance_hosts or "round-robin"


def show_pools(app: Application) -> Result:
    result = scan(app)
    rows: list[Row] = []
    console = len(app.console.sessions)
    rows.append(_row([CONSOLE_DB, CONSOLE_DB, console, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                      "statement", None]))
    for pool, f in sorted(result.pools.items(), key=lambda i: (i[0].db_name, i[0].user)):
        wait_us = usec(f.maxwait)
        rows.append(_row([pool.db_name, pool.user, f.cl_active, f.cl_waiting, 0, 0,
                          f.sv_active, 0, 0, f.sv_idle, f.sv_used, f.sv_tested, f.sv_login,
                          wait_us // 1_000_000, wait_us % 1_000_000, pool.mode,
                          _balance(pool.target)]))
    rows.sort(key=lambda r: (r[0] or "", r[1] or ""))
    return c.POOLS, rows


def database_names(app: Application) -> list[str]:
    names = {n for n in app.config.databases if n != "*"} | set(app.targets)
    return sorted(names)


def show_databases(app: Application) -> Result:
    s = app.config.settings
    rows: list[Row] = []
    for name in database_names(app):
        target = app.find_target(name)
        if target is None:
            continue
        entry = target.entry
        host = entry.host
        rows.append(_row([
            name, host, target.port, target.dbname, target.user,
            entry.pool_size if entry.pool_size is not None else s.default_pool_size,
            entry.min_pool_size if entry.min_pool_size is not None else s.min_pool_size,
            (entry.reserve_pool_size if entry.reserve_pool_size is not None
             else s.reserve_pool_size),
            int(target.server_lifetime), entry.pool_mode, _balance(target),
            app.effective_max_db_connections(target), app.db_server_count(name),
            app.layered("", target, "", "max_db_client_connections",
                         "max_db_client_connections"),
            app.client_counts.db.get(name, 0),
            name in app.paused_dbs or app.paused, name in app.disabled_dbs]))
    rows.append(_row([CONSOLE_DB, None, s.listen_port, CONSOLE_DB, CONSOLE_DB, 2, 0, 0,
                      int(s.server_lifetime), "statement", None, 0, 0,
                      s.max_db_client_connections, app.client_counts.db.get(CONSOLE_DB, 0),
                      0, 0]))
    rows.sort(key=lambda r: r[0] or "")
    return c.DATABASES, rows


def user_names(app: Application) -> list[str]:
    names = set(app.config.users) | set(app.userlist) | set(app.client_counts.user)
    names |= {p.user for p in app.pools.values()}
    names.add(CONSOLE_DB)
    return sorted(names)


def show_users(app: Application) -> Result:
    rows: list[Row] = []
    for name in user_names(app):
        entry = app.config.users.get(name)
        pool_size = "" if entry is None or entry.pool_size is None else str(entry.pool_size)
        reserve = ("" if entry is None or entry.reserve_pool_size is None
                   else str(entry.reserve_pool_size))
        mode = entry.pool_mode if entry is not None else None
        rows.append(_row([
            name, pool_size, reserve, mode, app.effective_max_user_connections(name),
            app.user_server_count(name),
            app.layered(name, None, "max_user_client_connections", "",
                         "max_user_client_connections"),
            app.client_counts.user.get(name, 0)]))
    return c.USERS, rows


# ---------------------------------------------------------------------- sockets


def _wall(app: Application, monotonic: float) -> str:
    """PgBouncer's time text: ``2026-12-01 21:13:54 UTC`` (it sends these as text)."""
    stamp = time.time() - (app.loop.time() - monotonic)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def _tls(value: str) -> str:
    """The tls column: empty without TLS, else version/cipher as the login line logs it."""
    return "" if value == "no" else value


def _split_addr(addr: str, listen_port: int) -> tuple[str, int, int]:
    """(address, port, pid) from a connection's printable address."""
    if addr.startswith("unix"):
        pid = 0
        if addr.startswith("unix(") and ")" in addr:
            digits = addr[5:addr.index(")")]
            pid = int(digits) if digits.isdigit() else 0
        return "unix", listen_port, pid
    host, _, port = addr.rpartition(":")
    return host or addr, int(port) if port.isdigit() else 0, 0


def _local(transport: Any, listen_port: int) -> tuple[str, int]:
    if transport is None:
        return "", 0
    name = transport.get_extra_info("sockname")
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return "unix", listen_port


def _send_avail(transport: Any) -> int:
    if transport is None or transport.is_closing():
        return 0
    return int(transport.get_write_buffer_size())


SocketRow = tuple[str, Row]  # (sort key / state, row)


def _client_row(app: Application, client: ClientConn, state: str, debug: bool) -> Row:
    port_no = app.config.settings.listen_port
    addr, port, pid = _split_addr(client.addr, port_no)
    local_addr, local_port = _local(client.transport, port_no)
    now = app.loop.time()
    wait = now - client.wait_started if client.waiting else 0.0
    wait_us = usec(wait)
    server = client.server
    values: list[Any] = [
        "C", client.user, client.db_name, "none",
        state, addr, port, local_addr, local_port,
        _wall(app, client.connected_at), _wall(app, client.state_since),
        wait_us // 1_000_000, wait_us % 1_000_000, 0,
        f"0x{id(client):x}", f"0x{id(server):x}" if server is not None else "", pid,
        _tls(client.tls), client.params.get("application_name", ""), len(client.statements),
        app.metrics.registry.id_of(client)]
    if debug:
        values += [0, 0, 0, 0, 0, sum(map(len, client.pending)), _send_avail(client.transport)]
    return _row(values)


def _server_row(app: Application, server: ServerConn, state: str, debug: bool) -> Row:
    port_no = app.config.settings.listen_port
    if server.addr.startswith("unix:"):
        addr, port = "unix", server.pool.target.port
    else:
        host, _, p = server.addr.rpartition(":")
        addr, port = host, int(p) if p.isdigit() else 0
    if server.local_addr and server.local_addr != "unix":
        lhost, _, lport = server.local_addr.rpartition(":")
        local_addr, local_port = lhost, int(lport) if lport.isdigit() else 0
    else:
        local_addr, local_port = "unix", port_no
    client = server.client
    link = server.link
    values: list[Any] = [
        "S", server.pool.user, server.pool.db_name, "none", state, addr, port,
        local_addr, local_port, _wall(app, server.created), _wall(app, server.idle_since),
        0, 0, server.dirty,
        f"0x{id(server):x}", f"0x{id(client):x}" if client is not None else "", server.pid,
        _tls(describe(server.transport)) if server.transport is not None else "",
        client.params.get("application_name", "") if client is not None else "",
        len(link.statements) if link is not None else 0, app.metrics.registry.id_of(server)]
    if debug:
        values += [0, 0, 0, 0, 0, 0, _send_avail(server.transport)]
    return _row(values)


def _client_state(client: ClientConn) -> str:
    if client.waiting or client.state == LOGIN_WAIT:
        return "waiting"
    return "active" if client.server is not None else "idle"


def _clients(app: Application) -> Iterator[ClientConn]:
    ordered = sorted(app.clients, key=lambda cl: cl.connected_at)
    return (cl for cl in ordered if not cl.closed)


def show_clients(app: Application) -> Result:
    rows = [_client_row(app, cl, _client_state(cl), False) for cl in _clients(app)
            if cl.state in (READY, LOGIN_WAIT)]
    rows += [session.client_row() for session in app.console.sessions]
    return c.CLIENTS, rows


def _servers(app: Application) -> Iterator[tuple[ServerConn, str]]:
    pools = sorted(app.pools.values(), key=lambda p: (p.db_name, p.user))
    for pool in pools:
        delay = pool.check_delay
        for server in sorted(pool.active, key=lambda s: s.created):
            yield server, "active"
        for server in sorted(pool.tested, key=lambda s: s.created):
            yield server, "tested"
        for server in pool.idle:
            used = delay is not None and app.now - server.idle_since >= delay
            yield server, "used" if used else "idle"


def show_servers(app: Application) -> Result:
    return c.SERVERS, [_server_row(app, s, state, False) for s, state in _servers(app)]


def show_sockets(app: Application, active_only: bool = False) -> Result:
    rows: list[Row] = []
    for cl in _clients(app):
        if cl.state == READY:
            state = "cl_waiting" if cl.waiting else "cl_active"
        elif cl.state in (STARTUP, AUTH):
            state = "cl_login"
        elif cl.state == LOGIN_WAIT:
            state = "cl_waiting"
        else:
            continue
        if active_only and not (cl.pending or _send_avail(cl.transport)):
            continue
        rows.append(_client_row(app, cl, state, True))
    rows += [session.client_row(debug=True) for session in app.console.sessions]
    for server, state in _servers(app):
        name = {"active": "sv_active", "tested": "sv_tested", "used": "sv_used",
                "idle": "sv_idle"}[state]
        if active_only and not _send_avail(server.transport):
            continue
        rows.append(_server_row(app, server, name, True))
    return c.SOCKETS, rows


# ---------------------------------------------------------------------- lists, memory, state


def _all_servers(app: Application) -> list[ServerConn]:
    return [s for p in app.pools.values() for s in (*p.in_use(), *p.idle)]


def show_lists(app: Application) -> Result:
    login = sum(1 for cl in app.clients if cl.state in (STARTUP, AUTH, LOGIN_WAIT))
    servers = len(_all_servers(app)) + sum(p.connecting for p in app.pools.values())
    values = {
        "databases": len(database_names(app)) + 1,
        "users": len(user_names(app)),
        "peers": len(app.config.peers),
        "pools": len(app.pools) + 1,
        "peer_pools": 0,
        "free_clients": 0,
        "used_clients": len(app.clients) + len(app.console.sessions),
        "login_clients": login,
        "free_servers": 0,
        "used_servers": servers,
        "dns_names": 0, "dns_zones": 0, "dns_queries": 0, "dns_pending": 0,
    }
    return c.LISTS, [_row([name, values[name]]) for name in c.LIST_NAMES]


def show_mem(app: Application) -> Result:
    kinds: list[tuple[str, type, int]] = [
        ("client_conn", ClientConn, len(app.clients)),
        ("server_conn", ServerConn, len(_all_servers(app))),
        ("pool", Pool, len(app.pools)),
        ("stats", Counters, len(app.metrics.registry.counters)),
        ("console", app.console.session_type, len(app.console.sessions)),
    ]
    rows = []
    for name, cls, used in kinds:
        size = int(getattr(cls, "__basicsize__", 0)) or sys.getsizeof(object())
        rows.append(_row([name, size, used, 0, size * used]))
    return c.MEM, rows


def show_state(app: Application) -> Result:
    suspended = app.console.suspended
    paused = app.paused and not suspended
    active = not (app.paused or suspended)
    rows = [_row(["active", "yes" if active else "no"]),
            _row(["paused", "yes" if paused else "no"]),
            _row(["suspended", "yes" if suspended else "no"])]
    return c.STATE, rows


def show_config(app: Application) -> Result:
    s = app.config.settings
    rows = [_row([name, spec.format(getattr(s, name)), spec.default_text,
                  "yes" if spec.reloadable else "no"])
            for name, spec in sorted(SETTINGS_TABLE.items())]
    return c.CONFIG, rows


def _fd(transport: Any) -> int:
    if transport is None:
        return 0
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else 0
    except (OSError, ValueError):
        return 0


def show_fds(app: Application) -> Result:
    rows: list[Row] = []
    port_no = app.config.settings.listen_port
    for server in getattr(app, "_servers", []):
        for sock in server.sockets or ():
            name = sock.getsockname()
            addr, port = (str(name[0]), int(name[1])) if isinstance(name, tuple) else (
                "unix", port_no)
            rows.append(_row([sock.fileno(), "pooler", None, None, addr, port, 0, 0,
                              None, None, None, None, None, None, None]))
    for cl in _clients(app):
        addr, port, _pid = _split_addr(cl.addr, port_no)
        p = cl.params
        link = _fd(cl.server.transport) if cl.server is not None else 0
        rows.append(_row([_fd(cl.transport), "client", cl.user, cl.db_name, addr, port,
                          ((cl.cancel_pid & 0xFFFFFFFF) << 32) | (cl.cancel_key & 0xFFFFFFFF),
                          link, p.get("client_encoding"), p.get("standard_conforming_strings"),
                          p.get("DateStyle"), p.get("TimeZone"), None, None, None]))
    for server, _state in _servers(app):
        host, _, sport = server.addr.rpartition(":")
        t = server.tracked
        link = _fd(server.client.transport) if server.client is not None else 0
        rows.append(_row([_fd(server.transport), "server", server.pool.user,
                          server.pool.db_name, host, int(sport) if sport.isdigit() else 0,
                          ((server.pid & 0xFFFFFFFF) << 32) | (server.key & 0xFFFFFFFF), link,
                          t.get("client_encoding"), t.get("standard_conforming_strings"),
                          t.get("DateStyle"), t.get("TimeZone"), None, None, None]))
    return c.FDS, rows


def show_peers(app: Application) -> Result:
    s = app.config.settings
    rows = [_row([pid, peer.host, peer.port,
                  peer.pool_size if peer.pool_size is not None else s.default_pool_size])
            for pid, peer in sorted(app.config.peers.items())]
    return c.PEERS, rows


def show_peer_pools(app: Application) -> Result:
    return c.PEER_POOLS, []


def show_dns_hosts(app: Application) -> Result:
    return c.DNS_HOSTS, []


def show_dns_zones(app: Application) -> Result:
    return c.DNS_ZONES, []


def show_version(app: Application) -> Result:
    return c.VERSION, [[VERSION_STRING]]


# ---------------------------------------------------------------------- who uses the database


def _load_rows(app: Application, kind: str, result: Scan) -> list[Row]:
    live: dict[str, list[int]] = {}
    attr = "application" if kind == "application" else "user"
    for counters, gauge in result.live.items():
        entry = live.setdefault(getattr(counters, attr), [0, 0])
        entry[0] += gauge.waiting
        entry[1] += gauge.held
    items = sorted(app.metrics.registry.by(kind).items(),
                   key=lambda i: (-i[1].xact_time, -i[1].clients, i[0]))
    rows = []
    for name, x in items:
        waiting, held = live.get(name, [0, 0])
        rows.append(_row([name, x.clients, waiting, x.clients_peak, held, x.xact_count,
                          x.query_count, x.bytes_in, x.bytes_out, usec(x.wait_time),
                          usec(x.wait_max), usec(x.xact_time), usec(x.query_time)]))
    return rows


def show_fleet(app: Application) -> Result:
    fleet = app.fleet
    if fleet is None:
        return c.FLEET, []
    return c.FLEET, [_row(r) for name in sorted(fleet.databases)
                     for r in fleet.databases[name].rows()]


def show_applications(app: Application) -> Result:
    return c.APPLICATIONS, _load_rows(app, "application", scan(app))


def show_user_stats(app: Application) -> Result:
    return c.USER_STATS, _load_rows(app, "user", scan(app))


SHOWS: dict[str, Callable[[Application], Result]] = {
    "stats": show_stats,
    "stats_totals": show_stats_totals,
    "stats_averages": show_stats_averages,
    "totals": show_totals,
    "pools": show_pools,
    "databases": show_databases,
    "users": show_users,
    "clients": show_clients,
    "servers": show_servers,
    "sockets": show_sockets,
    "active_sockets": lambda app: show_sockets(app, True),
    "lists": show_lists,
    "mem": show_mem,
    "state": show_state,
    "config": show_config,
    "fds": show_fds,
    "peers": show_peers,
    "peer_pools": show_peer_pools,
    "dns_hosts": show_dns_hosts,
    "dns_zones": show_dns_zones,
    "version": show_version,
    "applications": show_applications,
    "fleet": show_fleet,
    "user_stats": show_user_stats,
    "users_stats": show_user_stats,
}
