"""The queries the pooler runs on a server of its own accord, as values.

Strategy: each kind says why it runs and what the server holds once it has succeeded, so the
code that gets the answer (:meth:`Pool.internal_done`) decides from the kind alone, and a
failure closes the server with the kind's own reason. The client's settings sent in front of
its first query and the statements prepared on demand are not among these: they travel with
the client's own messages and their replies are swallowed by the server stream.
"""

from __future__ import annotations

import enum


class Internal(enum.Enum):
    # The target's connect_query, right after login: the session it leaves is the one every
    # client of the server starts from.
    CONNECT = "connect_query failed"
    # server_check_query before an idle server is used again: the session is unchanged.
    CHECK = "server check query failed"
    # server_reset_query (or DEALLOCATE ALL): no prepared statements and no settings of a
    # client remain.
    RESET = "server reset query failed"
    # The pooler's ROLLBACK after a client opened a transaction in statement mode: the
    # transaction is undone, and nothing before it (a ROLLBACK is not a reset).
    ROLLBACK = "server rollback failed"
    # UNLISTEN * after a client's LISTEN ran on the server (net/listener.py): it listens on
    # nothing, and drops no notification any more.
    UNLISTEN = "server UNLISTEN failed"
    # The read-back after a transaction that may have changed the session unseen
    # (protocol/capture.py): unchanged; its rows say what the session holds.
    READ_BACK = "session read-back failed"

    @property
    def failure(self) -> str:
        """The reason the server is closed with when the query fails."""
        return self.value


CONNECT = Internal.CONNECT
CHECK = Internal.CHECK
RESET = Internal.RESET
ROLLBACK = Internal.ROLLBACK
READ_BACK = Internal.READ_BACK
UNLISTEN = Internal.UNLISTEN
