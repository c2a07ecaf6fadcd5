"""The fleet's shares and claims, without a server: max-min fairness, and a budget that no
sequence of checks, openings and closings can exceed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pgusher.pooling.fleet import Member, claim, fair_shares


def test_fair_shares_examples() -> None:
    assert fair_shares(40, {"a": 10, "b": 10, "c": 10, "d": 10}) == {
        "a": 10, "b": 10, "c": 10, "d": 10}
    assert fair_shares(12, {"a": 10, "b": 10, "c": 1}) == {"a": 6, "b": 5, "c": 1}
    assert fair_shares(10, {"a": 1, "b": 100}) == {"a": 1, "b": 9}
    assert fair_shares(3, {"a": 5, "b": 5, "c": 5, "d": 5}) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert fair_shares(0, {"a": 5}) == {"a": 0}


@settings(max_examples=500, deadline=None, database=None)
@given(budget=st.integers(0, 60),
       wants=st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3),
                             st.integers(0, 30), min_size=1, max_size=8))
def test_fair_shares_are_max_min_fair(budget: int, wants: dict[str, int]) -> None:
    shares = fair_shares(budget, wants)
    assert set(shares) == set(wants)
    assert sum(shares.values()) <= budget
    assert all(0 <= shares[n] <= wants[n] for n in wants)
    if sum(wants.values()) <= budget:
        assert shares == wants
    else:
        assert sum(shares.values()) == budget  # nothing left unused that someone wants
        # Whoever got less than it wants got at least as much as anyone else, but one.
        for name, share in shares.items():
            if share < wants[name]:
                assert all(other <= share + 1 for other in shares.values())


# One step of a fleet: ("check", member, demand), ("open", member), ("close", member).
steps = st.lists(st.tuples(st.sampled_from(["check", "open", "close"]), st.integers(0, 4),
                           st.integers(0, 25)), max_size=200)


@settings(max_examples=400, deadline=None, database=None)
@given(budget=st.integers(1, 30), floor=st.integers(0, 3), script=steps)
def test_no_sequence_of_checks_exceeds_the_budget(budget: int, floor: int,
                                                 script: list[tuple[str, int, int]]) -> None:
    """Members check one at a time (the advisory lock), open servers only below their grant
    and close them at any time; what they hold, and what the table counts, stay within the
    budget."""
    names = [f"m{i}" for i in range(5)]
    grant = dict.fromkeys(names, 0)
    live = dict.fromkeys(names, 0)
    rows: dict[str, Member] = {}
    for action, who, demand in script:
        me = names[who]
        if action == "check":
            others = [row for name, row in rows.items() if name != me]
            grant[me], _share = claim(budget, me, demand, live[me], others, floor)
            rows[me] = Member(me, demand, grant[me], live[me])
        elif action == "open" and live[me] < grant[me]:
            live[me] += 1
        elif action == "close" and live[me]:
            live[me] -= 1
        assert sum(live.values()) <= budget
        assert sum(max(r.granted, r.live) for r in rows.values()) <= budget


def test_a_member_over_its_grant_is_told_to_give_back() -> None:
    others = [Member("b", 10, 0, 0)]
    grant, share = claim(10, "a", 10, 8, others, 1)
    assert (grant, share) == (5, 5)  # it holds 8: three go back as they are released
    # Until they do, b can only claim what a's row leaves.
    grant_b, share_b = claim(10, "b", 10, 0, [Member("a", 10, 5, 8)], 1)
    assert (grant_b, share_b) == (2, 5)
