"""Server connections counted per database and per user, for the limits.

Strategy: pools report each server they start opening and each one they lose, so
max_db_connections and max_user_connections are checked with a dictionary lookup when a
connection is about to be opened, instead of a walk over every pool. A count covers every
state a pool holds a server in (logging in, idle, active, tested), as Pool.total does.
"""

from __future__ import annotations


class ServerCounts:
    __slots__ = ("by_db", "by_user")

    def __init__(self) -> None:
        self.by_db: dict[str, int] = {}
        self.by_user: dict[str, int] = {}

    def changed(self, db: str, user: str, delta: int) -> None:
        for counts, key in ((self.by_db, db), (self.by_user, user)):
            left = counts.get(key, 0) + delta
            if left:
                counts[key] = left
            else:
                del counts[key]

    def db(self, name: str) -> int:
        return self.by_db.get(name, 0)

    def user(self, name: str) -> int:
        return self.by_user.get(name, 0)
