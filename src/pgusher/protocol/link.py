"""What the pooler knows about one server connection's statements and pending replies (sans-IO).

Every message sent to a server gets a *reply tag* in a per-link FIFO (LinkState.tags), naming
the reply that ends it (Parse -> ParseComplete, Bind -> BindComplete, Describe ->
RowDescription/NoData, Execute -> CommandComplete/EmptyQuery/PortalSuspended, Sync and Query ->
ReadyForQuery). This is what lets the pooler slip its own messages in (a Parse for a statement
this server lacks, a Close to evict one) and drop exactly their replies, and answer some messages
itself (ParseComplete for a statement the server already has, CloseComplete for a client's
Close) in the right place in the reply stream. The Translator appends the tags as it rewrites
a client's messages; the ReplyTracker (replies.py) takes them off as the replies come.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .prepared import Effect, KnownStatements, Tag


class LinkState:
    """What the pooler knows about one server connection's statements and pending replies."""

    __slots__ = ("deferred", "errors", "held", "known", "limit", "lost_queries", "name_seg",
                 "needs_close", "needs_reset", "parsing", "portals", "release", "segment",
                 "skipping", "statements", "status", "tags", "unnamed", "untagged_z")

    def __init__(self, limit: int, known: KnownStatements | None = None) -> None:
        self.limit = limit
        # Statement keys some server of the pool has accepted (shared by the pool's links).
        self.known = known if known is not None else KnownStatements()
        self.statements: OrderedDict[str, None] = OrderedDict()  # LRU, oldest first
        self.needs_close: set[str] = set()  # on the server but unusable (plan changed)
        self.tags: deque[Tag] = deque()
        self.untagged_z = 0      # ReadyForQuery still due for untagged work
        self.skipping = False    # the server is skipping messages until Sync
        self.lost_queries = 0    # queries the server skipped (their ReadyForQuery never comes)
        self.needs_reset = False  # prepared-statement state is uncertain: reset before reuse
        self.errors = 0  # errors seen in tagged replies (SET effects are kept only without)
        # Client messages waiting for the check of a statement parsed again (one piece per
        # check, in order), and what the checks let go: the connection writes it to the server.
        self.held: deque[bytes] = deque()
        self.release = b""
        self.status = 73  # the last ReadyForQuery's status (the server stream keeps it)
        # Syncs sent, and for each statement whose Parse is not answered yet, how many had
        # been sent before it (see Translator._settled).
        self.segment = 0
        self.parsing: dict[str, int] = {}
        # The oldest segment that may hold a change to the client's names not answered yet
        # (-1: none), and the client messages whose meaning waits for those answers: the
        # connection translates them once no reply is pending.
        self.name_seg = -1
        self.deferred: list[tuple[int, bytes]] = []
        # What running the unnamed statement, or a portal, does to the client's names
        # (an SQL DEALLOCATE parsed with the extended protocol): done at its Execute.
        self.unnamed: Effect | None = None
        self.portals: dict[bytes, Effect] = {}

    def forget_all(self) -> None:
        self.statements.clear()
        self.needs_close.clear()
        self.parsing.clear()
        self.unnamed = None
        self.portals.clear()

    def doubt_all(self) -> None:
        """A DEALLOCATE ALL or DISCARD ALL is on its way: whether the server will still have
        its statements is known only later, so each is closed before it is parsed again."""
        self.needs_close.update(self.statements)
        self.statements.clear()
        self.parsing.clear()

    def take_deferred(self) -> list[tuple[int, bytes]]:
        """The client messages that waited, once every reply is in (else nothing)."""
        if self.tags or not self.deferred:
            return []
        deferred, self.deferred = self.deferred, []
        return deferred

    def parse_done(self, tag: Tag) -> None:
        """A Parse of ``tag.key`` was answered, or skipped."""
        key = tag.key
        if key is not None and self.parsing.get(key) == tag.count:
            del self.parsing[key]
