"""The states of client and server connections, and the moves allowed between them.

Strategy: each state is an enum member; the moves are a table, and :func:`move` is the only
way to change a connection's state, so an illegal move raises :class:`IllegalMove` where it is
made instead of surfacing later as a confused pool. A server's state also says which of its
pool's containers holds it (see :meth:`Pool.move`): SHOW POOLS reads their sizes.

Clients: a TCP connection starts in STARTUP (or TLS_HANDSHAKE after an SSLRequest), passes
AUTH, waits in LOGIN_WAIT while the pool learns its server's parameters, and is READY from its
welcome on. CANCEL is a connection that carried a CancelRequest; AUTH_FAILED one that is being
told (after the auth delay) that its password was wrong.

Servers: CONNECTING until the socket is open, LOGIN until ReadyForQuery, then IDLE (parked),
ACTIVE (linked to a client, or held for a cancel still with the postmaster) or TESTED (running
the pooler's own query while no client has it: reset, check, rollback, read-back).
"""

from __future__ import annotations

import enum
from typing import Protocol

from ..errors import PgusherError

# Pool modes: when a server goes back to its pool.
SESSION = "session"
TRANSACTION = "transaction"
STATEMENT = "statement"


class ClientState(enum.Enum):
    # Members are singletons: hashing by identity keeps the table lookups in C.
    __hash__ = object.__hash__

    TLS_HANDSHAKE = "tls_handshake"
    STARTUP = "startup"
    AUTH = "auth"
    AUTH_FAILED = "auth_failed"
    LOGIN_WAIT = "login_wait"
    READY = "ready"
    CANCEL = "cancel"
    CLOSED = "closed"


class ServerState(enum.Enum):
    __hash__ = object.__hash__

    CONNECTING = "connecting"
    LOGIN = "login"
    IDLE = "idle"
    ACTIVE = "active"
    TESTED = "tested"
    CLOSED = "closed"


TLS_HANDSHAKE = ClientState.TLS_HANDSHAKE
STARTUP = ClientState.STARTUP
AUTH = ClientState.AUTH
AUTH_FAILED = ClientState.AUTH_FAILED
LOGIN_WAIT = ClientState.LOGIN_WAIT
READY = ClientState.READY
CANCEL = ClientState.CANCEL
CLOSED = ClientState.CLOSED

CONNECTING = ServerState.CONNECTING
LOGIN = ServerState.LOGIN
IDLE = ServerState.IDLE
ACTIVE = ServerState.ACTIVE
TESTED = ServerState.TESTED
SERVER_CLOSED = ServerState.CLOSED

# Logging in, as SHOW POOLS and the janitor count it.
CLIENT_LOGIN = frozenset((TLS_HANDSHAKE, STARTUP, AUTH, LOGIN_WAIT))

CLIENT_MOVES: dict[ClientState, frozenset[ClientState]] = {
    # A plain-text SSLRequest answered 'S' starts the handshake; the console's own
    # connections go from STARTUP straight to AUTH and READY.
    STARTUP: frozenset((TLS_HANDSHAKE, AUTH, CANCEL, CLOSED)),
    TLS_HANDSHAKE: frozenset((STARTUP, CLOSED)),
    AUTH: frozenset((AUTH_FAILED, LOGIN_WAIT, READY, CLOSED)),
    AUTH_FAILED: frozenset((CLOSED,)),
    LOGIN_WAIT: frozenset((READY, CLOSED)),
    READY: frozenset((CLOSED,)),
    CANCEL: frozenset((CLOSED,)),
    CLOSED: frozenset(),
}

SERVER_MOVES: dict[ServerState, frozenset[ServerState]] = {
    CONNECTING: frozenset((LOGIN, SERVER_CLOSED)),
    LOGIN: frozenset((IDLE, ACTIVE, TESTED, SERVER_CLOSED)),
    IDLE: frozenset((ACTIVE, TESTED, SERVER_CLOSED)),
    # ACTIVE to ACTIVE: handed from one client straight to the next waiter.
    ACTIVE: frozenset((ACTIVE, IDLE, TESTED, SERVER_CLOSED)),
    TESTED: frozenset((ACTIVE, IDLE, TESTED, SERVER_CLOSED)),
    SERVER_CLOSED: frozenset((SERVER_CLOSED,)),  # closing twice is a no-op
}


class IllegalMove(PgusherError):
    """A connection was asked to make a move its state table does not allow (a bug)."""

    sqlstate = "XX000"


class HasClientState(Protocol):
    state: ClientState


class HasServerState(Protocol):
    state: ServerState


def move_client(conn: HasClientState, new: ClientState) -> None:
    if new not in CLIENT_MOVES[conn.state]:
        raise IllegalMove(f"client state {conn.state.value} cannot become {new.value}")
    conn.state = new


def move_server(conn: HasServerState, new: ServerState) -> None:
    if new not in SERVER_MOVES[conn.state]:
        raise IllegalMove(f"server state {conn.state.value} cannot become {new.value}")
    conn.state = new
