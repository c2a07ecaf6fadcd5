"""Moving server connections between workers, every clock tick (0.1 s).

Strategy: limits are shared, servers are not: an idle server in one worker cannot serve a
client waiting in another. So a worker whose clients wait while the shared table is full
says so (its "wanted" flag for the pool). A worker that sees another's flag closes one idle
server of that pool per tick if none of its own clients wait, and if it holds more than its
fair share (the limit divided by the number of workers) it closes the next server a client
releases, even while its own clients wait. The count freed
is taken by the waiting worker, whose own tick retries. Nothing here runs on the data path
except the one flag test in Pool.give.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import Application


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
        if waiting:
            pool.grow()
        wants = waiting and pool.blocked
        for offset in slots:
            shared.want(offset, wants)
        if not any(shared.wanted_elsewhere(o) for o in slots):
            pool.give_back = False
            continue
        if pool.idle and not waiting:
            pool.idle.pop(0).close("released for another worker")
        # Even while its own clients wait, a worker above its fair share gives one back.
        fair = -(-pool.limit // worker.count)
        pool.give_back = pool.total > fair
