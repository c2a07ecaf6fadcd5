"""The console connection and the Console that owns all of them.

Strategy: a console login starts like any client login (ClientConn reads the startup packet
and runs the password exchange), then the connection is handed over: ClientConn asks the
Console whether the database is the console's, and once the password is checked the Console
replaces the transport's protocol with a :class:`ConsoleSession`. Pool clients therefore never
pay for console checks on their data path, and the console never needs a server.

A session speaks the simple query protocol only, one command at a time. Commands that wait
(PAUSE, SUSPEND, WAIT_CLOSE) hold the session's reply, and any later query, until their
condition holds; a cancel request on the session undoes the pause, as in PgBouncer.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ClientFatal, ProtocolError
from ..log import log
from ..pooling.states import AUTH, CLOSED, move_client
from ..protocol import messages as m
from ..protocol.reader import MessageReader
from ..workers.siblings import SiblingCall
from . import cluster, control
from .parse import Command, ConsoleError, SetCommand, parse
from .show import CONSOLE_DB, SHOWS, Result, Row, _row

if TYPE_CHECKING:
    from ..app import Application
    from ..net.client_conn import ClientConn

POLL_STEP = 0.05
MAX_MESSAGE = 1024 * 1024

# Shown by SHOW HELP; the command table below is the authority.
HELP = ("\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
        "\tSHOW PEERS|PEER_POOLS\n"
        "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n"
        "\tSHOW DNS_HOSTS|DNS_ZONES\n"
        "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n"
        "\tSHOW APPLICATIONS|USER_STATS\n"
        "\tSET key = arg\n"
        "\tRELOAD\n"
        "\tPAUSE [<db>]\n"
        "\tRESUME [<db>]\n"
        "\tDISABLE <db>\n"
        "\tENABLE <db>\n"
        "\tRECONNECT [<db>]\n"
        "\tKILL [<db>]\n"
        "\tKILL_CLIENT <client_id>\n"
        "\tSUSPEND\n"
        "\tSHUTDOWN\n"
        "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"
        "\tWAIT_CLOSE [<db>]")

# SHOWs a stats_users member may not run (they reveal cancel keys and socket numbers).
_ADMIN_SHOWS = frozenset({"fds"})


def welcome_params() -> list[tuple[str, str]]:
    """The console's ParameterStatus set, as PgBouncer's console sends it."""
    return [("server_version", f"{__version__}/bouncer"), ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"), ("DateStyle", "ISO"), ("TimeZone", "GMT"),
            ("standard_conforming_strings", "on"), ("is_superuser", "on")]


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", raw)[1])


def own_user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return ""


class Console:
    """All console sessions, the suspend state and the commands waiting on a condition."""

    def __init__(self, app: Application) -> None:
        self.app = app
        # The class attach() makes; SHOW MEM (show.py, which this module imports) reads its size.
        self.session_type: type[ConsoleSession] = ConsoleSession
        self.sessions: list[ConsoleSession] = []
        # Sessions of sibling workers asking this one (workers > 1); not listed anywhere.
        self.internal_sessions: list[ConsoleSession] = []
        self.suspended = False
        self.suspended_clients: list[ClientConn] = []
        self.cancel_keys: dict[tuple[int, int], ConsoleSession] = {}
        self._poll: asyncio.TimerHandle | None = None
        self._signal_wait: control.Wait | None = None

    # ------------------------------------------------------------------ login

    def wants(self, client: ClientConn, params: dict[str, str]) -> bool:
        """Called at startup: take the login over when it is for the console database.

        Like PgBouncer's console, it ignores startup parameters it has no use for (drivers
        send extra_float_digits and the like), keeping only application_name for display.
        """
        if not control.is_console_db(self.app, client.db_name):
            return False
        client.admin = True
        if "application_name" in params:
            client.startup_params["application_name"] = params["application_name"]
        self._count(client)
        if client.is_unix and self._own_user(client):
            client.transport.write(m.AUTH_OK_MSG)
            if self.app.config.settings.log_connections:
                log.info("%s pgbouncer access from unix socket", client.prefix())
            self.attach(client, trusted=True)
            return True
        move_client(client, AUTH)
        client._begin_auth()
        return True

    def _count(self, client: ClientConn) -> None:
        """Count the login in the console database and under its user, as any client:
        max_db_client_connections and the user's max_user_client_connections apply, except
        to admin users."""
        app = self.app
        s = app.config.settings
        client.db_name = CONSOLE_DB
        user_limit = app.layered(client.user, None, "max_user_client_connections", "",
                                 "max_user_client_connections")
        app.client_counts.take(client, s.max_db_client_connections, user_limit,
                               exempt=client.user in s.admin_users, console=True)

    def _own_user(self, client: ClientConn) -> bool:
        if client.user not in ("pgbouncer", own_user_name()):
            return False
        return peer_uid(client.transport) == os.getuid()

    def attach_internal(self, client: ClientConn) -> None:
        """A sibling worker on this worker's private socket: the console, nothing else."""
        if not control.is_console_db(self.app, client.db_name):
            client.fatal(ClientFatal("only the admin console is served on this socket"))
            return
        client.admin = True
        client.transport.write(m.AUTH_OK_MSG)
        self.attach(client, trusted=True, internal=True)

    def attach(self, client: ClientConn, trusted: bool = False, internal: bool = False) -> None:
        """The password is checked: hand the connection to a ConsoleSession."""
        s = self.app.config.settings
        user = client.user
        is_admin = trusted or user in s.admin_users
        if not (is_admin or user in s.stats_users or s.auth_type == "any"):
            client.fatal(ClientFatal("not allowed"), log_as="not allowed")
            return
        client.closed = True
        move_client(client, CLOSED)
        self.app.client_is_cancel(client)  # no longer a pool client
        session = self.session_type(self, client, is_admin, internal)
        session.counted, client.counted = client.counted, False  # the session gives it back
        client.transport.set_protocol(session)
        (self.internal_sessions if internal else self.sessions).append(session)
        session.welcome()
        leftover = client._reader.take_rest()
        if leftover:
            self.app.loop.call_soon(session.data_received, leftover)

    def new_cancel_key(self, session: ConsoleSession) -> tuple[int, int]:
        while True:
            key = self.app.new_cancel_key()  # names this worker and peer, as clients' keys do
            if key not in self.cancel_keys and key not in self.app.cancel_keys:
                self.cancel_keys[key] = session
                return key

    def cancel(self, pid: int, key: int) -> bool:
        """A cancel request for a console session: undo a pending pause (as PgBouncer)."""
        session = self.cancel_keys.get((pid, key))
        if session is None:
            return False
        if self.app.shutting_down:
            return True
        if self.app.paused or self.suspended or self.app.paused_dbs:
            control.full_resume(self.app)
        session.cancel_wait()
        return True

    def gone(self, session: ConsoleSession) -> None:
        self.cancel_keys.pop(session.cancel, None)
        self.app.client_counts.give(session)
        if session.internal:
            if session in self.internal_sessions:
                self.internal_sessions.remove(session)
            return
        if session in self.sessions:
            self.sessions.remove(session)
        if self.suspended and not self.sessions:
            log.info("admin disappeared when suspended, doing RESUME")
            control.full_resume(self.app)
            if self.app.worker is not None:
                self.app.loop.create_task(cluster.tell_siblings(self.app, "RESUME"))

    # ------------------------------------------------------------------ waiting commands

    def watch(self) -> None:
        if self._poll is None:
            self._poll = self.app.loop.call_later(POLL_STEP, self._check)

    def _check(self) -> None:
        self._poll = None
        waiting = False
        for session in [*self.sessions, *self.internal_sessions]:
            waiting = session.check_wait() or waiting
        if self._signal_wait is not None:
            if self._signal_wait():
                self._signal_wait = None
            else:
                waiting = True
        if waiting:
            self.watch()

    # ------------------------------------------------------------------ signals

    def on_sigusr1(self) -> None:
        log.info("got SIGUSR1, pausing all activity")
        try:
            self._signal_wait = control.pause(self.app, "")
        except ConsoleError as exc:
            log.info("SIGUSR1 ignored: %s", exc.message)
            return
        self.watch()

    def on_sigusr2(self) -> None:
        log.info("got SIGUSR2, continuing")
        self._signal_wait = None
        try:
            control.resume(self.app, "")
        except ConsoleError as exc:
            log.info("SIGUSR2 ignored: %s", exc.message)


class ConsoleSession(asyncio.Protocol):
    __slots__ = (
        "_busy",
        "_calls",
        "_queue",
        "_reader",
        "_wait",
        "_wait_tag",
        "addr",
        "admin",
        "app",
        "application",
        "cancel",
        "client_id",
        "closed",
        "connected_at",
        "console",
        "counted",
        "db_name",
        "internal",
        "last_request",
        "local",
        "transport",
        "user",
    )

    def __init__(self, console: Console, client: ClientConn, admin: bool,
                 internal: bool = False) -> None:
        self.console = console
        self.internal = internal
        self._busy: asyncio.Task[None] | None = None
        self._calls: list[SiblingCall] = []
        self.app = console.app
        self.transport = client.transport
        self.user = client.user
        self.db_name = client.db_name
        self.counted = False  # in the console database's and its user's client counts
        self.addr = client.addr
        self.admin = admin
        self.application = client.startup_params.get("application_name", "")
        self.connected_at = client.connected_at
        self.last_request = self.app.loop.time()
        self.closed = False
        self._reader = MessageReader(MAX_MESSAGE)
        self._queue: list[bytes] = []
        self._wait: control.Wait | None = None
        self._wait_tag = ""
        self.cancel = console.new_cancel_key(self)
        registry = self.app.metrics.registry
        # The connection keeps the id it got when it was made.
        self.client_id = registry.ids.pop(client, 0) or registry.id_of(self)
        registry.ids[self] = self.client_id
        name = self.transport.get_extra_info("sockname")
        self.local = name

    def welcome(self) -> None:
        out = [m.parameter_status(k, v) for k, v in welcome_params()]
        out.append(m.backend_key_data(*self.cancel))
        out.append(m.READY_IDLE)
        self.transport.write(b"".join(out))

    # ------------------------------------------------------------------ protocol

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        reader = self._reader
        reader.push(data)
        while not self.closed:
            try:
                message = reader.next()
            except ProtocolError:
                self.fatal("invalid packet length for admin console", sqlstate="08P01")
                return
            if message is None:
                return
            kind, body = message
            if kind == 81:  # 'Q'
                if self._wait is not None or self._busy is not None:
                    self._queue.append(body)
                else:
                    self._query(body)
            elif kind == 88:  # 'X'
                self.close()
                return
            elif kind in b"PBE":
                self.fatal("extended query protocol not supported by admin console")
                return
            else:
                self.fatal(f"unsupported packet type for admin console: {chr(kind)!r}")
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.console.gone(self)
        self.app.metrics.registry.ids.pop(self, None)
        self.transport.close()

    def fatal(self, message: str, sqlstate: str = "08P01") -> None:
        if not self.closed:
            self.transport.write(m.error_response("FATAL", sqlstate, message))
        self.close()

    # ------------------------------------------------------------------ commands

    def _query(self, body: bytes) -> None:
        self.last_request = self.app.loop.time()
        text = body.rstrip(b"\0").decode("utf-8", "replace")
        log.debug("got admin query: %s", text)
        if self.app.worker is not None and not self.internal:
            self._busy = self.app.loop.create_task(self._ask_all(text))
            return
        out = self._answer(text)
        if isinstance(out, tuple):
            self._wait, self._wait_tag = out
            self.console.watch()
            return
        if out and not self.closed:
            self.transport.write(out)

    def _answer(self, text: str) -> bytes | tuple[control.Wait, str]:
        """This process's reply to one command, or what it waits for and its tag."""
        try:
            if self.internal and text.startswith(cluster.INTERNAL_PREFIX):
                return cluster.internal_answer(self.app, text)
            return self._run(parse(text), text)
        except ConsoleError as exc:
            log.error("%s", exc.message)
            return (m.error_response("ERROR", exc.sqlstate, exc.message, exc.detail)
                    + m.READY_IDLE)

    async def _ask_all(self, text: str) -> None:
        """workers > 1: ask every worker, this one included, and send one merged reply."""
        try:
            out = await cluster.ask_all(self, text)
            if out and not self.closed:
                self.transport.write(out)
        finally:
            self._busy = None
            self._calls = []
        self._drain_queue()

    async def local_reply(self, text: str) -> bytes:
        """This worker's part of a cluster-wide command, waiting here if it must wait."""
        out = self._answer(text)
        if not isinstance(out, tuple):
            return out
        wait, tag = out
        self._wait, self._wait_tag = wait, ""
        try:
            while not wait():
                if self.closed or self._wait is None:  # closed, or cancelled
                    return (m.error_response("ERROR", "57014",
                                             "canceling statement due to user request")
                            + m.READY_IDLE)
                await asyncio.sleep(POLL_STEP)
        finally:
            self._wait = None
        return _done(tag)

    def _run(self, cmd: Command | SetCommand, text: str) -> bytes | tuple[control.Wait, str]:
        """Run one command: the reply to write now (b"" for none), or a wait and its tag."""
        app = self.app
        if isinstance(cmd, SetCommand):
            if cmd.key.lower() in control.FAKE_PARAMS:
                return m.notice_response("SET ignored") + _done("SET")
            self._need_admin()
            tag, notice = control.set_setting(app, cmd.key, cmd.value)
            return (m.notice_response(notice) if notice else b"") + _done(tag)
        name, arg = cmd.name, cmd.arg
        if name in ("show", "select"):
            return self._show(arg, text)
        handler = _COMMANDS.get(name)
        if handler is None:
            raise ConsoleError(f"invalid command '{text}', use SHOW HELP;")
        self._need_admin()
        wait = handler(self, arg)
        if wait is not None and not wait():
            return wait, name.upper()
        if name == "shutdown" and not arg:
            return b""  # the process is exiting; PgBouncer does not answer either
        return _done(name.upper())

    def _need_admin(self) -> None:
        if not self.admin:
            raise ConsoleError("admin access needed")

    def _show(self, arg: str, text: str) -> bytes:
        what = arg.lower()
        fake = control.FAKE_PARAMS.get(what)
        if fake is not None:
            return _result(([(what, 25)], [[fake]]))
        if what == "help":
            notice = _notice_detail("Console usage", HELP)
            return notice + _done("SHOW")
        builder = SHOWS.get(what)
        if builder is None:
            raise ConsoleError(f"invalid command '{text}', use SHOW HELP;")
        if what in _ADMIN_SHOWS:
            self._need_admin()
        return _result(builder(self.app))

    # ------------------------------------------------------------------ waiting

    def check_wait(self) -> bool:
        """Poll a pending command; True while it still waits."""
        wait = self._wait
        if wait is None or self.closed or self._busy is not None:
            return False
        if not wait():
            return True
        self._wait = None
        self.transport.write(_done(self._wait_tag))
        self._drain_queue()
        return self._wait is not None

    def cancel_wait(self) -> None:
        if self._busy is not None:
            self._wait = None  # local_reply sees it and answers "canceling statement"
            for call in self._calls:
                self.app.loop.create_task(call.cancel())
            return
        if self._wait is None:
            return
        self._wait = None
        self.transport.write(m.error_response("ERROR", "57014",
                                              "canceling statement due to user request")
                             + m.READY_IDLE)
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self._queue and self._wait is None and not self.closed:
            self._query(self._queue.pop(0))

    def client_row(self, debug: bool = False) -> Row:
        """This session as a SHOW CLIENTS row (database pgbouncer, as PgBouncer lists it);
        ``debug`` adds SHOW SOCKETS' buffer columns."""
        app = self.app
        port = app.config.settings.listen_port
        if self.addr.startswith("unix"):
            addr, rport = "unix", port
        else:
            host, _, p = self.addr.rpartition(":")
            addr, rport = host, int(p) if p.isdigit() else 0
        local = self.local
        laddr, lport = (str(local[0]), int(local[1])) if isinstance(local, tuple) else (
            "unix", port)

        def wall(mono: float) -> str:
            stamp = time.time() - (app.loop.time() - mono)
            return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(stamp))

        values: list[object] = [
            "C", self.user, "pgbouncer", "none", "active", addr, rport, laddr, lport,
            wall(self.connected_at), wall(self.last_request), 0, 0, 0, f"0x{id(self):x}", "", 0,
            "", self.application, 0, self.client_id]
        if debug:
            values += [0, 0, 0, 0, 0, 0, self.transport.get_write_buffer_size()]
        return _row(values)


def _done(tag: str) -> bytes:
    return m.command_complete(tag) + m.READY_IDLE


def _notice_detail(message: str, detail: str) -> bytes:
    body = (b"SNOTICE\0VNOTICE\0C00000\0M" + message.encode() + b"\0D" + detail.encode()
            + b"\0\0")
    return m.message(b"N", body)


def _result(result: Result) -> bytes:
    columns, rows = result
    out = [m.row_description(columns)]
    out.extend(m.data_row(row) for row in rows)
    out.append(_done("SHOW"))
    return b"".join(out)


def _pause(s: ConsoleSession, arg: str) -> control.Wait | None:
    return control.pause(s.app, arg)


def _resume(s: ConsoleSession, arg: str) -> None:
    control.resume(s.app, arg)


def _suspend(s: ConsoleSession, arg: str) -> control.Wait | None:
    if arg:
        raise ConsoleError(f"invalid command 'SUSPEND {arg}', use SHOW HELP;")
    return control.suspend(s.app)


def _reload(s: ConsoleSession, arg: str) -> None:
    if arg:
        raise ConsoleError(f"invalid command 'RELOAD {arg}', use SHOW HELP;")
    control.reload(s.app)


def _shutdown(s: ConsoleSession, arg: str) -> None:
    if arg and arg.upper() not in ("WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"):
        raise ConsoleError(f"invalid command 'SHUTDOWN {arg}', use SHOW HELP;")
    control.shutdown(s.app, arg)


_COMMANDS: dict[str, Callable[[ConsoleSession, str], control.Wait | None]] = {
    "pause": _pause,
    "resume": _resume,
    "suspend": _suspend,
    "disable": lambda s, a: control.disable(s.app, a, True),
    "enable": lambda s, a: control.disable(s.app, a, False),
    "reconnect": lambda s, a: control.reconnect(s.app, a),
    "kill": lambda s, a: control.kill(s.app, a),
    "kill_client": lambda s, a: control.kill_client(s.app, a),
    "wait_close": lambda s, a: control.wait_close(s.app, a),
    "reload": _reload,
    "shutdown": _shutdown,
}

