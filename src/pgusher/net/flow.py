"""Flow control of one connection: why its reading is paused, and whether it can take writes.

Strategy (uvicorn's FlowControl is the model): reading is paused for *reasons*, bits that are
set and cleared independently; the transport is paused when the first is set and resumed when
the last is cleared, so pausing twice or resuming what was not paused changes nothing.
``write_paused`` follows the transport's pause_writing/resume_writing: it belongs to the
connection, not to its link, so a peer linked later learns it (:func:`link`) and a peer
unlinked stops being held back by it (:func:`unlink`).
"""

from __future__ import annotations

import asyncio

WAIT = 1  # a client waiting for a server keeps sending: stop reading it
PEER = 2  # the linked peer cannot take more: stop reading what would go to it
SUSPEND = 4  # the console's SUSPEND: no client is read until RESUME
LISTENING = 8  # a client's LISTEN waits for the pooler's listening connection


class FlowControl:
    __slots__ = ("closed", "reasons", "transport", "write_paused")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        self.transport = transport
        self.reasons = 0
        self.write_paused = False
        self.closed = False  # nothing is paused or resumed any more

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.closed and self.transport is not None:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and not self.closed and self.transport is not None:
            self.transport.resume_reading()


def link(client: FlowControl, server: FlowControl) -> None:
    """A client and a server were linked: each stops reading while the other is full."""
    if client.write_paused:
        server.pause(PEER)
    if server.write_paused:
        client.pause(PEER)


def unlink(client: FlowControl, server: FlowControl) -> None:
    """The link ended: neither is held back by the other any more."""
    client.resume(PEER)
    server.resume(PEER)
