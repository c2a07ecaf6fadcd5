"""The clients waiting for a server of one pool, served fairly between applications.

Strategy: one FIFO queue per application (the application_name a client logged in with);
the next server goes to the application that has had the fewest servers handed to it,
counted against its weight (``app_weights`` in the ``[pgusher]`` section; 1 when not
named), and within an application to its oldest waiting client. So an application that
queues a thousand clients gets servers at the same rate as one that queues ten, not a
hundred times more, and none starves; with a single application it is the plain FIFO queue
it replaces. An application that starts waiting again begins level with those already
waiting, not with the credit of the time it was idle (nor the debt of a busy spell). An
application at its own limit (``max_app_connections``) is passed over until one of its
servers comes back.

The queue keeps the deque interface the pool and the janitor use (append, appendleft,
popleft, remove, clear, len, iteration and ``[0]`` in arrival order).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Container, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    __slots__ = ("_app_of", "_queues", "_seq", "_served", "_stamps", "weights")

    def __init__(self, app_of: Callable[[T], str],
                 weights: Mapping[str, float] | None = None) -> None:
        self._app_of = app_of
        self.weights = dict(weights or {})
        self._queues: dict[str, deque[tuple[int, T]]] = {}
        self._served: dict[str, float] = {}  # servers handed out, divided by the weight
        self._seq = itertools.count()
        self._stamps: dict[int, int] = {}  # id(item) -> its arrival number

    def _queue_for(self, item: T) -> deque[tuple[int, T]]:
        app = self._app_of(item)
        queue = self._queues.get(app)
        if queue is None:
            queue = self._queues[app] = deque()
            # Level with the applications waiting now: no credit for the idle time.
            self._served[app] = min(self._served.values(), default=0.0)
        return queue

    def append(self, item: T) -> None:
        stamp = next(self._seq)
        self._stamps[id(item)] = stamp
        self._queue_for(item).append((stamp, item))

    def appendleft(self, item: T) -> None:
        """Back at the front: first of its application, and first overall."""
        first = min((q[0][0] for q in self._queues.values() if q), default=0)
        stamp = first - 1
        self._stamps[id(item)] = stamp
        self._queue_for(item).appendleft((stamp, item))

    def popleft(self, blocked: Container[str] = ()) -> T:
        """The next client, leaving out applications in ``blocked`` (at a limit of theirs);
        IndexError when no other application has a client waiting."""
        best: str | None = None
        for app, queue in self._queues.items():
            if app in blocked:
                continue
            if best is None or (self._served[app], queue[0][0]) < (
                    self._served[best], self._queues[best][0][0]):
                best = app
        if best is None:
            raise IndexError("pop from an empty queue")
        queue = self._queues[best]
        _, item = queue.popleft()
        self._served[best] += 1.0 / self.weights.get(best, 1.0)
        if not queue:
            self._forget(best)
        self._stamps.pop(id(item), None)
        return item

    def remove(self, item: T) -> None:
        app = self._app_of(item)
        queue = self._queues.get(app)
        stamp = self._stamps.get(id(item))
        if queue is None or stamp is None:
            raise ValueError("not waiting")
        queue.remove((stamp, item))
        del self._stamps[id(item)]
        if not queue:
            self._forget(app)

    def apps(self) -> list[str]:
        """The applications that have clients waiting."""
        return list(self._queues)

    def _forget(self, app: str) -> None:
        """No client of ``app`` waits: it starts level with the others when one does again."""
        del self._queues[app]
        del self._served[app]

    def clear(self) -> None:
        self._queues.clear()
        self._served.clear()
        self._stamps.clear()

    def __len__(self) -> int:
        return len(self._stamps)

    def __bool__(self) -> bool:
        return bool(self._stamps)

    def __iter__(self) -> Iterator[T]:
        """In arrival order."""
        pairs = sorted((pair for q in self._queues.values() for pair in q),
                       key=lambda pair: pair[0])
        return iter([item for _, item in pairs])

    def __getitem__(self, index: int) -> T:
        if index != 0:
            raise IndexError("only the oldest waiting client can be looked up")
        if not self._stamps:
            raise IndexError("empty queue")
        return min((q[0] for q in self._queues.values()), key=lambda pair: pair[0])[1]
