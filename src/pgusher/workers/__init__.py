"""Several worker processes behind one listening port (``workers = N`` in ``[pgusher]``).

Strategy: the supervisor (supervisor.py) binds every listening socket before it forks, one
SO_REUSEPORT TCP socket per worker and address, so the kernel spreads new connections over
the workers and a restarted worker takes over its predecessor's socket, backlog included.
Each worker is a whole pooler on its own event loop. What must be true of the whole pooler
is settled between them:

- pool and connection limits: counted in a shared table (shared.py);
- cancel requests: the key a client gets names its worker, and a worker that receives a
  cancel for another forwards it over that worker's private unix socket (siblings.py);
- the admin console and /metrics: the worker that is asked asks its siblings over the same
  private sockets and merges their answers (admin/merge.py).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from .shared import SharedCounts


def worker_count(setting: str) -> int:
    """The ``workers`` setting as a number: ``auto`` is the number of CPUs this process may use."""
    if setting == "auto":
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return int(setting)


@dataclass(eq=False)
class WorkerInfo:
    """What a worker process knows of the group it belongs to."""

    index: int  # 0-based
    count: int
    rundir: str
    shared: SharedCounts
    supervisor_pid: int
    listen: list[socket.socket] = field(default_factory=list)  # this worker's TCP sockets
    unix: socket.socket | None = None  # the unix socket all workers share
    unix_path: str = ""
    internal: socket.socket | None = None  # this worker's private socket

    @property
    def number(self) -> int:
        """1-based, as it appears in cancel keys and logs."""
        return self.index + 1

    def sibling_path(self, index: int) -> str:
        return internal_path(self.rundir, index)

    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


def internal_path(rundir: str, index: int) -> str:
    return os.path.join(rundir, f"worker{index + 1}.sock")
