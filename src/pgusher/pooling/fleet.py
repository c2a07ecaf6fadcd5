"""A fleet's budget of server connections: who may hold how many (pure decisions).

Strategy: pgusher processes that name the same fleet share, for each database, a budget of
server connections (``fleet_max_db_connections``). They coordinate through the PostgreSQL
server they already use, in a small table of claims (net/fleet.py runs the queries): one
row per process and database with its *demand* (servers in use plus clients waiting, the
most seen since its last check, or the floor when idle), its *grant* (servers it may hold),
the servers it holds (*live*) and a heartbeat. A process changes its own row only inside a
transaction that holds an advisory lock for the fleet and database, so the claims are read
and written one process at a time.

What a process may claim there (:func:`claim`):

* its fair share: the budget filled like water over every member's want (its demand, at
  least the floor ``fleet_min_share``), so a member that wants less than an equal part gets
  all it wants and the rest is shared equally among the others (max-min fairness); ties of
  the integer division go to the members in the order of their names, so every member works
  out the same shares from the same rows;
* but never more than the budget minus what the others claim now, each counted at the larger
  of its grant and the servers it held when it last wrote its row.

A member opens servers only while it holds fewer than its grant. When its grant falls below
what it holds, it closes servers as they come back to its pool, and until then its row counts
them: the others cannot claim that part yet. So the sum of the claims never exceeds the
budget, even while shares move, and neither do the servers, which never exceed the claims. A
member that stops (killed, or cut off) stops counting once its heartbeat is older than
``fleet_lease_timeout``: its row is deleted by the next member that looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """One row of the claims table, as read in the locked transaction."""

    instance: str
    demand: int
    granted: int
    live: int
    age: float = 0.0  # seconds since its heartbeat, when read


def fair_shares(budget: int, wants: Mapping[str, int]) -> dict[str, int]:
    """Max-min fair shares of ``budget`` among ``wants``; never more than a member wants."""
    shares: dict[str, int] = {}
    left = budget
    order = sorted(wants, key=lambda name: (wants[name], name))
    for i, name in enumerate(order):
        members_left = len(order) - i
        equal, extra = divmod(left, members_left) if left > 0 else (0, 0)
        want = wants[name]
        if want <= equal:
            shares[name] = want
        else:
            # Every member from here on wants more than an equal part: share what is left.
            for j, rest in enumerate(sorted(order[i:])):
                shares[rest] = equal + (1 if j < extra else 0)
            return shares
        left -= want
    return shares


def claim(budget: int, me: str, demand: int, live: int, others: list[Member],
          floor: int) -> tuple[int, int]:
    """(grant, fair share) for member ``me`` wanting ``demand``, given the other members'
    rows. The grant may be below ``live``: the member then gives servers back."""
    wants = {m.instance: max(m.demand, floor) for m in others}
    wants[me] = max(demand, floor)
    share = fair_shares(budget, wants)[me]
    taken = sum(max(m.granted, m.live) for m in others)
    return max(0, min(share, budget - taken)), share
