"""auth_query: the protocol side of looking up a user's secret on the server.

Strategy: sans-IO. :class:`LookupSession` is a small client of one server connection, logged in
as ``auth_user``: it produces the bytes to send and consumes the bytes received, and reports
:class:`Event` values; the network layer (``net/auth_lookup.py``) owns the socket. A session
logs in once and then answers lookups one at a time.

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

from pgusher.auth.md5 import md5_salted_response
from pgusher.auth.scram import ScramClient, is_scram_secret
from pgusher.errors import AuthError, ProtocolError, ServerError
from pgusher.protocol import messages as m

__all__ = ["Event", "LookupSession", "lookup_messages", "parse_data_row"]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_MAX_MESSAGE = 1_000_000

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


def lookup_messages(sql: str, user: str) -> bytes:
    """Parse/Bind/Execute/Sync for ``sql`` with ``user`` as parameter $1 (text format)."""
    name = user.encode("utf-8", "surrogateescape")
    parse = m.message(b"P", m.cstr("") + m.cstr(sql) + _I16.pack(0))
    bind = m.message(b"B", m.cstr("") + m.cstr("") + _I16.pack(0) + _I16.pack(1)
                     + _I32.pack(len(name)) + name + _I16.pack(0))
    execute = m.message(b"E", m.cstr("") + _I32.pack(0))
    return parse + bind + execute + m.SYNC


def parse_data_row(body: bytes) -> list[bytes | None]:
    """The column values of a DataRow body (None for NULL)."""
    if len(body) < 2:
        raise ProtocolError("invalid DataRow")
    count = _I16.unpack_from(body, 0)[0]
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > len(body):
            raise ProtocolError("invalid DataRow")
        size = _I32.unpack_from(body, pos)[0]
        pos += 4
        if size < 0:
            values.append(None)
            continue
        if pos + size > len(body):
            raise ProtocolError("invalid DataRow")
        values.append(body[pos:pos + size])
        pos += size
    if pos != len(body):
        raise ProtocolError("invalid DataRow")
    return values


class LookupSession:
    """One logged-in connection as auth_user that answers lookups in turn.

    ``password`` is auth_user's secret (plain, md5 hash or SCRAM secret) or None; ``keys``
    are ClientKey/ServerKey to answer SCRAM with when the secret is a SCRAM secret.
    """

    def __init__(self, user: str, database: str, password: str | None,
                 keys: tuple[bytes, bytes] | None = None) -> None:
        self.user = user
        self.database = database
        self._password = password
        self._keys = keys
        self._scram: ScramClient | None = None
        self._buf = b""
        self.state = LOGIN
        self._rows: list[list[bytes | None]] = []
        self._error: dict[str, str] | None = None
        self._out: list[bytes] = []

    def startup(self, extra: dict[str, str] | None = None) -> bytes:
        params = {"user": self.user, "database": self.database}
        params.update(extra or {})
        return m.startup_message(params)

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
        buf = self._buf + data
        events: list[Event] = []
        pos = 0
        while len(buf) - pos >= 5:
            kind = buf[pos]
            length = _I32.unpack_from(buf, pos + 1)[0]
            if length < 4 or length > _MAX_MESSAGE:
                return self._fail(events, ServerError("invalid packet from server"))
            end = pos + 1 + length
            if end > len(buf):
                break
            body = buf[pos + 5:end]
            pos = end
            try:
                event = self._message(kind, body)
            except (AuthError, ProtocolError) as exc:
                return self._fail(events, ServerError(exc.message, sqlstate=exc.sqlstate))
            if event is not None:
                events.append(event)
                if event.kind == "failed":
                    self.state = FAILED
                    return events
        self._buf = buf[pos:]
        return events

    def _fail(self, events: list[Event], error: ServerError) -> list[Event]:
        self.state = FAILED
        events.append(Event("failed", error=error))
        return events

    def _message(self, kind: int, body: bytes) -> Event | None:
        if kind == 69:  # 'E'
            fields = m.parse_error_fields(body)
            if self.state == LOGIN:
                return Event("failed", error=ServerError(
                    fields.get("M", "auth_user login failed"), sqlstate=fields.get("C", "08006")))
            self._error = fields
            return None
        if kind == 90:  # 'Z'
            if self.state == LOGIN:
                self.state = READY
                return Event("ready")
            if self.state == BUSY:
                return self._finish()
            raise ProtocolError("unexpected ReadyForQuery")
        if self.state == LOGIN:
            if kind == 82:  # 'R'
                self._auth(body)
            return None  # ParameterStatus, BackendKeyData, notices
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

    def _auth(self, body: bytes) -> None:
        code, payload = m.parse_auth_request(body)
        password = self._password
        if code == m.AUTH_OK:
            return
        if code == m.AUTH_SASL_CONTINUE and self._scram is not None:
            self._out.append(m.sasl_response(self._scram.client_final(payload)))
            return
        if code == m.AUTH_SASL_FINAL and self._scram is not None:
            self._scram.verify_server_final(payload)
            return
        if password is None:
            raise AuthError(f'no password known for auth_user "{self.user}"')
        if code == m.AUTH_CLEARTEXT:
            if password.startswith("md5") or is_scram_secret(password):
                raise AuthError("cannot do cleartext authentication: stored password is hashed")
            self._out.append(m.password_message(password.encode()))
        elif code == m.AUTH_MD5:
            if is_scram_secret(password):
                raise AuthError("cannot do md5 authentication: password is a SCRAM secret")
            self._out.append(m.password_message(
                md5_salted_response(self.user, password, payload[:4])))
        elif code == m.AUTH_SASL:
            if "SCRAM-SHA-256" not in m.split_cstrings(payload):
                raise AuthError("server offered no supported SASL mechanism")
            if is_scram_secret(password):
                if self._keys is None:
                    raise AuthError(f'cannot do SCRAM authentication as auth_user "{self.user}":'
                                    " only a SCRAM secret is known and no client has logged in"
                                    " as that user yet")
                self._scram = ScramClient.from_keys(*self._keys)
            elif password.startswith("md5"):
                raise AuthError("cannot do SCRAM authentication: password is an md5 hash")
            else:
                self._scram = ScramClient(password)
            self._out.append(m.sasl_initial_response("SCRAM-SHA-256",
                                                     self._scram.client_first()))
        else:
            raise AuthError(f"unsupported server authentication method {code}")
