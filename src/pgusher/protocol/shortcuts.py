"""Client batches that need no rewriting: sent untagged, or answered without a server (sans-IO).

Plain simple queries, and extended-protocol batches on the unnamed statement that end with Sync,
sent while nothing is tagged are not tagged at all (untagged_syncs): their replies are only
counted, on the scanner's fast path. An idle client's batch that only parses statements some
server already accepted, closes statements and syncs is answered by the pooler itself
(answer_without_server), with no server linked for it; a Flush or a copy message in it,
which no server would answer, is dropped.
"""

from __future__ import annotations

from ..errors import ProtocolError
from .link import LinkState
from .messages import message
from .prepared import (
    CLOSE_COMPLETE,
    NO_REPLY,
    PARSE_COMPLETE,
    Statement,
    split_parse,
    split_target,
    statement_key,
)
from .session import might_affect_session

_READY_IDLE = message(b"Z", b"I")


# Parse texts already run through the session pre-filter: drivers repeat the same few.
_TEXT_HITS: dict[bytes, bool] = {}
_TEXT_HITS_LIMIT = 512
_TEXT_HITS_MAX_LEN = 2048


def _text_hit(query: bytes) -> bool:
    hit = _TEXT_HITS.get(query)
    if hit is None:
        hit = might_affect_session(query)
        if len(query) <= _TEXT_HITS_MAX_LEN:
            if len(_TEXT_HITS) >= _TEXT_HITS_LIMIT:
                _TEXT_HITS.clear()
            _TEXT_HITS[query] = hit
    return hit


def untagged_syncs(messages: list[tuple[int, bytes]], link: LinkState | None = None) -> int:
    """How many Syncs a batch holds if it can go to the server as it is, untagged; else 0.

    Such a batch ends with a Sync and uses only the unnamed statement (a Parse whose text
    cannot change the session, Bind and Describe of it), portals, Execute and Flush. The
    Translator would not rewrite any of it, and every error it can cause ends at one of its
    own Syncs, so its replies only need counting, like those of a plain simple query. Not
    while the unnamed statement or a portal of ``link`` would deallocate a client's name.
    """
    if messages[-1][0] != 83 or (link is not None and (link.unnamed or link.portals)):
        return 0
    syncs = 0
    try:
        for kind, msg in messages:
            if kind == 83:  # Sync
                syncs += 1
            elif kind == 69 or kind == 72:  # Execute, Flush
                continue
            elif kind == 80:  # Parse: the unnamed statement, with a text that changes nothing
                if msg[5] != 0 or _text_hit(msg[6:msg.index(0, 6)]):
                    return 0
            elif kind == 66:  # Bind to the unnamed statement
                if msg[msg.index(0, 5) + 1] != 0:
                    return 0
            elif kind == 68:  # Describe: a portal, or the unnamed statement
                if msg[5] == 83 and len(msg) > 7:
                    return 0
            else:
                return 0
    except (IndexError, ValueError):
        return 0  # malformed: the Translator deals with it as it always has
    return syncs


def answer_without_server(messages: list[tuple[int, bytes]], statements: dict[bytes, Statement],
                          known: set[str]) -> bytes | None:
    """Reply to an idle client's batch with no server, if every message allows it.

    Parse of a statement some server already accepted, Close of a statement, Flush and Sync can
    be answered by the pooler (an idle client in transaction mode has no open transaction).
    This matters: drivers that prepare synchronously (pgbench -M prepared) would otherwise
    block a thread waiting for a server while other clients on that thread hold every server.
    Messages no server replies to (Flush, and copy messages outside COPY, which PostgreSQL
    ignores) are dropped: a server linked for them alone would get no ReadyForQuery, the only
    point where it is released. Returns None, changing nothing, when any message needs a server.
    """
    added: dict[bytes, Statement] = {}
    closed: list[bytes] = []
    for kind, msg in messages:
        if kind == 80:  # Parse
            if msg[5:6] == b"\0":
                return None  # the unnamed statement: the server must have it
            try:
                name, query, types = split_parse(msg[5:])
            except ProtocolError:
                return None  # the server answers what it cannot read either
            if not name or name in statements or name in added:
                return None
            stmt = Statement(statement_key(query, types), query, types)
            if stmt.key not in known:
                return None
            added[name] = stmt
        elif kind == 67:  # Close
            try:
                what, name = split_target(msg)
            except ProtocolError:
                return None
            if what != b"S":
                return None
            closed.append(name)
        elif kind != 83 and kind not in NO_REPLY:  # anything else needs a server
            return None
    replies = []
    for kind, msg in messages:
        if kind == 80:
            name = split_parse(msg[5:])[0]
            statements[name] = added[name]
            replies.append(PARSE_COMPLETE)
        elif kind == 67:
            statements.pop(msg[6:-1], None)
            replies.append(CLOSE_COMPLETE)
        elif kind == 83:
            replies.append(_READY_IDLE)
    return b"".join(replies)
