"""Moving server connections between workers, every clock tick (0.1 s).

Strategy: limits are shared, servers are not: an idle server in one worker cannot serve a
client waiting in another. So a worker whose clients wait while the shared table is full
says so (its "wanted" flag for the pool). A worker that sees another's flag stops opening
servers for that pool beyond its share (share_cap), closes one server per tick that has been
idle for half a second, and while it holds more than its share it closes the next server a
client releases, even if its own clients wait. The count freed
is taken by the waiting worker, whose own tick retries. Nothing here runs on the data path
except the one flag test in Pool.give.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import Application


# An idle server is handed to another worker only once it has been idle this long (seconds),
# so a pause between two transactions under load does not send it away and back.
IDLE_BEFORE_HANDOVER = 0.5


def balance(app: Application) -> None:
    shared = app.shared
    worker = app.worker
    if shared is None or worker is None:
        return
    for pool in list(app.pools.values()):
        if pool.shared_slots is None and not (pool.waiting or pool.login_waiters):
            continue
        slots = pool.slots()
        waiting = bool(pool.waiting or pool.login_waiters) and not pool.paused
        others = any(shared.wanted_elsewhere(o) for o in slots)
        pool.others_want = others
        pool.share_cap = share_cap(pool.limit, worker.count)
        if waiting:
            pool.grow()
        wants = waiting and pool.blocked
        for offset in slots:
            shared.want(offset, wants)
        if not others:
            pool.give_back = False
            continue
        if pool.idle and not waiting and app.now - pool.idle[0].idle_since >= IDLE_BEFORE_HANDOVER:
            pool.idle[0].close("released for another worker")
        # Even while its own clients wait, a worker above its share gives one back.
        pool.give_back = pool.total > pool.share_cap


def share_cap(limit: int, workers: int) -> float:
    """How many of a contended pool's servers one worker may keep.

    The limit divided evenly, rounded up, so that shares that cannot be equal (21 over two
    workers: 11 and 10) stay put instead of passing a server back and forth, each pass
    costing a new server connection. A limit smaller than the number of workers cannot be
    shared that way; there the fraction itself is the cap, so the server moves to the
    waiting worker each tick.
    """
    if limit >= workers:
        return float(-(-limit // workers))
    return limit / workers
