"""Clients counted per database and per user, and the limits on those counts.

Strategy: a client is counted once, at startup, before it authenticates (as PgBouncer
counts it), in the database it asked for and under its login user; console connections
count too, in the console database ``pgbouncer``. A login over max_db_client_connections or
max_user_client_connections is refused; an admin user (admin_users) logging into the
console is never refused, so an operator can still look at a full pooler. The count is given
back when the connection ends. A user whose count drops to zero is forgotten, so a failed
login under a made-up name leaves no trace in SHOW USERS. With several workers the same
counts are also kept in the table the workers share, so the limits hold for all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import ClientFatal
from ..workers import shared as shared_mod

if TYPE_CHECKING:
    from ..app import Application


class Counted(Protocol):
    """What a connection needs to be counted: its names, and whether it is."""

    user: str
    db_name: str
    counted: bool


def _refusal(which: str) -> ClientFatal:
    return ClientFatal(f"client connections exceeded ({which})", sqlstate="53300")


class ClientCounts:
    __slots__ = ("_slots", "app", "db", "user")

    def __init__(self, app: Application) -> None:
        self.app = app
        self.db: dict[str, int] = {}
        self.user: dict[str, int] = {}
        self._slots: dict[tuple[str, str], list[int]] = {}

    def take(self, client: Counted, db_limit: int, user_limit: int, *,
             exempt: bool = False, console: bool = False) -> None:
        """Count ``client``; ClientFatal (and nothing counted) when a limit is reached.
        ``exempt``: no limit applies; ``console``: max_client_conn does not (PgBouncer
        never refuses the console for it)."""
        db_name, user = client.db_name, client.user
        if not exempt:
            if db_limit and self.db.get(db_name, 0) >= db_limit:
                raise _refusal("max_db_client_connections")
            if user_limit and self.user.get(user, 0) >= user_limit:
                raise _refusal("max_user_client_connections")
        if self.app.shared is not None:
            self._take_shared(client, 0 if exempt else db_limit, 0 if exempt else user_limit,
                              0 if console else self.app.config.settings.max_client_conn)
        self.db[db_name] = self.db.get(db_name, 0) + 1
        self.user[user] = self.user.get(user, 0) + 1
        client.counted = True

    def give(self, client: Counted) -> None:
        """The counted connection ended."""
        if not client.counted:
            return
        client.counted = False
        for counts, name in ((self.db, client.db_name), (self.user, client.user)):
            left = counts.get(name, 0) - 1
            if left > 0:
                counts[name] = left
            else:
                counts.pop(name, None)
        shared = self.app.shared
        if shared is not None:
            shared.give(self._offsets(client.db_name, client.user))

    def _offsets(self, db_name: str, user: str) -> list[int]:
        """The shared-table slots a client of (database, user) counts in (found once)."""
        found = self._slots.get((db_name, user))
        if found is None:
            shared = self.app.shared
            assert shared is not None
            found = self._slots[(db_name, user)] = [
                shared.slot(shared_mod.key_hash("clients")),
                shared.slot(shared_mod.key_hash("db clients", db_name)),
                shared.slot(shared_mod.key_hash("user clients", user))]
        return found

    def _take_shared(self, client: Counted, db_limit: int, user_limit: int,
                     client_limit: int) -> None:
        """The client limits across workers: all three are counted, or the login fails."""
        shared = self.app.shared
        assert shared is not None
        offsets = self._offsets(client.db_name, client.user)
        limits = [client_limit, db_limit, user_limit]
        if shared.take(list(zip(offsets, limits, strict=True))):
            return
        totals = [shared.total(o) for o in offsets]
        if db_limit and totals[1] >= db_limit:
            raise _refusal("max_db_client_connections")
        if user_limit and totals[2] >= user_limit:
            raise _refusal("max_user_client_connections")
        raise ClientFatal("no more connections allowed (max_client_conn)", sqlstate="53300")
