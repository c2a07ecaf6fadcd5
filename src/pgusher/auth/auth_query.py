"""auth_query: the protocol side of looking up a user's secret on the server.

Strategy: sans-IO. :class:`LookupSession` is a small client of one server connection, logged in
as ``auth_user``: it produces the bytes to send and consumes the bytes received, and reports
:class:`Event` values; the network layer (``net/auth_lookup.py``) owns the socket. A session
logs in once, through the same :class:`~pgusher.auth.server_login.ServerLogin` as the pool's
server connections, and then answers lookups one at a time, reading their replies with the
login's bounded reader.

The looked-up user name is always data, never SQL text: each lookup is one extended-protocol
round (Parse of ``auth_query`` with its ``$1``, Bind with the name as the only text parameter,
Execute, Sync), so no quoting or escaping is involved at all.

The query must return at most one row of two columns, (user name, secret). No row means the
user does not exist; a NULL secret (PgBouncer's default query gives one when ``rolvaliduntil``
has passed) means the user may not log in with a password. Both end in the same failed login
as a wrong password.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pgusher.auth.scram import ScramClient, is_scram_secret
from pgusher.auth.server_login import LoginDone, LoginFailed, Send, ServerLogin
from pgusher.errors import AuthError, ProtocolError, ServerError
from pgusher.protocol import messages as m
from pgusher.protocol.messages import parse_data_row

__all__ = ["Event", "LookupSession", "lookup_messages", "parse_data_row"]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")

LOGIN = "login"
READY = "ready"
BUSY = "busy"
FAILED = "failed"


@dataclass(frozen=True)
class Event:
    """``kind``: 'ready' (logged in, or a lookup finished: see ``found``/``secret``) or
    'failed' (``error`` says why; the session is unusable)."""

    kind: str
    found: bool = False
    secret: str | None = None
    error: ServerError | None = None
    # For a failed login: the server's severity word (FATAL), or "" when the pooler gave up.
    login_failed: str | None = None


def lookup_messages(sql: str, user: str) -> bytes:
    """Parse/Bind/Execute/Sync for ``sql`` with ``user`` as parameter $1 (text format)."""
    name = user.encode("utf-8", "surrogateescape")
    parse = m.message(b"P", m.cstr("") + m.cstr(sql) + _I16.pack(0))
    bind = m.message(b"B", m.cstr("") + m.cstr("") + _I16.pack(0) + _I16.pack(1)
                     + _I32.pack(len(name)) + name + _I16.pack(0))
    execute = m.message(b"E", m.cstr("") + _I32.pack(0))
    return parse + bind + execute + m.SYNC



class LookupSession:
    """One logged-in connection as auth_user that answers lookups in turn.

    ``password`` is auth_user's secret (plain, md5 hash or SCRAM secret) or None; ``keys``
    are ClientKey/ServerKey to answer SCRAM with when the secret is a SCRAM secret; ``params``
    go in the startup message after user and database.
    """

    def __init__(self, user: str, database: str, password: str | None,
                 keys: tuple[bytes, bytes] | None = None,
                 params: dict[str, str] | None = None) -> None:
        self.user = user
        self.database = database
        self._keys = keys
        self._login = ServerLogin(user, database, params or {}, password, self._scram_client,
                                  who=f'auth_user "{user}"')
        self.state = LOGIN
        self._rows: list[list[bytes | None]] = []
        self._error: dict[str, str] | None = None
        self._out: list[bytes] = []

    def startup(self) -> bytes:
        return self._login.startup()

    def lookup(self, sql: str, user: str) -> bytes:
        if self.state != READY:
            raise ProtocolError(f"lookup while the session is {self.state}")
        self.state = BUSY
        self._rows = []
        self._error = None
        return lookup_messages(sql, user)

    def take_output(self) -> bytes:
        """Bytes the session wants sent (login replies)."""
        out, self._out = b"".join(self._out), []
        return out

    def feed(self, data: bytes) -> list[Event]:
        """Consume received bytes; return what happened."""
        if self.state == FAILED:
            return []
        events: list[Event] = []
        if self.state == LOGIN:
            for action in self._login.feed(data):
                if isinstance(action, Send):
                    self._out.append(action.data)
                elif isinstance(action, LoginFailed):
                    self.state = FAILED
                    events.append(Event("failed", error=action.error,
                                        login_failed=action.severity))
                    return events
                elif isinstance(action, LoginDone):
                    self.state = READY
                    events.append(Event("ready"))
            if self.state == LOGIN:
                return events
            data = b""  # the bytes after ReadyForQuery are still in the login's reader
        reader = self._login.reader
        reader.push(data)
        while True:
            try:
                message = reader.next()
            except ProtocolError:
                return self._fail(events, ServerError("invalid packet from server"))
            if message is None:
                return events
            try:
                event = self._message(message[0], message[1])
            except ProtocolError as exc:
                return self._fail(events, ServerError(exc.message, sqlstate=exc.sqlstate))
            if event is not None:
                events.append(event)
                if event.kind == "failed":
                    self.state = FAILED
                    return events

    def _fail(self, events: list[Event], error: ServerError) -> list[Event]:
        self.state = FAILED
        events.append(Event("failed", error=error))
        return events

    def _message(self, kind: int, body: bytes) -> Event | None:
        if kind == 69:  # 'E'
            self._error = m.parse_error_fields(body)
            return None
        if kind == 90:  # 'Z'
            if self.state == BUSY:
                return self._finish()
            raise ProtocolError("unexpected ReadyForQuery")
        if kind == 68:  # 'D'
            self._rows.append(parse_data_row(body))
        return None  # ParseComplete, BindComplete, CommandComplete, notices...

    def _finish(self) -> Event:
        self.state = READY
        if self._error is not None:
            error = ServerError("auth_query failed: " + self._error.get("M", ""),
                                sqlstate=self._error.get("C", "XX000"))
            return Event("failed", error=error)
        if not self._rows:
            return Event("ready", found=False)
        row = self._rows[0]
        if len(self._rows) > 1 or len(row) != 2:
            return Event("failed", error=ServerError(
                "auth_query must return at most one row of two columns"))
        secret = row[1]
        return Event("ready", found=True,
                     secret=None if secret is None else secret.decode("utf-8", "surrogateescape"))

    def _scram_client(self, password: str) -> ScramClient:
        """How the login answers the server's SCRAM request with auth_user's secret."""
        if is_scram_secret(password):
            if self._keys is None:
                raise AuthError(f'cannot do SCRAM authentication as auth_user "{self.user}":'
                                " only a SCRAM secret is known and no client has logged in"
                                " as that user yet")
            return ScramClient.from_keys(*self._keys)
        if password.startswith("md5"):
            raise AuthError("cannot do SCRAM authentication: password is an md5 hash")
        return ScramClient(password)
