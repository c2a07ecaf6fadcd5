"""The sans-IO server login: every method against PostgreSQL's side of the exchange, each fed
whole, byte by byte and in odd splits, with the bytes after ReadyForQuery left over."""

from __future__ import annotations

import pytest

from pgusher.auth.md5 import md5_check, md5_password_hash
from pgusher.auth.scram import (
    ScramClient,
    ScramServer,
    format_scram_secret,
    is_scram_secret,
    make_scram_secret,
)
from pgusher.auth.server_login import (
    DONE,
    FAILED,
    LOGIN,
    Action,
    BackendKey,
    LoginDone,
    LoginFailed,
    Parameter,
    Send,
    ServerLogin,
)
from pgusher.errors import AuthError, PgusherError
from pgusher.protocol import messages as m
from pgusher.protocol.reader import MessageReader

USER = "alice"
WELCOME = (m.parameter_status("server_version", "15.4") + m.parameter_status("TimeZone", "UTC")
           + m.backend_key_data(1234, -5678) + m.READY_IDLE)


def splits(data: bytes, way: int) -> list[bytes]:
    """Whole (0), one byte at a time (1), in chunks of 3 (2)."""
    if way == 0:
        return [data]
    step = 1 if way == 1 else 3
    return [data[i:i + step] for i in range(0, len(data), step)]


def plain_scram(password: str) -> ScramClient:
    if is_scram_secret(password):
        raise AuthError("no keys")
    return ScramClient(password)


def login(password: str | None, **kw: str) -> ServerLogin:
    return ServerLogin(USER, "app", kw, password, plain_scram, who=f'user "{USER}"')


class FakeServer:
    """PostgreSQL's side of a login: asks for ``method`` and checks the answers against the
    role's ``password``."""

    def __init__(self, method: str, password: str) -> None:
        self.method = method
        self.password = password
        self.reader = MessageReader(10_000, typed=False)
        self.scram: ScramServer | None = None
        self.salt = b"\x01\x02\x03\x04"
        self.startup: dict[str, str] = {}

    def receive(self, data: bytes) -> bytes:
        out = b""
        self.reader.push(data)
        while (message := self.reader.next()) is not None:
            out += self._answer(message[0], message[1])
        return out

    def _answer(self, kind: int, body: bytes) -> bytes:
        if not self.reader.typed:  # the startup message
            _, self.startup = m.parse_startup(body)
            rest = self.reader.take_rest()
            self.reader = MessageReader(10_000)
            self.reader.push(rest)
            if self.method == "trust":
                return m.AUTH_OK_MSG + WELCOME
            if self.method == "password":
                return m.AUTH_CLEARTEXT_MSG
            if self.method == "md5":
                return m.auth_md5_request(self.salt)
            self.scram = ScramServer(format_scram_secret(make_scram_secret(self.password)))
            return m.auth_sasl_request(["SCRAM-SHA-256"])
        assert kind == ord("p")
        if self.method == "password":
            ok = m.parse_password(body) == self.password.encode()
        elif self.method == "md5":
            ok = md5_check(USER, self.password, self.salt, m.parse_password(body))
        else:
            assert self.scram is not None
            if self.scram.client_key is None and b"SCRAM-SHA-256\0" in body[:14]:
                _, data = m.parse_sasl_initial(body)
                return m.auth_sasl_continue(self.scram.server_first(data))
            try:
                final = self.scram.server_final(body)
            except AuthError:
                ok = False
            else:
                return m.auth_sasl_final(final) + m.AUTH_OK_MSG + WELCOME
        if ok:
            return m.AUTH_OK_MSG + WELCOME
        return m.error_response("FATAL", "28P01",
                                f'password authentication failed for user "{USER}"')


def run(conn: ServerLogin, server: FakeServer, way: int, trailing: bytes = b"") -> list[Action]:
    """Run the login to its end, the server's bytes cut ``way``; return every action."""
    actions: list[Action] = []
    reply = server.receive(conn.startup())
    while conn.state == LOGIN:
        assert reply, "the server has nothing to say and the login is not over"
        sent = b""
        for chunk in splits(reply + trailing if reply.endswith(m.READY_IDLE) else reply, way):
            if conn.state != LOGIN:
                conn.reader.push(chunk)  # after the end: the next phase's
                continue
            for action in conn.feed(chunk):
                actions.append(action)
                if isinstance(action, Send):
                    sent += action.data
        reply = server.receive(sent) if sent else b""
    return actions


@pytest.mark.parametrize("way", range(3))
@pytest.mark.parametrize(("method", "stored"), [
    ("trust", None), ("password", "secret"), ("md5", "secret"),
    ("md5", md5_password_hash(USER, "secret")), ("scram", "secret")])
def test_login_methods(method: str, stored: str | None, way: int) -> None:
    conn = login(stored, application_name="pgusher")
    server = FakeServer(method, "secret")
    actions = run(conn, server, way, trailing=b"N\0\0\0\x05x")
    assert server.startup == {"user": USER, "database": "app", "application_name": "pgusher"}
    assert conn.state == DONE
    done = actions[-1]
    assert isinstance(done, LoginDone)
    assert done.params == {"server_version": "15.4", "TimeZone": "UTC"}
    assert (done.pid, done.key) == (1234, -5678)
    seen = [a for a in actions if isinstance(a, Parameter | BackendKey)]
    assert seen == [Parameter("server_version", "15.4"), Parameter("TimeZone", "UTC"),
                    BackendKey(1234, -5678)]
    # What came after ReadyForQuery is the next phase's.
    assert conn.reader.take_rest() == b"N\0\0\0\x05x"


@pytest.mark.parametrize("way", range(3))
@pytest.mark.parametrize("method", ["password", "md5", "scram"])
def test_wrong_password_is_the_servers_error(method: str, way: int) -> None:
    conn = login("wrong")
    actions = run(conn, FakeServer(method, "secret"), way)
    assert conn.state == FAILED
    failed = actions[-1]
    assert isinstance(failed, LoginFailed)
    assert failed.severity == "FATAL"
    assert failed.error.message == f'password authentication failed for user "{USER}"'
    assert failed.error.sqlstate == "28P01"
    assert not failed.error.transient


@pytest.mark.parametrize(("code", "transient"), [
    ("57P03", True), ("53300", True), ("08006", True), ("57P01", True),
    ("3D000", False), ("28000", False), ("42501", False)])
def test_error_response_sqlstate_decides_transient(code: str, transient: bool) -> None:
    conn = login("pw")
    conn.startup()
    actions = conn.feed(m.error_response("FATAL", code, "the server says no") + b"junk")
    assert len(actions) == 1 and isinstance(actions[0], LoginFailed)
    assert actions[0].severity == "FATAL"
    error = actions[0].error
    assert (error.message, error.sqlstate, error.transient) == ("the server says no", code,
                                                                transient)


def test_error_response_without_fields() -> None:
    actions = login("pw").feed(m.message(b"E", b"\0"))
    assert isinstance(actions[0], LoginFailed)
    assert actions[0].severity == "FATAL"
    error = actions[0].error
    assert (error.message, error.sqlstate, error.transient) == ("server login failed", "08006",
                                                                True)


@pytest.mark.parametrize("stored", [None, "secret"])
def test_actions_before_the_failure_are_kept(stored: str | None) -> None:
    conn = login(stored)
    data = m.parameter_status("a", "1") + m.message(b"R", m.INT32.pack(m.AUTH_MD5) + b"salt")
    actions = conn.feed(data)
    assert actions[0] == Parameter("a", "1")
    if stored is None:
        assert isinstance(actions[1], LoginFailed)
        assert actions[1].error.message == f'no password known for user "{USER}"'
        assert actions[1].severity == ""
        assert actions[1].error.sqlstate == "08006"  # a failed connection, for the pool
    else:
        assert isinstance(actions[1], Send) and actions[1].data[0:1] == b"p"


def auth(code: int, payload: bytes = b"") -> bytes:
    return m.message(b"R", m.INT32.pack(code) + payload)


@pytest.mark.parametrize(("stored", "request_", "text"), [
    ("md5" + "0" * 32, auth(m.AUTH_CLEARTEXT),
     "cannot do cleartext authentication: stored password is hashed"),
    (format_scram_secret(make_scram_secret("x")), auth(m.AUTH_CLEARTEXT),
     "cannot do cleartext authentication: stored password is hashed"),
    (format_scram_secret(make_scram_secret("x")), auth(m.AUTH_MD5, b"salt"),
     "cannot do md5 authentication: password is a SCRAM secret"),
    (format_scram_secret(make_scram_secret("x")), auth(m.AUTH_SASL, b"SCRAM-SHA-256\0\0"),
     "no keys"),
    ("pw", auth(m.AUTH_SASL, b"SCRAM-SHA-256-PLUS\0\0"),
     "server offered no supported SASL mechanism: ['SCRAM-SHA-256-PLUS', '']"),
    ("pw", auth(m.AUTH_SASL_CONTINUE, b"r=x"), "unexpected SASL continue message from server"),
    ("pw", auth(m.AUTH_SASL_FINAL, b"v=x"), "unexpected SASL final message from server"),
    ("pw", auth(7), "unsupported server authentication method 7"),
    ("pw", m.message(b"R", b"\0"), "malformed authentication request"),
    ("pw", m.message(b"S", b"name only\0"), "malformed ParameterStatus message"),
    ("pw", m.message(b"K", b"\0\0\0\1"), "malformed BackendKeyData message"),
])
def test_what_the_pooler_cannot_answer(stored: str, request_: bytes, text: str) -> None:
    conn = login(stored)
    actions = conn.feed(request_ + m.READY_IDLE)
    assert len(actions) == 1 and isinstance(actions[0], LoginFailed)
    assert actions[0].error.message == text
    assert actions[0].severity == ""
    assert conn.state == FAILED


@pytest.mark.parametrize("header", [b"R\0\0\0\0", b"R\xff\xff\xff\xff", b"S\0\0\0\3",
                                    b"Z\x00\x0f\x42\x41"])  # 1,000,001: over the bound
def test_bad_length_fails_the_login(header: bytes) -> None:
    conn = login("pw")
    actions = conn.feed(auth(m.AUTH_OK) + header)
    assert len(actions) == 1 and isinstance(actions[0], LoginFailed)
    assert actions[0].error.message == "invalid packet from server during login"
    assert conn.state == FAILED


def test_a_long_notice_within_the_bound_is_ignored() -> None:
    conn = login("pw")
    notice = m.message(b"N", b"M" + b"x" * 500_000 + b"\0\0")
    actions = [a for chunk in splits(notice + auth(m.AUTH_OK) + m.READY_IDLE, 2)
               for a in (conn.feed(chunk) if conn.state == LOGIN else [])]
    assert actions == [LoginDone({}, 0, 0)]


def test_a_finished_login_takes_no_more_bytes() -> None:
    conn = login("pw")
    conn.feed(m.READY_IDLE)
    with pytest.raises(PgusherError, match="fed after it ended"):
        conn.feed(b"")
    failed = login("pw")
    failed.feed(m.error_response("FATAL", "28P01", "no"))
    with pytest.raises(PgusherError):
        failed.feed(m.READY_IDLE)


def test_startup_params_follow_user_and_database() -> None:
    conn = ServerLogin("u", "d", {"application_name": "a", "TimeZone": "UTC"}, None,
                       plain_scram, who="x")
    _, params = m.parse_startup(conn.startup()[4:])
    assert list(params.items()) == [("user", "u"), ("database", "d"), ("application_name", "a"),
                                    ("TimeZone", "UTC")]
