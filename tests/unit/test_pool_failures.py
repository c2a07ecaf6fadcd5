"""Pool policy when server logins fail: who waits, who is refused, when the next attempt comes.

A fake application and clock stand in for the event loop (poolfakes.py); no connection is
opened.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from poolfakes import App, Client, Target

from pgusher.errors import ServerError
from pgusher.pooling.pool import Pool
from pgusher.pooling.states import CONNECTING

REFUSED = ServerError("pgusher cannot connect to server", transient=True)
SHUTTING_DOWN = ServerError("the database system is shutting down", sqlstate="57P03",
                            transient=True)
BAD_PASSWORD = ServerError('password authentication failed for user "app"', sqlstate="28P01")


class Server:
    """A connection attempt: it only sits in the pool's login container."""

    state = CONNECTING


class CountingPool(Pool):
    """A pool whose connection attempts are only counted; the test says how each ends."""

    __slots__ = ("attempts",)

    def open_server(self) -> None:
        self.login.add(Server())  # type: ignore[arg-type]
        self.attempts.append(self.app.loop.time())


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.app = App(**settings)
        self.pool = CountingPool(self.app, Target(), "app", None,  # type: ignore[arg-type]
                                 "transaction")
        self.attempts: list[float] = []
        self.pool.attempts = self.attempts

    @property
    def now(self) -> float:
        return self.app.loop.now

    def fail_all(self, error: ServerError) -> None:
        while self.pool.login:
            self.pool.server_failed(next(iter(self.pool.login)), error)

    def worked_until_now(self) -> None:
        """A logged-in server of the pool has just been lost (as in a restart)."""
        self.pool.alive_at = self.now

    def request(self) -> Client:
        client = Client()
        self.pool.request(client)  # type: ignore[arg-type]
        return client


def test_restart_holds_waiters_and_backs_off() -> None:
    h = Harness(server_login_retry=15.0)
    h.worked_until_now()
    waiters = [h.request() for _ in range(4)]
    assert len(h.attempts) == 3  # up to the pool size at once
    h.fail_all(SHUTTING_DOWN)
    assert not any(c.closed for c in waiters)
    assert h.pool.held
    # Then one attempt at a time: every 50 ms at first, then an eighth of the time logins
    # have failed, up to server_login_retry.
    begin = h.now
    h.attempts.clear()
    for _ in range(80):
        h.app.loop.run_until(h.pool.retry_at)
        assert h.pool.connecting == 1
        h.fail_all(REFUSED)
    gaps = [b - a for a, b in itertools.pairwise(h.attempts)]
    assert gaps[0] == pytest.approx(0.05)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps))
    assert max(gaps) == pytest.approx(15.0)
    for at, gap in zip(h.attempts, gaps, strict=False):
        assert gap <= max(0.05, (at - begin) / 8) + 1e-6
    # The waiters are still there (query_wait_timeout, in the janitor, ends their wait).
    assert not any(c.closed for c in waiters)
    assert len(h.pool.waiting) == 4


def test_new_clients_wait_then_are_refused() -> None:
    h = Harness(server_login_retry=2.0)
    h.worked_until_now()
    h.request()
    h.fail_all(REFUSED)
    h.app.loop.run_until(h.now + 1.0)
    early = h.request()
    assert not early.closed and early.waiting  # a restart may be nearly over
    h.fail_all(REFUSED)
    h.app.loop.run_until(h.now + 1.5)
    h.fail_all(REFUSED)
    late = h.request()  # failing for longer than server_login_retry
    assert late.closed and late.error is not None
    assert "server login has been failing" in late.error.message
    assert not early.closed


def test_refused_client_brings_about_the_next_attempt() -> None:
    h = Harness(server_login_retry=1.0)
    h.worked_until_now()
    waiter = h.request()
    h.fail_all(REFUSED)
    h.pool.cancel_wait(waiter)  # e.g. query_wait_timeout
    h.app.loop.run_until(h.now + 5)
    assert not h.pool.connecting  # nobody waits: no attempts
    h.attempts.clear()
    refused = h.request()
    assert refused.closed
    assert len(h.attempts) == 1  # the server may be back: the next client will know


def test_server_never_reached_fails_waiters_at_once() -> None:
    h = Harness(server_login_retry=15.0)
    first = h.request()
    h.fail_all(REFUSED)
    assert first.closed and first.error is not None
    assert first.error.message == "pgusher cannot connect to server"
    assert not h.pool.held
    second = h.request()
    assert second.closed and second.error is not None
    assert "server login has been failing" in second.error.message
    assert h.pool.retry_at == pytest.approx(h.now + 15.0)


def test_a_permanent_error_ends_the_hold() -> None:
    h = Harness(server_login_retry=15.0)
    h.worked_until_now()
    waiter = h.request()
    h.fail_all(SHUTTING_DOWN)
    assert not waiter.closed
    h.app.loop.run_until(h.pool.retry_at)
    h.fail_all(BAD_PASSWORD)  # back, but the password no longer works
    assert waiter.closed and waiter.error is not None
    assert waiter.error.sqlstate == "28P01"
    assert not h.pool.held
    assert h.pool.retry_at == pytest.approx(h.now + 15.0)


def test_a_server_lost_long_ago_is_not_waited_for() -> None:
    h = Harness(server_login_retry=1.0)
    h.worked_until_now()
    h.app.loop.run_until(h.now + 60)
    waiter = h.request()
    h.fail_all(REFUSED)
    assert waiter.closed


def test_a_login_ends_the_failures() -> None:
    h = Harness(server_login_retry=15.0)
    h.worked_until_now()
    waiters = [h.request() for _ in range(5)]
    h.fail_all(REFUSED)
    h.app.loop.run_until(h.pool.retry_at)
    assert h.pool.connecting == 1
    h.pool.login.clear()  # it logged in (and went to a waiter)
    h.pool.forget_failure()
    h.pool.grow()  # what server_logged_in does after handing the new server over
    assert h.pool.connecting == 3
    assert not h.pool.failing_since and not any(c.closed for c in waiters)
