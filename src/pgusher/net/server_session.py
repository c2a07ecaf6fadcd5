"""What a server connection holds of its clients' sessions, and how the next client's goes on.

Strategy: a server keeps a record of the settings clients left on it (``session_sets``) and of
the reported parameters (``tracked``). Linking a client sends only the difference, as queries
of the pooler's own written ahead of the client's first bytes, their replies swallowed: stale
settings are reset, the client's are set, session authorization before the role (a change of
it resets the role, so the role is set again after one). After an opaque transaction the
pooler reads the session back (``run_capture``) to make the record true again; custom
settings nobody named cannot be listed, so until a ``RESET ALL`` only the same client may use
the server without one first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..pooling.internal import READ_BACK, Internal
from ..protocol import messages as m
from ..protocol.framing import ServerStream
from ..protocol.link import LinkState
from ..protocol.session import order_key, replay_sql

if TYPE_CHECKING:
    from ..app import Application
    from ..pooling.states import ServerState
    from .client_conn import ClientConn
    from .server_conn import ServerConn

CaptureDone = Callable[["ServerConn", bool, list[bytes]], None]

_AUTH = "session_authorization"
_IDENTITY_SETS = frozenset(("role", _AUTH))
_RESET_ALL = m.query("RESET ALL")


def sql_literal(value: str) -> str:
    """An escape-string literal, safe whatever standard_conforming_strings says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ServerSession:
    """The session part of :class:`ServerConn`; the attributes are ServerConn's."""

    if not TYPE_CHECKING:
        __slots__ = ()  # the slots are ServerConn's
    else:
        app: Application
        client: ClientConn | None
        state: ServerState
        stream: ServerStream
        link: LinkState | None
        params: dict[str, str]
        tracked: dict[str, str]
        initial_params: dict[str, str]
        session_sets: dict[str, str]
        dirty_reason: str
        custom_owner: object | None
        identity_reported: bool
        _capture_cb: CaptureDone | None
        run_internal_msg: Callable[[Internal, bytes], None]

    def statements_reset(self) -> None:
        """The server ran a reset: no prepared statements, no client settings any more."""
        link = self.link
        if link is not None:
            link.forget_all()
            link.needs_reset = False
        self.session_sets.clear()
        self.dirty_reason = ""
        self.custom_owner = None
        self.identity_reported = False

    def run_capture(self, msg: bytes, done: CaptureDone) -> None:
        """Send the read-back query ``msg`` (see protocol/capture.py); ``done(server, ok,
        rows)`` gets its DataRow bodies."""
        self._capture_cb = done
        self.stream.collect = []
        self.run_internal_msg(READ_BACK, msg)

    def _captured(self, ok: bool) -> None:
        rows = self.stream.collect or []
        self.stream.collect = None
        done, self._capture_cb = self._capture_cb, None
        if done is not None:
            done(cast("ServerConn", self), ok, rows)

    def attach(self, client: ClientConn) -> bytes:
        """Link to a client; returns the queries to send first when its settings differ.

        Each statement goes as a query of its own: a failing SET must not roll back a
        RESET ROLE sent with it, which is what would happen inside one multi-statement query.
        """
        self.client = client
        wanted = client.params
        queries: list[bytes] = []
        if self.custom_owner is not None and self.custom_owner is not client:
            self._reset_all(queries)
        if wanted != self.tracked:
            params = self.params
            queries.extend(m.query(f"SET {sql_ident(k)} = {sql_literal(v)}")
                           for k, v in wanted.items() if params.get(k) != v)
        want = client.session_sets
        have = self.session_sets
        if want != have:
            stale = sorted((n for n in have if n not in want), key=order_key)
            queries.extend(m.query(replay_sql(n, None)) for n in stale)
            # A change of session authorization resets the role: set it again after one.
            auth_changed = have.get(_AUTH) != want.get(_AUTH)
            fresh = sorted((n for n in want if have.get(n) != want[n]
                            or (auth_changed and n == "role")), key=order_key)
            queries.extend(m.query(replay_sql(n, want[n])) for n in fresh)
            self.session_sets = dict(want)
        if not queries:
            return b""
        self.stream.swallow += len(queries)
        return b"".join(queries)

    def _reset_all(self, queries: list[bytes]) -> None:
        """RESET ALL first: it clears custom settings a read-back could not list. The role
        and session authorization survive it; reported settings go back to login values."""
        self.custom_owner = None
        queries.append(_RESET_ALL)
        self.session_sets = {n: v for n, v in self.session_sets.items() if n in _IDENTITY_SETS}
        tracked = self.app.tracked_params
        for name, value in self.initial_params.items():
            canon = tracked.get(name.lower())
            if canon is not None:
                self.params[name] = value
                self.tracked[canon] = value

    def identity_drifted(self) -> bool:
        """The server reports another identity than at login while no client set one."""
        if not self.identity_reported:
            return False  # is_superuser / session_authorization not reported since login
        if "role" in self.session_sets or "session_authorization" in self.session_sets:
            return False
        params = self.params
        initial = self.initial_params
        return (params.get("is_superuser") != initial.get("is_superuser")
                or params.get("session_authorization") != initial.get("session_authorization"))

