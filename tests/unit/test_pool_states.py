"""The state tables, and the pool's containers and release rules, without sockets.

Servers and clients are fakes that record what the pool asks of them (poolfakes.py holds the
application and clock); the pool under test is the real one.
"""

from __future__ import annotations

from typing import Any

import pytest
from poolfakes import App, Target

from pgusher.errors import ServerError
from pgusher.pooling.internal import CHECK, RESET, ROLLBACK, UNLISTEN, Internal
from pgusher.pooling.pool import Pool
from pgusher.pooling.states import (
    ACTIVE,
    AUTH,
    CLIENT_MOVES,
    CLOSED,
    CONNECTING,
    IDLE,
    LOGIN,
    LOGIN_WAIT,
    READY,
    SERVER_CLOSED,
    SERVER_MOVES,
    STARTUP,
    TESTED,
    ClientState,
    IllegalMove,
    ServerState,
    move_client,
    move_server,
)


class Muted:
    mute = True  # a server that ran a client's LISTEN drops its own notifications


class Server:
    """What the pool reads and calls on a server connection."""

    def __init__(self, state: ServerState = LOGIN) -> None:
        self.state = state
        self.closed = False
        self.close_reason = ""
        self.cancels: list[object] = []
        self.hold = False
        self.dirty = False
        self.expires_at = float("inf")
        self.needs_reset = False
        self.listened = False
        self.stream = Muted()
        self.link = None
        self.client: Any = None
        self.idle_since = 0.0
        self.internal: list[tuple[Internal, str]] = []
        self.resets = 0
        self.closed_because = ""

    def held_for_cancel(self) -> bool:
        return self.hold

    def should_close(self) -> bool:
        self.close_reason = "database configuration changed" if self.dirty else ""
        return bool(self.close_reason)

    async def connect(self) -> None:
        raise AssertionError("never run: the loop is a fake")

    def close(self, reason: str) -> None:
        self.closed = True
        self.closed_because = reason
        self.state = SERVER_CLOSED

    def run_internal(self, kind: Internal, sql: str) -> None:
        self.internal.append((kind, sql))

    def statements_reset(self) -> None:
        self.resets += 1

    def make_idle(self) -> None:
        self.client = None


class Client:
    def __init__(self, application: str = "") -> None:
        self.stats = type("Stats", (), {"application": application})()
        self.closed = False
        self.waiting = False
        self.server: Server | None = None

    def start_wait(self) -> None:
        self.waiting = True

    def stop_wait(self) -> None:
        self.waiting = False

    def attach(self, server: Server) -> None:
        self.server = server
        server.client = self


class App2(App):
    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.now = 0.0
        self.idle_events = 0
        self.pool_size = 1  # the tests hand the pool its servers: it opens none

    def new_server(self, pool: Pool) -> Server:
        raise AssertionError("the pool opened a server")

    def on_server_idle(self, pool: Pool) -> None:
        self.idle_events += 1


def make_pool(**settings: Any) -> tuple[Pool, App2]:
    app = App2(**settings)
    pool = Pool(app, Target(), "app", None, "transaction")  # type: ignore[arg-type]
    return pool, app


def containers(pool: Pool) -> dict[str, int]:
    return {"login": len(pool.login), "idle": len(pool.idle), "active": len(pool.active),
            "tested": len(pool.tested)}


def logged_in(pool: Pool, n: int) -> list[Server]:
    """``n`` servers that have just logged in, each handed to the pool."""
    servers = [Server() for _ in range(n)]
    for server in servers:
        pool.login.add(server)  # type: ignore[arg-type]
        pool.give(server)  # type: ignore[arg-type]
    return servers


# ---------------------------------------------------------------------- the tables


def test_every_state_has_a_row() -> None:
    assert set(CLIENT_MOVES) == set(ClientState)
    assert set(SERVER_MOVES) == set(ServerState)


@pytest.mark.parametrize(("start", "new"), [(STARTUP, AUTH), (AUTH, LOGIN_WAIT),
                                            (LOGIN_WAIT, READY), (READY, CLOSED)])
def test_the_login_path_is_allowed(start: ClientState, new: ClientState) -> None:
    class Conn:
        state = start

    conn = Conn()
    move_client(conn, new)
    assert conn.state is new


@pytest.mark.parametrize(("start", "new"), [(READY, AUTH), (CLOSED, READY), (STARTUP, READY),
                                            (LOGIN_WAIT, AUTH)])
def test_an_illegal_client_move_raises_and_changes_nothing(start: ClientState,
                                                           new: ClientState) -> None:
    class Conn:
        state = start

    conn = Conn()
    with pytest.raises(IllegalMove):
        move_client(conn, new)
    assert conn.state is start


@pytest.mark.parametrize(("start", "new"), [(IDLE, LOGIN), (SERVER_CLOSED, ACTIVE),
                                            (CONNECTING, IDLE), (ACTIVE, CONNECTING)])
def test_an_illegal_server_move_raises(start: ServerState, new: ServerState) -> None:
    server = Server(start)
    with pytest.raises(IllegalMove):
        move_server(server, new)
    assert server.state is start


def test_nothing_leaves_closed() -> None:
    assert CLIENT_MOVES[CLOSED] == frozenset()
    assert SERVER_MOVES[SERVER_CLOSED] == frozenset((SERVER_CLOSED,))


# ---------------------------------------------------------------------- containers


def test_a_server_is_in_the_container_its_state_names() -> None:
    pool, _ = make_pool()
    server = Server()
    pool.login.add(server)  # type: ignore[arg-type]
    steps = [(IDLE, "idle"), (ACTIVE, "active"), (TESTED, "tested"), (ACTIVE, "active"),
             (IDLE, "idle"), (TESTED, "tested"), (IDLE, "idle")]
    for state, place in steps:
        pool.move(server, state)  # type: ignore[arg-type]
        assert server.state is state
        assert containers(pool) == {"login": 0, "idle": 0, "active": 0, "tested": 0} | {place: 1}
    assert pool.total == 1


def test_an_illegal_move_leaves_the_containers_alone() -> None:
    pool, _ = make_pool()
    (server,) = logged_in(pool, 1)
    with pytest.raises(IllegalMove):
        pool.move(server, LOGIN)  # type: ignore[arg-type]
    assert server.state is IDLE and pool.idle == [server]


def test_idle_servers_are_reused_warmest_first() -> None:
    pool, _ = make_pool()
    servers = logged_in(pool, 3)
    client = Client()
    pool.request(client)  # type: ignore[arg-type]
    assert client.server is servers[-1] and servers[-1].state is ACTIVE
    assert pool.idle == servers[:2]


def test_round_robin_takes_the_oldest_idle_server() -> None:
    pool, _ = make_pool(server_round_robin=True)
    servers = logged_in(pool, 3)
    client = Client()
    pool.request(client)  # type: ignore[arg-type]
    assert client.server is servers[0] and pool.idle == servers[1:]


# ---------------------------------------------------------------------- release rules


def test_a_released_server_goes_to_the_first_waiter() -> None:
    pool, app = make_pool()
    (server,) = logged_in(pool, 1)
    first, second, third = Client(), Client(), Client()
    for client in (first, second, third):
        pool.request(client)  # type: ignore[arg-type]
    assert first.server is server and second.waiting and third.waiting
    second.closed = True  # left while waiting: skipped
    pool.release(server)  # type: ignore[arg-type]
    assert third.server is server and not third.waiting and server.state is ACTIVE
    pool.release(server)  # type: ignore[arg-type]
    assert server.state is IDLE and pool.idle == [server] and app.idle_events == 2


def test_a_server_to_reset_runs_the_reset_query_out_of_the_pool() -> None:
    pool, _ = make_pool(server_reset_query="DISCARD ALL")
    (server,) = logged_in(pool, 1)
    client = Client()
    pool.request(client)  # type: ignore[arg-type]
    server.needs_reset = True
    waiter = Client()
    pool.request(waiter)  # type: ignore[arg-type]
    pool.release(server)  # type: ignore[arg-type]
    assert server.internal == [(RESET, "DISCARD ALL")] and server.state is TESTED
    assert waiter.waiting and waiter.server is None  # not before the reset is answered
    pool.internal_done(server, RESET, True)  # type: ignore[arg-type]
    assert waiter.server is server and server.state is ACTIVE and server.resets == 1


def test_a_server_that_ran_listen_unlistens_then_resets_before_the_next_client() -> None:
    pool, _ = make_pool(server_reset_query="DISCARD ALL")
    (server,) = logged_in(pool, 1)
    pool.request(Client())  # type: ignore[arg-type]
    server.listened = server.needs_reset = True
    waiter = Client()
    pool.request(waiter)  # type: ignore[arg-type]
    pool.release(server)  # type: ignore[arg-type]
    assert server.internal == [(UNLISTEN, "UNLISTEN *")] and server.state is TESTED
    pool.internal_done(server, UNLISTEN, True)  # type: ignore[arg-type]
    assert not server.stream.mute and not server.listened
    assert server.internal[-1] == (RESET, "DISCARD ALL") and waiter.server is None
    pool.internal_done(server, RESET, True)  # type: ignore[arg-type]
    assert waiter.server is server and server.state is ACTIVE
    pool.request(Client())  # type: ignore[arg-type]  # (queued: the one server is busy)
    server.listened = True
    pool.release(server)  # type: ignore[arg-type]
    pool.internal_done(server, UNLISTEN, False)  # type: ignore[arg-type]
    assert server.closed and server.closed_because == "server UNLISTEN failed"


def test_a_failed_reset_closes_the_server() -> None:
    pool, _ = make_pool(server_reset_query="DISCARD ALL")
    (server,) = logged_in(pool, 1)
    pool.request(Client())  # type: ignore[arg-type]
    server.needs_reset = True
    pool.release(server)  # type: ignore[arg-type]
    pool.internal_done(server, RESET, False)  # type: ignore[arg-type]
    assert server.closed and server.closed_because == "server reset query failed"
    assert server.resets == 0


def test_a_rollback_of_the_poolers_own_is_not_a_reset() -> None:
    pool, _ = make_pool()
    (server,) = logged_in(pool, 1)
    pool.move(server, TESTED)  # type: ignore[arg-type]
    pool.internal_done(server, ROLLBACK, True)  # type: ignore[arg-type]
    assert server.resets == 0 and server.state is IDLE
    pool.move(server, TESTED)  # type: ignore[arg-type]
    pool.internal_done(server, CHECK, False)  # type: ignore[arg-type]
    assert server.closed_because == "server check query failed"


def test_a_server_a_cancel_holds_stays_out_of_the_pool() -> None:
    pool, _ = make_pool()
    (server,) = logged_in(pool, 1)
    pool.request(Client())  # type: ignore[arg-type]
    waiter = Client()
    pool.request(waiter)  # type: ignore[arg-type]
    server.cancels.append(object())
    server.hold = True
    pool.release(server)  # type: ignore[arg-type]
    assert server.state is ACTIVE and waiter.server is None and pool.active == {server}
    server.hold = False
    pool.release(server)  # type: ignore[arg-type]
    assert waiter.server is server


def test_a_server_whose_database_changed_is_closed_at_release() -> None:
    pool, _ = make_pool()
    (server,) = logged_in(pool, 1)
    pool.request(Client())  # type: ignore[arg-type]
    server.dirty = True
    pool.release(server)  # type: ignore[arg-type]
    assert server.closed and server.closed_because == "database configuration changed"


def test_a_closed_server_leaves_every_container() -> None:
    pool, _ = make_pool()
    servers = logged_in(pool, 3)
    pool.request(Client())  # type: ignore[arg-type]
    pool.move(servers[0], TESTED)  # type: ignore[arg-type]
    for server in servers:
        server.close("gone")
        pool.server_gone(server)  # type: ignore[arg-type]
    assert containers(pool) == {"login": 0, "idle": 0, "active": 0, "tested": 0}


# ---------------------------------------------------------------------- limit counts


def test_server_counts_follow_every_way_a_server_comes_and_goes() -> None:
    pool, app = make_pool()
    app.new_server = lambda pool: Server(CONNECTING)  # type: ignore[assignment,method-assign]
    started: list[object] = []
    app.loop.create_task = started.append  # type: ignore[attr-defined]
    for _ in range(3):
        pool.open_server()
    assert len(started) == 3
    for coroutine in started:
        coroutine.close()  # type: ignore[attr-defined]  # never run
    assert app.server_counts.db("app") == app.server_counts.user("app") == 3 == pool.total
    first, second, third = list(pool.login)
    pool.server_failed(first, ServerError("refused", transient=True))
    for server in (second, third):
        server.state = LOGIN  # connected (ServerConn.connection_made), then logged in
        pool.give(server)
    assert app.server_counts.db("app") == 2 == pool.total
    second.close("gone")
    pool.server_gone(second)
    pool.server_gone(second)  # reported twice: counted once
    assert app.server_counts.db("app") == 1 == pool.total
    third.close("gone")
    pool.server_gone(third)
    assert app.server_counts.by_db == {} and app.server_counts.by_user == {}
