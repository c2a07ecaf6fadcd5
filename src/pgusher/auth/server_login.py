"""The pooler's login to a PostgreSQL server, sans-IO.

Strategy: one machine for every connection the pooler opens to a server: the pool's server
connections (net/server_conn.py) and auth_query's lookup connections (auth/auth_query.py,
logged in as auth_user). :class:`ServerLogin` makes the startup message, takes the server's
bytes through the bounded :class:`~pgusher.protocol.reader.MessageReader`, answers the
authentication requests (cleartext, md5, SCRAM-SHA-256) and returns actions for its caller
to carry out in order: bytes to send, a parameter the server reported, the backend's cancel
key, and at the end either the login done (with all it learned) or the login failed (a
ServerError with the server's SQLSTATE and message). The caller owns the socket, the login
timeout and what a failure means for it.

The login ends at ReadyForQuery; the bytes after it are left in ``reader`` for the next
phase. The states are a table: LOGIN becomes DONE or FAILED, and neither ends.

The stored secret decides what the pooler can answer: a plain password answers anything, an
md5 hash answers md5 (the hash is what the salted response is made from) but not cleartext or
SCRAM, and a SCRAM secret answers only SCRAM, and only with the ClientKey a client's login
proved (see auth/passthrough.py). Which SCRAM client answers is the caller's to say
(``scram``), since only the caller knows where such keys are kept and how to explain their
absence.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import AuthError, PgusherError, ProtocolError, ServerError
from ..protocol import messages as m
from ..protocol.reader import MessageReader
from .md5 import md5_salted_response
from .scram import ScramClient, is_scram_secret

__all__ = [
    "DONE",
    "FAILED",
    "LOGIN",
    "MAX_LOGIN_MESSAGE",
    "Action",
    "BackendKey",
    "LoginDone",
    "LoginFailed",
    "Parameter",
    "ScramFactory",
    "Send",
    "ServerLogin",
    "transient_sqlstate",
]

LOGIN = "login"
DONE = "done"
FAILED = "failed"
_MOVES = {LOGIN: frozenset((DONE, FAILED)), DONE: frozenset(), FAILED: frozenset()}

# Login traffic is small; a server message longer than this during login is no login.
MAX_LOGIN_MESSAGE = 1_000_000

# SQLSTATE classes of login errors a server gives while it cannot take connections for now:
# connection exceptions, insufficient resources (too many clients), operator intervention
# (shutting down, starting up, in recovery).
_TRANSIENT_CLASSES = frozenset(("08", "53", "57"))

_R_AUTH = ord("R")
_S_PARAMETER = ord("S")
_K_KEY = ord("K")
_E_ERROR = ord("E")
_Z_READY = ord("Z")
_PID_KEY = struct.Struct("!ii")

# Makes the SCRAM client that answers with a stored secret (raises AuthError when it cannot).
ScramFactory = Callable[[str], ScramClient]


def transient_sqlstate(code: str) -> bool:
    """Whether a login error with this SQLSTATE is worth another try soon (the server is
    shutting down, starting up, or has too many clients), rather than a lasting refusal."""
    return code[:2] in _TRANSIENT_CLASSES


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send to the server."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Parameter:
    """The server reported a parameter (ParameterStatus)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKey:
    """The backend's process id and cancel key (BackendKeyData)."""

    pid: int
    key: int


@dataclass(frozen=True, slots=True)
class LoginDone:
    """ReadyForQuery: the login is over, with every parameter reported and the key."""

    params: dict[str, str]
    pid: int
    key: int


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """The login cannot go on. ``severity`` is the server's word for an ErrorResponse
    (FATAL), empty when the pooler itself gave up (a bad message, no way to authenticate)."""

    error: ServerError
    severity: str = ""


Action = Send | Parameter | BackendKey | LoginDone | LoginFailed


class ServerLogin:
    """Logs in as ``user`` to ``database``; ``params`` go in the startup message after them.

    ``password`` is the stored secret (plain, md5 hash or SCRAM secret) or None; ``scram``
    makes the SCRAM client for it; ``who`` names the login in the error for a missing
    password ("no password known for <who>").
    """

    __slots__ = ("_password", "_scram", "_scram_factory", "_startup", "_who", "key", "params",
                 "pid", "reader", "state", "user")

    def __init__(self, user: str, database: str, params: Mapping[str, str],
                 password: str | None, scram: ScramFactory, *, who: str,
                 max_size: int = MAX_LOGIN_MESSAGE) -> None:
        self.user = user
        self._startup = {"user": user, "database": database}
        self._startup.update(params)
        self._password = password
        self._scram_factory = scram
        self._who = who
        self._scram: ScramClient | None = None
        self.reader = MessageReader(max_size)
        self.state = LOGIN
        self.pid = 0
        self.key = 0
        self.params: dict[str, str] = {}  # reported so far

    def startup(self) -> bytes:
        """The startup message, the first bytes of the login."""
        return m.startup_message(self._startup)

    def feed(self, data: bytes) -> list[Action]:
        """Take received bytes; return the actions they call for, in order. The list ends
        with LoginDone or LoginFailed when the login ended; the bytes after ReadyForQuery
        stay in ``reader``."""
        if self.state != LOGIN:
            raise PgusherError(f"server login fed after it ended ({self.state})")
        reader = self.reader
        reader.push(data)
        actions: list[Action] = []
        while self.state == LOGIN:
            try:
                message = reader.next()
            except ProtocolError:
                self._fail(actions, ServerError("invalid packet from server during login"))
                break
            if message is None:
                break
            try:
                self._message(message[0], message[1], actions)
            except (AuthError, ProtocolError) as exc:
                # The pooler's own verdict (a message it cannot read, no way to answer):
                # whatever the exception's SQLSTATE, for the pool it is a failed connection.
                self._fail(actions, ServerError(exc.message))
        return actions

    # ------------------------------------------------------------------ messages

    def _move(self, new: str) -> None:
        if new not in _MOVES[self.state]:
            raise PgusherError(f"server login state {self.state} cannot become {new}")
        self.state = new

    def _fail(self, actions: list[Action], error: ServerError, severity: str = "") -> None:
        self._move(FAILED)
        self._scram = None
        actions.append(LoginFailed(error, severity))

    def _message(self, kind: int, body: bytes, actions: list[Action]) -> None:
        if kind == _R_AUTH:
            self._auth_request(body, actions)
        elif kind == _S_PARAMETER:
            name, value = m.parse_parameter_status(body)
            self.params[name] = value
            actions.append(Parameter(name, value))
        elif kind == _K_KEY:
            if len(body) < 8:
                raise ProtocolError("malformed BackendKeyData message")
            self.pid, self.key = _PID_KEY.unpack_from(body, 0)
            actions.append(BackendKey(self.pid, self.key))
        elif kind == _E_ERROR:
            fields = m.parse_error_fields(body)
            code = fields.get("C", "08006")
            # Shutting down, starting up, too many clients: worth another try soon.
            error = ServerError(fields.get("M", "server login failed"), sqlstate=code,
                                transient=transient_sqlstate(code))
            self._fail(actions, error, fields.get("S", "FATAL"))
        elif kind == _Z_READY:
            self._move(DONE)
            self._scram = None
            actions.append(LoginDone(self.params, self.pid, self.key))
        # NoticeResponse, NegotiateProtocolVersion and anything else during login: ignored.

    def _auth_request(self, body: bytes, actions: list[Action]) -> None:
        code, payload = m.parse_auth_request(body)
        if code == m.AUTH_OK:
            return
        if code == m.AUTH_SASL_FINAL:
            if self._scram is None:
                raise ProtocolError("unexpected SASL final message from server")
            self._scram.verify_server_final(payload)
            return
        if code == m.AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise ProtocolError("unexpected SASL continue message from server")
            actions.append(Send(m.sasl_response(self._scram.client_final(payload))))
            return
        password = self._password
        if password is None:
            raise AuthError(f"no password known for {self._who}")
        if code == m.AUTH_CLEARTEXT:
            if password.startswith("md5") or is_scram_secret(password):
                raise AuthError("cannot do cleartext authentication: stored password is hashed")
            actions.append(Send(m.password_message(password.encode())))
        elif code == m.AUTH_MD5:
            if is_scram_secret(password):
                raise AuthError("cannot do md5 authentication: password is a SCRAM secret")
            actions.append(Send(m.password_message(
                md5_salted_response(self.user, password, payload[:4]))))
        elif code == m.AUTH_SASL:
            mechanisms = m.split_cstrings(payload)
            if "SCRAM-SHA-256" not in mechanisms:
                raise AuthError(f"server offered no supported SASL mechanism: {mechanisms}")
            self._scram = self._scram_factory(password)
            actions.append(Send(m.sasl_initial_response("SCRAM-SHA-256",
                                                        self._scram.client_first())))
        else:
            raise AuthError(f"unsupported server authentication method {code}")
