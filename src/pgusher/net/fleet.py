"""The fleet on the network: each database's claims, kept in a table on its own server.

Strategy: for every database it serves, a process of the fleet keeps one coordination
connection of its own to that database (outside the pools, like the auth_query and listening
connections), logged in as the first pool's user, and every ``fleet_check_interval`` (sooner
when clients wait for a server the grant does not allow while it is below the fair share,
but not sooner than half an interval after the last) runs one check, in two round trips:

1. ``BEGIN``, the fleet's advisory lock for the database, deleting the rows whose heartbeat
   is older than ``fleet_lease_timeout``, reading the other members' rows;
2. its own row written with the claim worked out from them (pooling/fleet.py), ``COMMIT``.

A grant goes up only once its row is committed, so no one counts on budget another member
may still hold; it goes down at once. Servers beyond the grant are closed when idle, or when
they come back to the pool (Pool.give). A process that cannot write its row for half the
lease timeout (its connection lost, the server restarting) lowers its grant to nothing
until it can: the others may take its part once its row expires. The table
(``fleet_table``, created if missing) needs the right to create a table once, and then to
read and write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from ..auth.server_login import ServerLogin
from ..errors import ServerError
from ..log import log
from ..pooling.fleet import Member, claim
from ..protocol.control import ControlSession, Ended, Result
from .server_session import sql_literal
from .side import connect_to, login_step, pool_login

if TYPE_CHECKING:
    from ..app import Application
    from ..pooling.pool import Pool


class ControlConn(asyncio.Protocol):
    """A logged-in connection that runs the pooler's own simple queries, one at a time."""

    def __init__(self, app: Application, pool: Pool) -> None:
        self.app = app
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._login: ServerLogin | None = None
        self._session: ControlSession | None = None
        self._waiter: asyncio.Future[Result] | None = None
        self._ready: asyncio.Future[None] = app.loop.create_future()
        self.closed = False

    async def open(self) -> None:
        timeout = self.app.config.settings.server_connect_timeout or None
        try:
            await connect_to(self.app, self, self.pool.target)
            await asyncio.wait_for(self._ready, timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise ServerError(f"cannot connect: {exc or exc.__class__.__name__}") from None
        except ServerError:
            self.close()
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._login = pool_login(self.app, self.pool, "fleet connection")
        self.transport.write(self._login.startup())

    def data_received(self, data: bytes) -> None:
        login = self._login
        if login is not None:
            assert self.transport is not None
            done, data, error = login_step(login, data, self.transport)
            if error is not None:
                self._end(error)
                return
            if not done:
                return
            self._login = None
            self._session = ControlSession(self.app.config.settings.max_packet_size)
            if not self._ready.done():
                self._ready.set_result(None)
        if self._session is None:
            return
        for event in self._session.feed(data):
            if isinstance(event, Ended):
                self._end(ServerError(event.reason))
                return
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ServerError("connection closed by the server"))

    def _end(self, error: ServerError) -> None:
        for future in (self._ready, self._waiter):
            if future is not None and not future.done():
                future.set_exception(error)
        self._waiter = None
        self.close()

    async def run(self, sql: str) -> Result:
        if self.closed or self._session is None or self.transport is None:
            raise ServerError("fleet connection is closed")
        self._waiter = self.app.loop.create_future()
        self.transport.write(self._session.query(sql))
        return await self._waiter

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FleetDatabase:
    """This process's membership of the fleet for one database."""

    def __init__(self, fleet: Fleet, dbname: str, pool: Pool) -> None:
        self.fleet = fleet
        self.app = fleet.app
        self.dbname = dbname
        self.pool = pool  # whose user the coordination connection logs in as
        self.grant = 0
        self.share = 0
        self.demand = 0
        # The largest demand seen since the last check: a check's own moment may find every
        # client between two transactions (a busy client machine), not the load.
        self.demand_seen = 0
        self.members: list[Member] = []  # the others, as last read
        self.last_write = 0.0  # loop time of the last committed row
        self.conn: ControlConn | None = None
        self.created = False
        self.wake = asyncio.Event()
        self.task = self.app.loop.create_task(self._loop())

    # -- what the pools ask

    def pools(self) -> Iterable[Pool]:
        return (p for p in self.app.pools.values() if p.target.dbname == self.dbname)

    def live(self) -> int:
        return sum(p.total for p in self.pools())

    def allows_one_more(self) -> bool:
        return self.live() < self.grant

    def over(self) -> bool:
        return self.live() > self.grant

    def wanted(self) -> None:
        """A client waits for a server the grant does not allow: check now, unless the grant
        is already the whole fair share. Then another check could only find the same, and
        with many members each asking again and again the advisory lock would be held
        without pause; the periodic check sees a change of the others' demand."""
        self.demand_seen = max(self.demand_seen, self._demand())
        if self.grant < self.share or not self.last_write:
            self.wake.set()

    def _demand(self) -> int:
        busy = waiting = limit = 0
        for p in self.pools():
            busy += len(p.active) + len(p.tested) + len(p.login)
            waiting += len(p.waiting) + len(p.login_waiters)
            limit += p.limit
        return min(busy + waiting, limit)

    # -- the check

    async def _loop(self) -> None:
        settings = self.app.config.pgusher
        while True:
            started = self.app.loop.time()
            try:
                await self._check()
            except (ServerError, ValueError) as exc:
                # The connection goes with its transaction (and the fleet's lock, if held).
                log.warning("fleet %s: database %s: check failed: %s", settings.fleet,
                            self.dbname, exc.message if isinstance(exc, ServerError) else exc)
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
            if (self.grant and self.app.loop.time() - self.last_write
                    > settings.fleet_lease_timeout / 2):
                # Our row may expire soon: others may take its part.
                self._set_grant(0, self.share, "its row could not be written")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), settings.fleet_check_interval)
            # Brought forward by waiting clients: one check for all of them, and no sooner
            # than half an interval after the last, so that many members short of their
            # share do not keep the fleet's lock taken between them.
            await asyncio.sleep(max(0.005, settings.fleet_check_interval / 2
                                    - (self.app.loop.time() - started)))

    async def _check(self) -> None:
        settings = self.app.config.pgusher
        fleet = sql_literal(settings.fleet)
        db = sql_literal(self.dbname)
        me = sql_literal(self.fleet.instance)
        table = settings.fleet_table
        if self.conn is None or self.conn.closed:
            self.conn = ControlConn(self.app, self.pool)
            await self.conn.open()
        conn = self.conn
        if not self.created:
            done = await conn.run(
                f"CREATE TABLE IF NOT EXISTS {table} (fleet text NOT NULL, database text NOT NULL,"
                " instance text NOT NULL, demand int NOT NULL, granted int NOT NULL,"
                " live int NOT NULL, heartbeat timestamptz NOT NULL,"
                " PRIMARY KEY (fleet, database, instance))")
            if done.error is not None:
                # Another member made it at the same moment (42P07, 42710, 23505), or this
                # user may not: either way, the next check tries again.
                if done.error.get("C") not in ("42P07", "42710", "23505"):
                    log.warning("fleet %s: cannot create %s: %s", settings.fleet, table,
                                done.error.get("M", ""))
                return
            self.created = True
        key = zlib.crc32(f"pgusher fleet {settings.fleet} {self.dbname}".encode())
        read = await conn.run(
            f"BEGIN; SELECT pg_advisory_xact_lock({key}); "
            f"DELETE FROM {table} WHERE fleet = {fleet} AND database = {db} AND heartbeat < "
            f"clock_timestamp() - interval '{settings.fleet_lease_timeout} seconds'; "
            f"SELECT instance, demand, granted, live, "
            f"extract(epoch FROM clock_timestamp() - heartbeat) FROM {table} "
            f"WHERE fleet = {fleet} AND database = {db} AND instance <> {me}")
        if read.error is not None:
            await conn.run("ROLLBACK")
            raise ServerError(f"reading {table}: {read.error.get('M', '')}")
        others = [Member(str(r[0]), int(r[1] or 0), int(r[2] or 0), int(r[3] or 0),
                         float(r[4] or 0))
                  for r in read.rows if len(r) == 5]
        demand = max(self._demand(), self.demand_seen)
        self.demand_seen = 0
        live = self.live()
        grant, share = claim(settings.fleet_max_db_connections, self.fleet.instance, demand,
                             live, others, settings.fleet_min_share)
        wrote = await conn.run(
            f"INSERT INTO {table} (fleet, database, instance, demand, granted, live, heartbeat)"
            f" VALUES ({fleet}, {db}, {me}, {demand}, {grant}, {live}, clock_timestamp())"
            " ON CONFLICT (fleet, database, instance) DO UPDATE SET demand = EXCLUDED.demand,"
            " granted = EXCLUDED.granted, live = EXCLUDED.live, heartbeat = EXCLUDED.heartbeat;"
            " COMMIT")
        if wrote.error is not None or wrote.status != "I":
            await conn.run("ROLLBACK")
            raise ServerError(f"writing {table}: "
                              f"{(wrote.error or {}).get('M', 'not committed')}")
        self.last_write = self.app.loop.time()
        self.members = others
        self.demand = demand
        self._set_grant(grant, share, "")

    def _set_grant(self, grant: int, share: int, why: str) -> None:
        old = self.grant
        self.grant, self.share = grant, share
        if grant != old:
            log.info("fleet %s: database %s: grant %d -> %d (share %d, demand %d, %d other "
                     "members)%s", self.app.config.pgusher.fleet, self.dbname, old, grant,
                     share, self.demand, len(self.members), f": {why}" if why else "")
        if grant < old:
            for p in self.pools():
                while p.idle and self.over():
                    p.idle[0].close("closed: over the fleet's grant")
        elif grant > old:
            for p in self.pools():
                if p.waiting or p.login_waiters:
                    p.grow()

    def rows(self) -> list[list[str | int | float]]:
        """SHOW FLEET: this member (heartbeat age from its last write) and the others as
        last read."""
        me = self.fleet.instance
        age = self.app.loop.time() - self.last_write if self.last_write else -1.0
        budget = self.app.config.pgusher.fleet_max_db_connections
        out: list[list[str | int | float]] = [
            [self.dbname, me, self.demand, self.share, self.grant, self.live(), round(age, 3),
             budget]]
        for m in sorted(self.members, key=lambda m: m.instance):
            out.append([self.dbname, m.instance, m.demand, -1, m.granted, m.live,
                        round(m.age, 3), budget])
        return out

    def close(self) -> None:
        self.task.cancel()
        if self.conn is not None:
            self.conn.close()


class Fleet:
    """This process's memberships, one per database it serves."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.databases: dict[str, FleetDatabase] = {}

    @property
    def instance(self) -> str:
        """This member's name. Read when used, not when made: the application is built
        before the workers fork, and each worker is a member of its own."""
        return f"{socket.gethostname()}:{self.app.config.settings.listen_port}:{os.getpid()}"

    def of(self, pool: Pool) -> FleetDatabase:
        found = self.databases.get(pool.target.dbname)
        if found is None:
            found = self.databases[pool.target.dbname] = FleetDatabase(
                self, pool.target.dbname, pool)
        return found

    def close_all(self) -> None:
        for member in self.databases.values():
            member.close()
        self.databases.clear()
