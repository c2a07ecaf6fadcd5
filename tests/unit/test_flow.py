"""Flow control: pause reasons, and a full peer's state carried across links."""

from __future__ import annotations

from pgusher.net.flow import PEER, SUSPEND, WAIT, FlowControl, link, unlink


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def flow() -> tuple[FlowControl, Transport]:
    transport = Transport()
    return FlowControl(transport), transport  # type: ignore[arg-type]


def test_reading_resumes_when_the_last_reason_goes() -> None:
    f, t = flow()
    f.pause(WAIT)
    f.pause(SUSPEND)
    f.pause(WAIT)
    f.resume(WAIT)
    assert t.calls == ["pause"]
    f.resume(PEER)  # never paused for it: nothing changes
    f.resume(SUSPEND)
    assert t.calls == ["pause", "resume"] and not f.reasons


def test_a_closed_connection_is_left_alone() -> None:
    f, t = flow()
    f.closed = True
    f.pause(WAIT)
    f.resume(WAIT)
    assert t.calls == []


def test_a_full_client_holds_back_the_next_server_it_is_linked_to() -> None:
    client, _ = flow()
    first, first_t = flow()
    second, second_t = flow()
    client.write_paused = True  # the client stopped reading what it was sent
    link(client, first)
    assert first_t.calls == ["pause"]
    unlink(client, first)
    assert first_t.calls == ["pause", "resume"]  # back in the pool, it may be read again
    link(client, second)  # the client is still full: its next server waits too
    assert second_t.calls == ["pause"]


def test_a_full_server_holds_back_its_next_client() -> None:
    client, client_t = flow()
    server, _ = flow()
    server.write_paused = True
    client.pause(WAIT)  # waiting for a server
    link(client, server)
    client.resume(WAIT)
    assert client_t.calls == ["pause"]  # still paused: for the server now
    unlink(client, server)
    assert client_t.calls == ["pause", "resume"]
