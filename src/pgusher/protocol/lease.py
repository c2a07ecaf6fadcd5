"""The lease: what one client owes and is owed on the server it works on (sans-IO).

Strategy: one object per client follows its work from the first message to the release of its
server, and nothing else decides about that work:

* ``outstanding`` counts the ReadyForQuery replies the client is owed (one per Query or Sync
  sent). Queries a server skips after an error in a pipeline never get theirs; the link counts
  them (``LinkState.lost_queries``) and :meth:`Lease.ready` takes them in.
* What the transaction's SQL does to the session (SET, RESET, RESET ALL, DISCARD ALL) is kept
  until the transaction ends: applied after a commit (:func:`apply_effects`), dropped after an
  error or a ROLLBACK, as PostgreSQL keeps or undoes a SET. An error anywhere in the
  transaction counts, even one the server reported on a message the pooler added.
* A transaction that ran something whose effect on the session the SQL does not show (a
  function, DO, CALL: protocol/opaque.py) makes the lease *opaque*: the server's session is
  read back before it serves anyone else (protocol/capture.py). Level 1: only ``set_config``
  of literal names ran, and those names are read back; level 2: anything may have changed.
* State that cannot follow a client (LISTEN, a session-level PREPARE, LOAD) makes the server
  *dirty*: it is reset before its next client.
* :func:`releasable` is the one verdict on whether a server may go back to the pool: used
  when the work ends and when the client leaves.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from .client_stream import ClientStream
from .framing import ServerStream
from .link import LinkState
from .opaque import named_settings
from .session import DIRTY, DISCARD_ALL, OPAQUE, RESET, RESET_ALL, ROLLBACK, SET

Effect = tuple[str, str, str]

_IDLE = 73  # ReadyForQuery status 'I'
_FAILED = 69  # 'E'
_IDENTITY_SETS = ("session_authorization", "role")
CUSTOM_LIMIT = 64  # custom setting names read back per client
_NO_NAMES: frozenset[str] = frozenset()


class Lease:
    __slots__ = ("custom_names", "effects", "failed", "mark", "opaque", "outstanding",
                 "rolled_back")

    def __init__(self) -> None:
        self.outstanding = 0
        self.effects: list[Effect] = []  # the open transaction's SET/RESET effects
        self.mark = 0  # the link's error count when the first of them was noted
        self.failed = False  # the transaction failed: its effects will be undone
        self.rolled_back = False  # it ran a ROLLBACK (or ROLLBACK TO) of its own
        self.opaque = 0
        # Custom settings its texts named, to read back (a set of its own once there is one).
        self.custom_names: AbstractSet[str] = _NO_NAMES

    def expect(self, replies: int) -> bool:
        """The client sent work that ``replies`` ReadyForQuery messages will end; True when
        nothing was owed before (its timing starts now)."""
        idle = not self.outstanding
        self.outstanding += replies
        return idle

    def answered(self, replies: int) -> None:
        """The pooler answered ``replies`` Syncs itself (no server was needed)."""
        self.outstanding -= replies

    def note(self, effects: list[Effect], errors: int) -> tuple[str, str]:
        """What the batch just sent does to the session; ``errors`` is the link's error count
        now. Returns (dirty reason or "", the reason the session must be read back, if this
        batch made the lease opaque or more so)."""
        dirty = ""
        opaque = ""
        for effect in effects:
            kind = effect[0]
            if kind == DIRTY:
                dirty = effect[1]
            elif kind == ROLLBACK:
                self.rolled_back = True
            elif kind == OPAQUE:
                level = 1 if named_settings(effect[1]) else 2
                if level > self.opaque:
                    self.opaque = level
                    opaque = effect[1]
                names = self.custom_names
                if effect[2] and len(names) < CUSTOM_LIMIT:
                    self.custom_names = {*names, *(n for n in effect[2].split(",")
                                                   if n not in _IDENTITY_SETS)}
            else:
                if not self.effects:
                    self.mark = errors
                self.effects.append(effect)
        return dirty, opaque

    def ready(self, count: int, status: int, link: LinkState | None) -> list[Effect] | None:
        """``count`` ReadyForQuery replies came, the last with ``status``. Returns the effects
        to apply when this ended a transaction that committed them, else None."""
        if link is not None and link.lost_queries:
            count += link.lost_queries  # skipped after an error: their ReadyForQuery never comes
            link.lost_queries = 0
        outstanding = self.outstanding - count
        self.outstanding = outstanding = outstanding if outstanding > 0 else 0
        if not self.effects and not self.rolled_back:
            return None
        if status == _FAILED:
            self.failed = True
            return None
        if status != _IDLE or outstanding:
            return None
        failed = (self.failed or self.rolled_back
                  or (link is not None and link.errors != self.mark))
        effects, self.effects = self.effects, []
        self.failed = self.rolled_back = False
        return None if failed or not effects else effects

    def take_read_back(self) -> tuple[int, AbstractSet[str]]:
        """The opaque level and the custom names to read back; the lease is clear after."""
        level, self.opaque = self.opaque, 0
        return level, self.custom_names


def releasable(client: ClientStream, server: ServerStream, link: LinkState | None) -> bool:
    """Whether a server may leave its client now: idle, no reply owed, both streams between
    messages, no extended-protocol work without its Sync, no reply of the pooler's own due,
    and not skipping to a Sync after an error (it would ignore the next client's query)."""
    return (server.status == _IDLE and not client.unsynced and not client.mid_message
            and server.at_boundary and not server.swallow
            and (link is None or (not link.tags and not link.skipping)))


def apply_effects(effects: list[Effect], mine: dict[str, str], theirs: dict[str, str],
                  defaults: dict[str, str], tracked: dict[str, str]) -> None:
    """Apply a committed transaction's effects to the client's settings (``mine``) and its
    server's record of them (``theirs``), with PostgreSQL's RESET semantics: RESET returns
    to the client's own startup value; RESET ALL keeps the role and the session
    authorization; setting or resetting the session authorization resets the role; DISCARD
    ALL resets everything. Parameters the server reports (``tracked``) are followed from its
    ParameterStatus messages instead."""
    for kind, name, value in effects:
        if name in tracked:
            continue
        if kind == SET:
            mine[name] = value
            theirs[name] = value
            if name == "session_authorization":
                mine.pop("role", None)
                theirs.pop("role", None)
        elif kind == RESET:
            default = defaults.get(name)
            if default is None:
                mine.pop(name, None)
            else:
                mine[name] = default
            theirs.pop(name, None)
            if name == "session_authorization":
                mine.pop("role", None)
                theirs.pop("role", None)
        elif kind == RESET_ALL:
            for sets in (mine, theirs):
                kept = {n: sets[n] for n in _IDENTITY_SETS if n in sets}
                sets.clear()
                sets.update(kept)
            for n, v in defaults.items():
                mine.setdefault(n, v)
        elif kind == DISCARD_ALL:
            mine.clear()
            mine.update(defaults)
            theirs.clear()
