"""The waiting clients' queue: FIFO within an application, turns by weight between them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgusher.pooling.queue import FairQueue


@dataclass(eq=False)
class W:
    app: str
    n: int


def queue(weights: dict[str, float] | None = None) -> FairQueue[W]:
    return FairQueue(lambda w: w.app, weights)


def test_one_application_is_fifo() -> None:
    q = queue()
    items = [W("a", i) for i in range(5)]
    for item in items:
        q.append(item)
    first = W("a", -1)
    q.appendleft(first)
    assert q[0] is first and list(q) == [first, *items]
    assert [q.popleft().n for _ in range(6)] == [-1, 0, 1, 2, 3, 4]
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.popleft()


def test_a_noisy_application_does_not_starve_a_quiet_one() -> None:
    q = queue()
    for i in range(100):
        q.append(W("noisy", i))
    for i in range(3):
        q.append(W("quiet", i))
    served = [q.popleft().app for _ in range(6)]
    assert served.count("quiet") == 3  # turns: the quiet ones are not behind 100 others


def test_weights_share_servers_in_proportion() -> None:
    q = queue({"api": 3})
    for i in range(40):
        q.append(W("api", i))
        q.append(W("report", i))
    served = [q.popleft().app for _ in range(40)]
    assert served.count("api") == 30 and served.count("report") == 10


def test_an_application_that_comes_back_has_no_credit() -> None:
    q = queue()
    for i in range(10):
        q.append(W("busy", i))
    for _ in range(5):
        q.popleft()
    for i in range(5):
        q.append(W("late", i))
    served = [q.popleft().app for _ in range(6)]
    assert served.count("late") == 3  # alternating, not five in a row


def test_an_application_at_its_limit_is_passed_over() -> None:
    q = queue()
    for i in range(3):
        q.append(W("greedy", i))
    q.append(W("small", 0))
    assert sorted(q.apps()) == ["greedy", "small"]
    assert q.popleft({"greedy"}).app == "small"
    with pytest.raises(IndexError):
        q.popleft({"greedy"})
    assert [q.popleft().n for _ in range(3)] == [0, 1, 2]  # its turn keeps its order


def test_remove_and_clear() -> None:
    q = queue()
    a, b, c = W("x", 1), W("y", 2), W("x", 3)
    for item in (a, b, c):
        q.append(item)
    q.remove(a)
    assert list(q) == [b, c] and q[0] is b
    with pytest.raises(ValueError):
        q.remove(a)
    q.clear()
    assert not q and list(q) == []


@settings(max_examples=300, deadline=None, database=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "front", "pop", "remove"]),
                              st.sampled_from("abc")), max_size=60))
def test_every_client_comes_out_once(ops: list[tuple[str, str]]) -> None:
    q = queue({"b": 2.5})
    inside: list[W] = []
    out: list[W] = []
    for n, (op, app) in enumerate(ops):
        if op in ("add", "front"):
            item = W(app, n)
            (q.append if op == "add" else q.appendleft)(item)
            inside.append(item)
        elif op == "pop" and inside:
            item = q.popleft()
            inside.remove(item)
            out.append(item)
        elif op == "remove" and inside:
            q.remove(inside.pop(0))
        assert len(q) == len(inside) and set(map(id, q)) == set(map(id, inside))
        if inside:
            assert q[0] is next(iter(q))
    assert len({id(i) for i in out}) == len(out)
