"""Commands that change the pooler: PAUSE, RESUME, KILL, SUSPEND, RELOAD, SET and the rest.

Strategy: every command acts on the Application's own structures (pools, clients, the pause
flags the pools read) and either answers at once or returns a *wait condition*: a function
the console polls until it holds (PAUSE waits for the servers to be released and closed,
SUSPEND for client buffers to drain, WAIT_CLOSE for servers marked for closing). Polling a
few times a second while an operator waits costs nothing on the data path, where a callback
hook would cost on every release.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import SETTINGS_TABLE, apply_setting
from ..errors import ClientFatal, ConfigError
from ..log import log
from ..net.flow import SUSPEND
from .parse import ConsoleError

if TYPE_CHECKING:
    from ..app import Application
    from ..net.client_conn import ClientConn
    from ..pooling.pool import Pool

CONSOLE_DBS = ("pgbouncer", "pgusher")

Wait = Callable[[], bool]

# Parameters clients like to SET on any connection; the console acknowledges and ignores them.
FAKE_PARAMS = {"client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
               "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT"}


def is_console_db(app: Application, name: str) -> bool:
    return name == "pgbouncer" or (name == "pgusher" and name not in app.config.databases)


def _pools_of(app: Application, db: str | None) -> list[Pool]:
    return [p for p in app.pools.values() if db is None or p.db_name == db]


def _database(app: Application, arg: str, verb: str) -> str:
    """Validate a database argument: known, and not the console itself."""
    if is_console_db(app, arg):
        raise ConsoleError(f"cannot {verb} admin db: {arg}")
    if app.find_target(arg) is None:
        raise ConsoleError(f"no such database: {arg}")
    return arg


def _close_idle(pools: list[Pool], reason: str) -> None:
    for pool in pools:
        for server in list(pool.idle):
            server.close(reason)


def _servers_gone(app: Application, db: str | None) -> Wait:
    def done() -> bool:
        pools = _pools_of(app, db)
        _close_idle([p for p in pools if p.paused], "pause")
        return not any(p.in_use() or p.login for p in pools)

    return done


# ---------------------------------------------------------------------- pause and resume


def pause(app: Application, arg: str) -> Wait | None:
    if app.paused or app.console.suspended:
        raise ConsoleError("already suspended/paused")
    if not arg:
        log.info("PAUSE command issued")
        app.paused = True
        app.sync_pause()
        return _servers_gone(app, None)
    db = _database(app, arg, "pause")
    log.info("PAUSE '%s' command issued", db)
    app.paused_dbs.add(db)
    app.sync_pause()
    return _servers_gone(app, db)


def resume(app: Application, arg: str) -> None:
    if app.shutting_down:
        raise ConsoleError("pooler is shutting down")
    if not arg:
        log.info("RESUME command issued")
        if not (app.paused or app.console.suspended or app.paused_dbs):
            raise ConsoleError("pooler is not paused/suspended")
        full_resume(app)
        return
    log.info("RESUME '%s' command issued", arg)
    if app.find_target(arg) is None:
        raise ConsoleError(f"no such database: {arg}")
    if arg not in app.paused_dbs:
        raise ConsoleError(f"database {arg} is not paused")
    app.paused_dbs.discard(arg)
    app.sync_pause()
    for pool in _pools_of(app, arg):
        pool.resume()


def full_resume(app: Application) -> None:
    """Undo PAUSE, KILL and SUSPEND everywhere; queued clients get servers again."""
    console = app.console
    if console.suspended:
        console.suspended = False
        for client in console.suspended_clients:
            if not client.closed:
                client.flow.resume(SUSPEND)
        console.suspended_clients = []
    app.paused = False
    app.paused_dbs.clear()
    app.sync_pause()
    for pool in list(app.pools.values()):
        pool.resume()


def suspend(app: Application) -> Wait:
    if app.paused or app.console.suspended:
        raise ConsoleError("already suspended/paused")
    if app.paused_dbs:
        raise ConsoleError("cannot suspend with paused databases")
    log.info("SUSPEND command issued")
    console = app.console
    console.suspended = True
    app.paused = True
    app.sync_pause()
    paused: list[ClientConn] = []
    for client in app.clients:
        if not client.closed:
            client.flow.pause(SUSPEND)
            paused.append(client)
    console.suspended_clients = paused

    def flushed() -> bool:
        return all(c.closed or c.transport.get_write_buffer_size() == 0 for c in paused)

    return flushed


# ---------------------------------------------------------------------- kill, disable, reconnect


def kill(app: Application, arg: str) -> None:
    if app.paused or app.console.suspended:
        raise ConsoleError("already suspended/paused")
    if arg:
        db: str | None = _database(app, arg, "kill")
        log.info("KILL '%s' command issued", db)
        assert db is not None
        app.paused_dbs.add(db)
    else:
        db = None
        log.info("KILL command issued")
        app.paused_dbs.update(p.db_name for p in app.pools.values())
    app.sync_pause()
    pools = _pools_of(app, db)
    for client in [c for c in app.clients if c.pool in pools]:
        client.fatal(ClientFatal("database removed"), log_as="database removed")
    for pool in pools:
        for server in [*pool.in_use(), *pool.idle]:
            server.close("database removed")


def kill_client(app: Application, arg: str) -> None:
    if not arg.isdigit():
        raise ConsoleError("invalid client pointer supplied")
    wanted = int(arg)
    registry = app.metrics.registry
    for client in list(app.clients):
        if registry.ids.get(client) == wanted and not client.closed:
            client.fatal(ClientFatal("admin forced disconnect"),
                         log_as="admin forced disconnect")
            return
    for session in list(app.console.sessions):
        if registry.ids.get(session) == wanted:
            session.fatal("admin forced disconnect")
            return
    raise ConsoleError("client not found")


def disable(app: Application, arg: str, disabled: bool) -> None:
    verb = "disable" if disabled else "enable"
    if not arg:
        raise ConsoleError("a database is required")
    log.info("%s '%s' command issued", verb.upper(), arg)
    db = _database(app, arg, verb)
    if disabled:
        app.disabled_dbs.add(db)
    else:
        app.disabled_dbs.discard(db)


def reconnect(app: Application, arg: str) -> None:
    db = _database(app, arg, "reconnect") if arg else None
    log.info("RECONNECT%s command issued", f" '{db}'" if db else "")
    pools = _pools_of(app, db)
    for pool in pools:
        for server in pool.in_use():
            server.dirty = True
    _close_idle(pools, "database configuration changed")
    for pool in pools:
        if pool.waiting:
            pool.grow()


def wait_close(app: Application, arg: str) -> Wait | None:
    db = _database(app, arg, "wait in") if arg else None
    log.info("WAIT_CLOSE%s command issued", f" '{db}'" if db else "")

    def done() -> bool:
        return not any(s.dirty for p in _pools_of(app, db) for s in (*p.in_use(), *p.idle))

    return None if done() else done


# ---------------------------------------------------------------------- configuration


def reload(app: Application) -> None:
    log.info("RELOAD command issued")
    problems = app.reload("RELOAD command issued, re-reading config")
    if problems:
        # PgBouncer's words first (tools match them), then what is wrong.
        raise ConsoleError("RELOAD failed, see logs for additional details: "
                           + "; ".join(problems), sqlstate="F0000")
    for pool in list(app.pools.values()):
        if pool.waiting and not pool.paused:
            pool.grow()


def set_setting(app: Application, key: str, value: str) -> tuple[str, str]:
    """Apply ``SET key = value``; returns the command tag, as PgBouncer's ``SET key=value``,
    and a notice for the client ("" for none).

    A TLS setting rebuilds the TLS contexts at once. As in PgBouncer the value is kept even
    when they cannot be built (a key set before its certificate): the old contexts stay in
    force and the client is told."""
    name = key.strip().lower()
    spec = SETTINGS_TABLE.get(name)
    if spec is not None and not spec.reloadable:
        raise ConsoleError("SET failed", detail=f"{name} cannot be changed while running")
    try:
        new = apply_setting(app.config.settings, name, value)
    except ConfigError as exc:
        raise ConsoleError("SET failed", detail=exc.message) from None
    log.info("SET %s = %s", name, value)
    app.apply_settings(new)
    notice = ""
    if ("_tls_" in name or "_tls13_" in name) and not app.rebuild_tls():
        notice = "TLS settings could not be applied, still using old configuration"
    return f"SET {key}={value}", notice


def shutdown(app: Application, arg: str) -> bool:
    """SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]; True when the caller gets a reply."""
    mode = arg.upper()
    if app.worker is not None:
        # The supervisor passes the matching signal to every worker, this one included.
        sig = {"WAIT_FOR_SERVERS": signal.SIGINT, "WAIT_FOR_CLIENTS": signal.SIGTERM}.get(
            mode, signal.SIGQUIT)
        log.info("SHUTDOWN%s command issued, telling the supervisor", f" {mode}" if mode else "")
        os.kill(app.worker.supervisor_pid, sig)
        return bool(mode)
    if mode == "WAIT_FOR_SERVERS":
        log.info("SHUTDOWN WAIT_FOR_SERVERS command issued")
        app.begin_shutdown("servers")
        return True
    if mode == "WAIT_FOR_CLIENTS":
        log.info("SHUTDOWN WAIT_FOR_CLIENTS command issued")
        app.begin_shutdown("clients")
        return True
    log.info("SHUTDOWN command issued")
    app.stop()
    return False
