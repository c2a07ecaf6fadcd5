"""Counts shared by the worker processes, so pool limits hold for the whole pooler.

Strategy: one anonymous shared mapping, created by the supervisor before it forks, holds a
fixed open-addressing table. A slot is named by a 64-bit hash of its key ("pool", "db",
"user", "clients" ... plus names) and holds one count and one "wanted" flag per worker. A
worker only ever writes its own column, so the supervisor can wipe a dead worker's column
and nothing it held is leaked. Check-and-take is done under ``flock`` on a file each worker
opens for itself; the kernel drops such a lock when its holder dies, so a crash cannot leave
the table locked. None of this is on the data path: it runs when a server connection is
opened or closed, when a client logs in or out, and on the 0.1 s clock tick.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence

SLOTS = 4096  # distinct keys (pools, databases, users) the table can hold
_HASH = struct.Struct("=Q")
_INT = struct.Struct("=i")


def key_hash(kind: str, *names: str) -> int:
    raw = "\0".join((kind, *names)).encode("utf-8", "surrogateescape")
    value = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
    return value or 1  # 0 marks an empty slot


class SharedCounts:
    """A table of per-worker counts; see the module docstring."""

    def __init__(self, workers: int, lock_path: str) -> None:
        self.workers = workers
        self.lock_path = lock_path
        self.slot_size = 8 + 8 * workers  # hash, then counts[workers], then wanted[workers]
        self.mem = mmap.mmap(-1, SLOTS * self.slot_size)
        self.me = -1  # this process's column; -1 in the supervisor
        self._lock_fd = -1
        self._slots: dict[int, int] = {}
        with open(lock_path, "a"):
            pass

    def attach(self, index: int) -> None:
        """Called in a worker after fork: take its column and open its own lock."""
        self.me = index
        self._slots = {}
        self._lock_fd = -1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd < 0:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ slots

    def slot(self, key: int) -> int:
        """The byte offset of ``key``'s slot, claimed on first use."""
        found = self._slots.get(key)
        if found is not None:
            return found
        with self._locked():
            offset = self._find(key)
        self._slots[key] = offset
        return offset

    def _find(self, key: int) -> int:
        mem = self.mem
        index = key % SLOTS
        for _ in range(SLOTS):
            offset = index * self.slot_size
            have = _HASH.unpack_from(mem, offset)[0]
            if have == key:
                return offset
            if have == 0:
                _HASH.pack_into(mem, offset, key)
                return offset
            index = (index + 1) % SLOTS
        raise RuntimeError("shared limit table is full")

    def _count_at(self, offset: int, worker: int) -> int:
        return int(_INT.unpack_from(self.mem, offset + 8 + 4 * worker)[0])

    def _add(self, offset: int, delta: int) -> None:
        at = offset + 8 + 4 * self.me
        _INT.pack_into(self.mem, at, _INT.unpack_from(self.mem, at)[0] + delta)

    def total(self, offset: int) -> int:
        return sum(self._count_at(offset, w) for w in range(self.workers))

    def mine(self, offset: int) -> int:
        return self._count_at(offset, self.me)

    # ------------------------------------------------------------------ taking and giving

    def take(self, limits: Sequence[tuple[int, int]]) -> bool:
        """Count one more in every (slot, limit) if all stay within their limits (0 = none)."""
        with self._locked():
            for offset, limit in limits:
                if limit and self.total(offset) >= limit:
                    return False
            for offset, _ in limits:
                self._add(offset, 1)
        return True

    def give(self, offsets: Sequence[int]) -> None:
        with self._locked():
            for offset in offsets:
                self._add(offset, -1)

    # ------------------------------------------------------------------ wanting

    def want(self, offset: int, wanted: bool) -> None:
        """Say whether this worker has clients waiting for what the slot counts."""
        at = offset + 8 + 4 * (self.workers + self.me)
        _INT.pack_into(self.mem, at, 1 if wanted else 0)

    def wanted_elsewhere(self, offset: int) -> bool:
        base = offset + 8 + 4 * self.workers
        mem = self.mem
        return any(_INT.unpack_from(mem, base + 4 * w)[0]
                   for w in range(self.workers) if w != self.me)

    # ------------------------------------------------------------------ supervisor

    def clear_worker(self, index: int) -> None:
        """A worker died: whatever it held or wanted is free again."""
        with self._locked():
            for slot in range(SLOTS):
                offset = slot * self.slot_size
                if _HASH.unpack_from(self.mem, offset)[0]:
                    _INT.pack_into(self.mem, offset + 8 + 4 * index, 0)
                    _INT.pack_into(self.mem, offset + 8 + 4 * (self.workers + index), 0)
