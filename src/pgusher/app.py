"""The Application: one event loop, its listeners, pools, janitor, reload and shutdown.

Strategy: everything lives on one loop (uvloop when importable). Listeners create a
:class:`ClientConn` per connection; pools are created on first use per (database, login user);
a janitor ticks once a second for the timeouts, the reserve pool, min_pool_size and the
shutdown modes. Configuration is loaded in two phases (parse and validate, then apply), so a
RELOAD with a bad file changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import VERSION_STRING
from . import log as logmod
from .admin import cluster
from .admin.session import Console
from .auth.passthrough import ScramKeyStore
from .auth.userlist import load_userlist
from .config import SETTINGS_TABLE, Config, DatabaseEntry, Settings, load_config
from .errors import ClientFatal, ConfigError, PgusherError, listen_error
from .log import log
from .metrics.counters import CLIENT_LIMITS
from .metrics.service import Metrics
from .net import cancel as cancel_mod
from .net.auth_lookup import LookupService
from .net.cancel import send_cancel
from .net.client_auth import FailedLogins, load_security
from .net.client_conn import ClientConn
from .net.fleet import Fleet
from .net.listener import Listeners
from .net.server_conn import ServerConn, new_server
from .net.sockopts import unix_socket_in_use
from .net.tls import TlsContexts, build_contexts
from .pooling import janitor
from .pooling.client_counts import ClientCounts
from .pooling.counts import ServerCounts
from .pooling.pool import Pool
from .workers import WorkerInfo, notify
from .workers.balance import balance
from .workers.shared import SharedCounts

# The parameters PostgreSQL reports that a client may change and the pooler must carry from
# server to server, by lower-case name -> the spelling PostgreSQL reports.
CLOCK_STEP = 0.1

BASE_TRACKED = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
                "standard_conforming_strings", "application_name")


def check_supported(config: Config) -> None:
    """Refuse settings this version cannot honour rather than quietly do less.

    A pooler that silently skipped TLS the operator asked for, or let in clients an HBA file
    was meant to keep out, would be worse than one that does not start.
    """
    s = config.settings
    problems = []
    if s.auth_type == "pam":
        problems.append(f"auth_type = {s.auth_type}")
    if s.disable_pqexec:
        problems.append("disable_pqexec = 1")
    if problems:
        raise ConfigError(f"{config.path}: not supported by this pgusher version: "
                          + ", ".join(problems))


@dataclass(eq=False)
class DbTarget:
    """A [databases] entry resolved for use (the ``*`` entry yields one per database name)."""

    name: str
    entry: DatabaseEntry
    dbname: str
    hosts: list[str | None]
    port: int
    user: str | None
    password: str | None
    connect_query: str | None
    server_lifetime: float
    startup_params: dict[str, str] = field(default_factory=dict)
    _next: int = 0

    def next_address(self) -> tuple[str | None, int]:
        host = self.hosts[self._next % len(self.hosts)]
        self._next += 1
        return host, self.port

    def same_server(self, other: DbTarget) -> bool:
        return (self.dbname, self.hosts, self.port, self.user, self.password,
                self.startup_params, self.connect_query) == (
            other.dbname, other.hosts, other.port, other.user, other.password,
            other.startup_params, other.connect_query)


class SiblingConn(ClientConn):
    """A connection on a worker's private socket (see ClientLogin.internal)."""

    __slots__ = ()
    internal = True


class Application:
    def __init__(self, config_path: str, *, verbose: int = 0, quiet: bool = False) -> None:
        self.config_path = os.path.abspath(config_path)
        self.verbose = verbose
        self.quiet = quiet
        self.config: Config = load_config(self.config_path)
        check_supported(self.config)
        self.tls, self.hba = load_security(self.config)
        self.scram_keys = ScramKeyStore()
        self.failed_logins = FailedLogins()
        self.userlist: dict[str, str] = {}
        self._load_userlist(self.config)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.pools: dict[tuple[str, str], Pool] = {}
        self.server_counts = ServerCounts()  # servers per database and per user, for limits
        self.targets: dict[str, DbTarget] = {}
        self.clients: set[ClientConn] = set()
        self.cancel_keys: dict[tuple[int, int], ClientConn] = {}
        self.tracked_params: dict[str, str] = {}
        self.limits_shared = False
        # A clock refreshed every CLOCK_STEP seconds, read on the data path instead of
        # loop.time(); timeouts and ages need no finer precision.
        self.now = 0.0
        self.client_counts = ClientCounts(self)  # clients per database and per user
        self.paused = False
        # Console state: databases paused (PAUSE db, KILL db) or refusing logins (DISABLE db).
        self.paused_dbs: set[str] = set()
        self.disabled_dbs: set[str] = set()
        self.shutting_down = False
        self.shutdown_mode = ""
        self._sigterm_count = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []
        self._stop: asyncio.Event | None = None
        self._janitor: asyncio.Task[None] | None = None
        self.after_listen: Callable[[], None] | None = None
        # Set in a worker process when ``workers`` > 1 (see workers/__init__.py).
        self.worker: WorkerInfo | None = None
        self.shared: SharedCounts | None = None
        self.lookups = LookupService(self)
        self.listeners = Listeners(self)
        pgusher = self.config.pgusher
        self.fleet = (Fleet(self) if pgusher.fleet and pgusher.fleet_max_db_connections > 0
                      else None)
        # /metrics and /api/snapshot: this worker's, or every worker's folded together.
        self.metrics = Metrics(self, cluster.metrics_text, cluster.snapshot)
        self.console = Console(self)
        self._apply_derived()

    # ------------------------------------------------------------------ config

    def setup_logging(self) -> None:
        s = self.config.settings
        logmod.setup(verbose=max(self.verbose, s.verbose), quiet=self.quiet, logfile=s.logfile,
                     syslog=bool(s.syslog), syslog_ident=s.syslog_ident,
                     syslog_facility=s.syslog_facility)

    def _load_userlist(self, config: Config) -> None:
        path = config.settings.auth_file
        if not path:
            self.userlist = {}
            return
        users, warnings = load_userlist(path)
        for warning in warnings:
            log.warning("%s", warning)
        self.userlist = users

    def _apply_derived(self) -> None:
        self._apply_tracked()
        self._apply_limits_shared()

    def _apply_tracked(self) -> None:
        names = list(BASE_TRACKED) + list(self.config.settings.track_extra_parameters)
        self.tracked_params = {n.lower(): n for n in names}

    def reload(self, why: str = "got SIGHUP, re-reading config") -> list[str]:
        """Re-read the configuration; on error keep the old one. Returns problems found."""
        log.info("%s", why)
        speaks = self.worker is None
        if speaks:
            notify.reloading()
        try:
            return self._reload()
        finally:
            if speaks:
                notify.notify("READY=1")

    def _watchdog(self, interval: float) -> None:
        notify.notify("WATCHDOG=1")
        self.loop.call_later(interval, self._watchdog, interval)

    def _reload(self) -> list[str]:
        try:
            new = load_config(self.config_path)
            check_supported(new)
            tls, hba = load_security(new)
        except ConfigError as exc:
            log.error("config reload failed: %s", exc.message)
            return [exc.message]
        for warning in new.warnings:
            log.warning("%s", warning)
        changed = self.config.reload_changes(new)
        fixed = [k for k in changed if k in SETTINGS_TABLE and not SETTINGS_TABLE[k].reloadable]
        for key in fixed:
            log.warning("setting %s cannot be changed by reload; restart to apply it", key)
        self.config = new
        self.hba = hba  # new HBA rules: new connections only
        self.use_tls(tls)
        self.lookups.reset()
        try:
            self._load_userlist(new)
        except ConfigError as exc:
            log.error("could not reload auth_file: %s", exc.message)
        self._apply_derived()
        self.setup_logging()
        # Database entries whose server side changed: their servers are closed once free.
        for name, target in list(self.targets.items()):
            fresh = self._resolve_target(name)
            if fresh is None or not fresh.same_server(target):
                for pool in [p for p in self.pools.values() if p.target is target]:
                    for server in pool.in_use():
                        server.dirty = True
                    for server in list(pool.idle):
                        server.close("database configuration changed")
                    pool.welcome_params = None
                    if fresh is not None:
                        pool.target = fresh
                if fresh is None:
                    del self.targets[name]
                else:
                    self.targets[name] = fresh
            else:
                target.entry = fresh.entry
                target.server_lifetime = fresh.server_lifetime
        for pool in self.pools.values():
            pool.refresh()
        return []

    def apply_settings(self, settings: Settings) -> None:
        """Put new [pgbouncer] values in force (the console's SET)."""
        self.config.settings = settings
        self._apply_derived()
        self.setup_logging()
        for pool in self.pools.values():
            pool.refresh()

    def rebuild_tls(self) -> bool:
        """The console changed a TLS setting: rebuild the contexts, as RELOAD does. False
        when they cannot be built (logged); the old ones then stay in force."""
        try:
            tls = build_contexts(self.config.settings)
        except ConfigError:
            return False
        self.use_tls(tls)
        return True

    def use_tls(self, tls: TlsContexts) -> None:
        """New TLS contexts for new connections. Servers connected under other server_tls_*
        settings are obsolete: idle ones close now, busy ones when their client is done
        (PgBouncer tags the pools dirty), so an old, maybe weaker, setup does not linger."""
        old, self.tls = self.tls, tls
        if old.server_key == tls.server_key:
            return
        for pool in self.pools.values():
            for server in [*pool.in_use(), *pool.login]:
                server.dirty = True
            for server in list(pool.idle):
                server.close("obsolete connection")
            pool.welcome_params = None
            # A login that failed under the old settings says nothing about the new ones:
            # the next client gets a fresh attempt rather than the cached failure.
            pool.forget_failure()

    def sync_pause(self) -> None:
        """Tell each pool whether it is paused (the whole pooler, or its database)."""
        for pool in self.pools.values():
            pool.paused = self.paused or pool.db_name in self.paused_dbs

    # ------------------------------------------------------------------ databases and pools

    def _resolve_target(self, name: str) -> DbTarget | None:
        entry = self.config.databases.get(name)
        if entry is None:
            entry = self.config.databases.get("*")
            if entry is None:
                return None
        dbname = entry.dbname or name
        hosts: list[str | None] = ([h.strip() or None for h in entry.host.split(",")]
                                   if entry.host else [None])
        startup: dict[str, str] = {}
        if entry.client_encoding:
            startup["client_encoding"] = entry.client_encoding
        if entry.datestyle:
            startup["DateStyle"] = entry.datestyle
        if entry.timezone:
            startup["TimeZone"] = entry.timezone
        if entry.application_name:
            startup["application_name"] = entry.application_name
        lifetime = entry.server_lifetime
        if not lifetime:  # 0 in [databases] means the global value, as in PgBouncer
            lifetime = self.config.settings.server_lifetime
        return DbTarget(name=name, entry=entry, dbname=dbname, hosts=hosts, port=entry.port,
                        user=entry.user, password=entry.password,
                        connect_query=entry.connect_query, server_lifetime=lifetime,
                        startup_params=startup)

    def find_target(self, name: str) -> DbTarget | None:
        target = self.targets.get(name)
        if target is None:
            target = self._resolve_target(name)
            if target is not None:
                self.targets[name] = target
        return target

    def new_server(self, pool: Pool) -> ServerConn:
        """A server connection for ``pool``, not yet connected (pools open them)."""
        return new_server(pool)

    def get_pool(self, db_name: str, client_user: str) -> Pool:
        target = self.find_target(db_name)
        if target is None:
            raise ClientFatal(f"no such database: {db_name}", sqlstate="3D000")
        user = target.user or client_user
        key = (db_name, user)
        pool = self.pools.get(key)
        if pool is None:
            if target.user and target.password:
                password: str | None = target.password
            else:
                password = self.userlist.get(user)
            pool = Pool(self, target, user, password, self.effective_pool_mode(target, user))
            self.pools[key] = pool
        return pool

    def layered(self, user: str, target: DbTarget | None, user_key: str, db_key: str,
                 global_key: str) -> Any:
        """PgBouncer's precedence: the [users] entry, then the [databases] entry, then global."""
        user_entry = self.config.users.get(user)
        if user_key and user_entry is not None:
            value = getattr(user_entry, user_key)
            if value is not None:
                return value
        if db_key and target is not None:
            value = getattr(target.entry, db_key)
            if value is not None:
                return value
        return getattr(self.config.settings, global_key)

    def effective_pool_mode(self, target: DbTarget, user: str) -> str:
        return str(self.layered(user, target, "pool_mode", "pool_mode", "pool_mode"))

    def effective_pool_size(self, pool: Pool) -> int:
        return int(self.layered(pool.user, pool.target, "pool_size", "pool_size",
                                 "default_pool_size"))

    def effective_reserve_size(self, pool: Pool) -> int:
        return int(self.layered(pool.user, pool.target, "reserve_pool_size",
                                 "reserve_pool_size", "reserve_pool_size"))

    def effective_min_pool_size(self, pool: Pool) -> int:
        size = int(self.layered(pool.user, pool.target, "", "min_pool_size", "min_pool_size"))
        if self.worker is not None and size:
            size = -(-size // self.worker.count)  # each worker keeps its share warm
        return size

    def effective_max_db_connections(self, target: DbTarget) -> int:
        return int(self.layered("", target, "", "max_db_connections", "max_db_connections"))

    def effective_max_user_connections(self, user: str) -> int:
        return int(self.layered(user, None, "max_user_connections", "",
                                 "max_user_connections"))

    def db_server_count(self, db_name: str) -> int:
        return self.server_counts.db(db_name)

    def user_server_count(self, user: str) -> int:
        return self.server_counts.user(user)

    def on_server_idle(self, pool: Pool) -> None:
        """A server went idle: another pool of the same database or user may be waiting."""
        if not self.limits_shared:
            return
        for other in self.pools.values():
            if other is not pool and other.waiting and (
                    other.db_name == pool.db_name or other.user == pool.user):
                surplus = len(pool.idle) > self.effective_min_pool_size(pool)
                if surplus and not other._may_open():
                    pool.idle[0].close("released for another pool")
                other.grow()

    def _apply_limits_shared(self) -> None:
        """Whether any limit spans pools (worked out once per configuration, not per release)."""
        c = self.config
        s = c.settings
        self.limits_shared = bool(
            s.max_db_connections or s.max_user_connections
            or any(e.max_db_connections for e in c.databases.values())
            or any(u.max_user_connections for u in c.users.values()))

    # ------------------------------------------------------------------ clients

    def client_count(self) -> int:
        return len(self.clients)

    def check_client_limits(self, client: ClientConn, target: DbTarget) -> None:
        """max_db_client_connections and max_user_client_connections, counted at login."""
        if target.name in self.disabled_dbs:
            raise ClientFatal(f"database does not allow connections: {target.name}",
                              sqlstate="57P03")
        db_limit = self.layered("", target, "", "max_db_client_connections",
                                "max_db_client_connections")
        user_limit = self.layered(client.user, None, "max_user_client_connections", "",
                                  "max_user_client_connections")
        try:
            self.client_counts.take(client, db_limit, user_limit)
        except ClientFatal as exc:
            # The limit is named in the message (pooling/client_counts.py).
            self.metrics.events.refused(next(
                (name for name in CLIENT_LIMITS[1:] if name in exc.message), CLIENT_LIMITS[0]))
            raise

    def client_connected(self, client: ClientConn) -> None:
        self.clients.add(client)
        # Ids come from one sequence for clients and servers, taken when the connection is
        # made (SHOW SOCKETS numbers them as PgBouncer does); logout gives them back.
        self.metrics.registry.id_of(client)

    def client_is_cancel(self, client: ClientConn) -> None:
        self.clients.discard(client)

    def client_closed(self, client: ClientConn) -> None:
        self.clients.discard(client)
        self.metrics.logout(client)
        self.client_counts.give(client)
        if client.cancel_pid or client.cancel_key:
            self.cancel_keys.pop((client.cancel_pid, client.cancel_key), None)

    def close_idle_servers(self, dbname: str, reason: str) -> int:
        """Close this process's server connections to the server-side database ``dbname``
        that no client has: idle, or running a reset or check; how many were closed."""
        closed = 0
        for pool in list(self.pools.values()):
            if pool.target.dbname == dbname:
                free = [*pool.idle, *(s for s in pool.tested if s.in_pooler_query())]
                for server in free:
                    server.close(reason)
                    closed += 1
        return closed

    def register_cancel_key(self, client: ClientConn, real_pid: int = 0) -> tuple[int, int]:
        """The key a client is told; ``real_pid``: its server's, to show instead of one of
        the pooler's own."""
        worker = self.worker.number if self.worker is not None else 0
        while True:
            pid, key = cancel_mod.make_key(self.config.settings.peer_id, worker, real_pid)
            if (pid, key) not in self.cancel_keys:
                self.cancel_keys[(pid, key)] = client
                return pid, key

    def new_cancel_key(self) -> tuple[int, int]:
        """A random key that names this process (see net/cancel.py for the layout)."""
        worker = self.worker.number if self.worker is not None else 0
        return cancel_mod.make_key(self.config.settings.peer_id, worker)

    def forward_cancel(self, pid: int, key: int, done: Callable[[], None], *,
                       internal: bool = False) -> None:
        """A CancelRequest: pass it to the peer or worker it names, or act on it here.

        ``done`` closes the connection the request came on: it runs only once the request has
        reached the server's postmaster or was dropped (see net/cancel.py).
        """
        if not internal:
            route = cancel_mod.route(self, pid, key)
            if route is not None:
                cancel_mod.forward(self, route, done)
                return
        if self.config.settings.peer_id:
            key |= cancel_mod.TTL_MASK  # as issued: forwarding peers count the hops down
        client = self.cancel_keys.get((pid, key))
        if client is None:
            if not self.console.cancel(pid, key):
                log.debug("cancel request for unknown key, ignored")
            done()
            return
        server = client.server
        if server is None or client.lease.outstanding == 0 or server.transport is None:
            log.debug("%s cancel request while nothing runs, ignored", client.prefix())
            done()
            return
        send_cancel(self, client, server, done)

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        if self.worker is not None:
            self.shared = self.worker.shared
            self.metrics.registry.number_ids(self.worker.number, self.worker.count)
        self._tick_clock()
        self._stop = asyncio.Event()
        # Signals before the sockets: a SIGHUP sent as soon as the port answers (a script
        # that waits for it, then reloads) must not find the default action (exit).
        self._install_signals()
        # The HTTP endpoint first: once clients can connect, /metrics and /ready answer too.
        await self.metrics.start()
        await self._listen()
        if self.after_listen is not None:
            self.after_listen()
        self._janitor = self.loop.create_task(self._janitor_loop())
        log.info("process up: %s, loop: %s", VERSION_STRING, type(self.loop).__module__)
        if self.worker is None:
            notify.notify("READY=1", "STATUS=accepting connections")
            interval = notify.watchdog_interval()
            if interval is not None:
                self._watchdog(interval)
        try:
            await self._stop.wait()
        finally:
            await self._cleanup()
        return 0

    async def _listen(self) -> None:
        s = self.config.settings
        loop = self.loop
        factory_tcp = lambda: ClientConn(self, False)  # noqa: E731
        factory_unix = lambda: ClientConn(self, True)  # noqa: E731
        worker = self.worker
        if worker is not None:
            # The supervisor bound the sockets; this worker serves its share of them.
            for sock in worker.listen:
                self._servers.append(await loop.create_server(
                    factory_tcp, sock=sock, backlog=s.listen_backlog))
            if worker.unix is not None:
                self._servers.append(await loop.create_unix_server(
                    factory_unix, sock=worker.unix, backlog=s.listen_backlog))
            if worker.internal is not None:
                self._servers.append(await loop.create_unix_server(
                    lambda: SiblingConn(self, True), sock=worker.internal))
            return
        addrs = [a.strip() for a in s.listen_addr.split(",") if a.strip()]
        for addr in addrs:
            host: str | None = None if addr == "*" else addr
            try:
                server = await loop.create_server(
                    factory_tcp, host, s.listen_port, backlog=s.listen_backlog,
                    reuse_address=True, reuse_port=bool(s.so_reuseport))
            except OSError as exc:
                raise listen_error(f"{addr}:{s.listen_port}", exc) from None
            self._servers.append(server)
            for sock in server.sockets:
                name = sock.getsockname()
                log.info("listening on %s:%s", name[0], name[1])
        if s.unix_socket_dir:
            path = os.path.join(s.unix_socket_dir, f".s.PGSQL.{s.listen_port}")
            self.check_unix_path(path)
            try:
                server = await loop.create_unix_server(factory_unix, path,
                                                       backlog=s.listen_backlog)
            except OSError as exc:
                raise listen_error(f"unix:{path}", exc) from None
            os.chmod(path, s.unix_socket_mode)
            self._servers.append(server)
            self._unix_paths.append(path)
            log.info("listening on unix:%s", path)
        if not self._servers:
            raise ConfigError("nothing to listen on: set listen_addr or unix_socket_dir")

    @staticmethod
    def check_unix_path(path: str) -> None:
        """Remove a stale socket file; refuse one a live process still answers on."""
        if unix_socket_in_use(path):
            raise ConfigError(f"unix socket {path} is in use by another process")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _tick_clock(self) -> None:
        self.now = self.loop.time()
        self.loop.call_later(CLOCK_STEP, self._tick_clock)
        if self.shared is not None:
            balance(self)

    def _install_signals(self) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGQUIT, self._on_sigquit)
        loop.add_signal_handler(signal.SIGUSR1, self.console.on_sigusr1)
        loop.add_signal_handler(signal.SIGUSR2, self.console.on_sigusr2)

    def _on_sigint(self) -> None:
        log.info("got SIGINT, shutting down, waiting for all servers connections to be "
                 "released")
        self.begin_shutdown("servers")

    def _on_sigterm(self) -> None:
        self._sigterm_count += 1
        if self._sigterm_count > 1:
            log.info("got SIGTERM while shutting down, fast exit")
            self.stop()
            return
        log.info("got SIGTERM, shutting down, waiting for all clients to disconnect")
        self.begin_shutdown("clients")

    def _on_sigquit(self) -> None:
        log.info("got SIGQUIT, fast exit")
        self.stop()

    def begin_shutdown(self, mode: str) -> None:
        if not self.shutting_down and self.worker is None:
            notify.notify("STOPPING=1")
        self.shutting_down = True
        self.shutdown_mode = mode
        for server in self._servers:
            server.close()
        if mode == "servers":
            self.paused = True
            self.sync_pause()
        self._check_shutdown()

    def _check_shutdown(self) -> None:
        if self.shutdown_mode == "servers":
            if not any(p.in_use() or p.login for p in self.pools.values()):
                self.stop()
        elif self.shutdown_mode == "clients" and not self.clients:
            self.stop()

    def stop(self) -> None:
        if self._stop is not None:
            if not self._stop.is_set() and not self.shutting_down and self.worker is None:
                notify.notify("STOPPING=1")  # a fast exit: SIGQUIT, or a second SIGTERM
            self._stop.set()

    async def _cleanup(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        for server in self._servers:
            server.close()
        await self.metrics.stop()
        for session in list(self.console.sessions):
            session.fatal("database shutting down", sqlstate="57P01")
        for client in list(self.clients):
            client.fatal(ClientFatal("database shutting down", sqlstate="57P01"),
                         log_as="pooler shutting down")
        for pool in self.pools.values():
            for srv in [*pool.idle, *pool.in_use(), *pool.login]:
                srv.close("pooler shutting down")
        self.listeners.close_all()
        if self.fleet is not None:
            self.fleet.close_all()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        await asyncio.sleep(0)
        log.info("shutdown complete")

    # ------------------------------------------------------------------ janitor

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0 if not self.shutting_down else 0.2)
            try:
                self.janitor_tick()
            except PgusherError as exc:  # pragma: no cover - defensive
                log.error("janitor: %s", exc.message)

    def janitor_tick(self) -> None:
        janitor.tick(self)
        worker = self.worker
        if worker is not None and not self.shutting_down and (
                os.getppid() != worker.supervisor_pid):
            log.warning("supervisor is gone, shutting down")
            self.begin_shutdown("servers")
        if self.shutting_down:
            self._check_shutdown()
