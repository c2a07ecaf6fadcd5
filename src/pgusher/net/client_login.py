"""The login phase of a client connection: startup packet and authentication.

Strategy: everything before the welcome is handled by the pooler itself, without a server round
trip. The startup packet is read whole by the bounded MessageReader, one packet at a time,
since what follows one may belong to TLS or to the next phase (SSLRequest, GSSENCRequest and
CancelRequest are answered on the way); password messages are read by a typed one. Startup
parameters are sorted into tracked ones, session settings and ignored ones, and the password
exchange (cleartext, md5 or SCRAM) is checked against the secret that auth_file, HBA or
auth_query gives. :class:`ClientConn` inherits this and takes over at ``finish_login``, taking
from the reader what the client sent before its welcome.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..auth.md5 import md5_check, md5_password_hash
from ..auth.scram import ScramServer, is_scram_secret, make_scram_secret, parse_scram_secret
from ..errors import AuthError, ClientFatal, PgusherError, ProtocolError
from ..log import log
from ..pooling.states import (
    AUTH,
    CANCEL,
    LOGIN_WAIT,
    READY,
    SESSION,
    STARTUP,
    ClientState,
    move_client,
)
from ..protocol import messages as m
from ..protocol.encodings import canonical_encoding
from ..protocol.reader import MessageReader
from ..protocol.session import parse_options
from . import client_auth, tls
from .server_conn import sql_literal

if TYPE_CHECKING:
    from ..app import Application
    from ..metrics.counters import Counters
    from ..pooling.pool import Pool
    from .client_conn import ClientConn

# The longest password or SASL message a client may send (PostgreSQL's own bound for them).
MAX_AUTH_MESSAGE = 65536

# The welcome repeats the same few parameter values for every login: encode each once.
_parameter_status = functools.lru_cache(maxsize=4096)(m.parameter_status)


class ClientLogin(asyncio.Protocol):
    """Startup and authentication; the attributes are :class:`ClientConn`'s."""

    if not TYPE_CHECKING:
        __slots__ = ()  # the slots are ClientConn's; none here, so no per-instance __dict__
    else:
        app: Application
        transport: asyncio.Transport
        state: ClientState
        user: str
        db_name: str
        addr: str
        tls: str
        pool: Pool | None
        startup_params: dict[str, str]
        session_defaults: dict[str, str]
        session_sets: dict[str, str]
        _reader: MessageReader
        _auth_step: str
        _scram: ScramServer | None
        _salt: bytes
        _secret: str
        _login_secret: str | None

        admin: bool
        prefix: Callable[[], str]
        fatal: Callable[..., None]
        close: Callable[..., None]
        closed: bool
        _login_timer: asyncio.TimerHandle | None
        params: dict[str, str]
        translating: bool
        stats: Counters
        welcome: dict[str, str] | None
        cancel_pid: int
        cancel_key: int

    # True on a worker's private socket, where only siblings connect: for cancel requests
    # and for console questions that are answered for this worker alone.
    internal = False

    @property
    def conn(self) -> ClientConn:
        """This connection as the full :class:`ClientConn` it always is."""
        return cast("ClientConn", self)

    # ------------------------------------------------------------------ startup

    def _startup_data(self, data: bytes) -> None:
        reader = self._reader
        if not reader.pending and tls.client_direct_tls(self.conn, data):
            return
        reader.push(data)
        # One packet at a time: what follows one stays in the reader (an SSLRequest must stand
        # alone; after the startup packet come the password messages).
        while self.state == STARTUP:
            try:
                packet = reader.next()
            except ProtocolError:
                # PostgreSQL only logs this and closes: such a peer is no client to answer
                # (one that left before starting up, or not a PostgreSQL client at all).
                self.close("invalid length of startup packet")
                return
            if packet is None:
                break
            self._startup_packet(packet[1])
        if self.state == AUTH:
            # Password messages are typed: what came after the startup packet is read as such.
            self._reader = MessageReader(MAX_AUTH_MESSAGE)
            self._reader.push(reader.take_rest())
            self._auth_messages()

    def _startup_packet(self, packet: bytes) -> None:
        code = m.INT32.unpack_from(packet, 0)[0]
        if code == m.SSL_REQUEST_CODE and tls.client_ssl_request(self.conn,
                                                                   bool(self._reader.pending)):
            return
        if code in (m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE):
            self.transport.write(m.SSL_NO)
            return
        if code == m.CANCEL_REQUEST_CODE:
            if len(packet) != 12:
                raise ProtocolError("invalid cancel request")
            pid, key = struct.unpack_from("!ii", packet, 4)
            conn = self.conn
            self.app.client_is_cancel(conn)
            move_client(self, CANCEL)
            # Closed only once the server has the request (or it was dropped), as PostgreSQL
            # closes a cancel connection only after signalling the backend.
            self.app.forward_cancel(pid, key, lambda: conn.close("cancel request", quiet=True),
                                    internal=self.internal)
            return
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            raise ClientFatal(f"unsupported frontend protocol {major}.{minor}: server supports "
                              "3.0 to 3.0", sqlstate="0A000")
        _, params = m.parse_startup(m.INT32.pack(m.PROTOCOL_3_0) + packet[4:])
        if minor != 0:
            unknown = [k for k in params if k.startswith("_pq_.")]
            body = m.INT32.pack(0) + m.INT32.pack(len(unknown))
            body += b"".join(m.cstr(k) for k in unknown)
            self.transport.write(m.message(b"v", body))
        for key in [k for k in params if k.startswith("_pq_.")]:
            del params[key]
        self._startup(params)

    def _startup(self, params: dict[str, str]) -> None:
        app = self.app
        settings = app.config.settings
        user = params.get("user", "")
        if not user:
            raise ClientFatal("no username supplied", sqlstate="28000")
        self.user = user
        self.db_name = params.get("database") or user
        if self.internal:
            app.console.attach_internal(self.conn)
            return
        if settings.log_connections:
            log.info("%s login attempt: db=%s user=%s tls=%s", self.prefix(), self.db_name,
                     self.user, self.tls)
        tls.check_client_plaintext(self.conn)
        if app.console.wants(self.conn, params):  # the admin console takes any parameter
            return  # and max_client_conn does not hold it back, as in PgBouncer
        if app.client_count() > settings.max_client_conn:
            app.metrics.events.refused("max_client_conn")
            raise ClientFatal("no more connections allowed (max_client_conn)",
                              sqlstate="53300")
        ignored = {p.lower() for p in settings.ignore_startup_parameters}
        for key, value in params.items():
            low = key.lower()
            if low in ("user", "database"):
                continue
            canon = app.tracked_params.get(low)
            if canon is not None:
                if canon == "client_encoding":
                    value = canonical_encoding(value)
                elif canon == "application_name" and settings.application_name_add_host:
                    value = f"{value} - {self.addr}"
                self.startup_params[canon] = value
            elif low in ignored:
                continue
            elif low == "replication":
                raise ClientFatal(f"unsupported startup parameter: {key}", sqlstate="08P01")
            elif low == "options":
                for name, setting in parse_options(value):
                    # ignore_startup_parameters names settings, wherever they come from
                    if name.lower() not in ignored:
                        self._startup_setting(name, setting)
            else:
                # Any other setting becomes the client's own session default, applied on
                # every server connection it uses (PgBouncer refuses these).
                self._startup_setting(low, value)
        # An unknown database is refused only after authentication (get_pool), as PgBouncer
        # does: an unauthenticated client learns nothing about which databases exist.
        target = app.find_target(self.db_name)
        if target is not None:
            app.check_client_limits(self.conn, target)
        move_client(self, AUTH)
        self._begin_auth()

    def _startup_setting(self, name: str, value: str) -> None:
        canon = self.app.tracked_params.get(name.lower())
        if canon is not None:
            self.startup_params[canon] = value
            return
        literal = sql_literal(value)
        self.session_defaults[name.lower()] = literal
        self.session_sets[name.lower()] = literal

    # ------------------------------------------------------------------ authentication

    def _begin_auth(self) -> None:
        try:
            method = client_auth.auth_method(self.conn)
        except AuthError as exc:
            self._auth_failed(exc)
            return
        if method in ("cert", "peer"):
            self._auth_ok()  # the certificate or the socket's owner already proved it
            return
        secret = self.app.userlist.get(self.user)
        if secret is None and client_auth.start_lookup(self.conn, method):
            return  # continues in secret_found
        self._auth_with(method, secret, secret is not None)

    def secret_found(self, method: str, found: bool, secret: str | None) -> None:
        """auth_query answered: ``found`` the user, with ``secret`` (None: no password
        allowed, e.g. an expired VALID UNTIL)."""
        self._login_secret = secret
        try:
            if method == "trust" and not found:
                # Under trust the name is all a client gives, so saying that it is unknown
                # tells nothing a successful login would not (PgBouncer's wording).
                self._auth_failed(AuthError("no such user", sqlstate="28000"))
                return
            self._auth_with(method, secret, found)
        except PgusherError as exc:
            self.fatal(exc)

    def _auth_with(self, method: str, secret: str | None, known: bool) -> None:
        """Authenticate by ``method`` against ``secret``; ``known``: the user is in auth_file
        or auth_query found it (with a secret or a NULL one)."""
        if method == "any":
            self._auth_ok()
            return
        if secret is None:
            # In the log only, as PgBouncer does: the client gets the generic failure below.
            log.info("%s no such user: %s", self.prefix(), self.user)
        if method == "trust":
            if not known:
                self._auth_failed(AuthError('"trust" authentication failed',
                                            sqlstate="28000"))
                return
            self._auth_ok()
            return
        if method not in ("plain", "md5", "scram-sha-256"):
            raise ClientFatal(f"auth_type {method} is not supported by this pgusher version",
                              sqlstate="28000")
        # An unknown user goes through a full exchange that is bound to fail, so the reply
        # does not reveal which user names exist.
        if method == "plain":
            self._secret = secret if secret is not None else secrets.token_hex(16)
            self._auth_step = "password"
            self.transport.write(m.AUTH_CLEARTEXT_MSG)
            return
        if method == "scram-sha-256" or (secret is not None and is_scram_secret(secret)):
            # ScramServer fails an md5-hashed secret itself, as PostgreSQL does.
            self._scram = (ScramServer(secret) if secret is not None
                           else ScramServer.mock(self.user))
            self._secret = secret or ""
            self._auth_step = "scram-first"
            self.transport.write(m.auth_sasl_request(["SCRAM-SHA-256"]))
            return
        self._secret = secret or ""
        self._auth_step = "md5" if secret is not None else "md5-doomed"
        self._salt = os.urandom(4)
        self.transport.write(m.auth_md5_request(self._salt))

    def _auth_data(self, data: bytes) -> None:
        self._reader.push(data)
        self._auth_messages()

    def _auth_messages(self) -> None:
        reader = self._reader
        while self.state == AUTH:
            header = reader.header()
            if header is None:
                return
            kind = header[0]
            # The type is judged before the length: a client that is not answering the
            # request hears so, whatever length it sent.
            if kind != 112:  # 'p'
                what = "SASL" if self._auth_step.startswith("scram") else "password"
                raise ProtocolError(f"expected {what} response, got message type {kind}")
            try:
                message = reader.next()
            except ProtocolError:
                raise ProtocolError("invalid password packet length") from None
            if message is None:
                return
            # Once the login is decided, the bytes after this message are taken from the
            # reader by whoever goes on (finish_login, or the console's session).
            self._auth_message(message[1])

    def _auth_message(self, body: bytes) -> None:
        step = self._auth_step
        if step == "password":
            password = m.parse_password(body).decode("utf-8", "replace")
            if self._check_plain(password):
                self._auth_ok()
            else:
                self._auth_failed()
        elif step in ("md5", "md5-doomed"):
            response = m.parse_password(body)
            if step == "md5" and md5_check(self.user, self._secret, self._salt, response):
                self._auth_ok()
            else:
                self._auth_failed()
        elif step == "scram-first":
            assert self._scram is not None
            mechanism, data = m.parse_sasl_initial(body)
            if mechanism != "SCRAM-SHA-256":
                raise AuthError(f"client selected an invalid SASL authentication mechanism "
                                f"{mechanism!r}", sqlstate="08P01")
            reply = self._scram.server_first(data)
            self._auth_step = "scram-final"
            self.transport.write(m.auth_sasl_continue(reply))
        elif step == "scram-final":
            assert self._scram is not None
            try:
                final = self._scram.server_final(body)
            except AuthError as exc:
                if exc.sqlstate != "28P01":
                    raise
                self._auth_failed(AuthError(f'SASL authentication failed for user '
                                            f'"{self.user}"'))
                return
            self.transport.write(m.auth_sasl_final(final))
            if self._scram.client_key is not None:
                self.app.scram_keys.remember(self.user, self._secret, self._scram.client_key)
            self._auth_ok()
        else:
            raise ProtocolError("unexpected password message")

    def _check_plain(self, password: str) -> bool:
        secret = self._secret
        if is_scram_secret(secret):
            parsed = parse_scram_secret(secret)
            if parsed is None:
                return False
            mine = make_scram_secret(password, parsed.salt, parsed.iterations)
            if not secrets.compare_digest(mine.stored_key, parsed.stored_key):
                return False
            self.app.scram_keys.remember_password(self.user, secret, password)
            return True
        if secret.startswith("md5") and len(secret) == 35:
            return secrets.compare_digest(md5_password_hash(self.user, password), secret)
        return secrets.compare_digest(password.encode(), secret.encode())

    def _auth_failed(self, exc: AuthError | None = None) -> None:
        if exc is None:
            exc = AuthError(f'password authentication failed for user "{self.user}"')
        client_auth.login_failed(self.conn, exc)

    def _auth_ok(self) -> None:
        self._scram = None
        self._secret = ""
        # AuthenticationOk goes out with the welcome (finish_login): one write, and the
        # client reads its whole login reply at once.
        move_client(self, LOGIN_WAIT)
        if self.admin:
            self.transport.write(m.AUTH_OK_MSG)
            self.app.console.attach(self.conn)
            return
        try:
            pool = self.app.get_pool(self.db_name, self.user)
        except PgusherError as exc:
            self.fatal(exc)
            return
        self.pool = pool
        client_auth.logged_in(self.conn, pool, self._login_secret)
        self._login_secret = None
        pool.request_welcome(self.conn)

    # ------------------------------------------------------------------ the welcome

    def finish_login(self, welcome: dict[str, str]) -> None:
        """The pool knows its server's parameters: send the welcome and go live.

        In session mode the client keeps one server for good, so when the pool can give one
        at once (an idle one, or room to open one) and peering does not need the process id
        to route cancels, that server is linked first and its real process id goes in the
        welcome. A login never queues behind other clients for it: with the pool full the
        welcome goes out as in the other modes, and the server is linked at the first query."""
        if self.closed:
            return
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        tracked = self.app.tracked_params
        shown = dict(welcome)
        shown.update(self.startup_params)
        self.params = {canon: shown[canon] for canon in tracked.values() if canon in shown}
        pool = self.pool
        self.translating = pool is not None and pool.mode != SESSION
        self.stats = self.app.metrics.login(self.conn)
        if (pool is not None and pool.mode == SESSION and self.app.config.pgusher.session_real_pid
                and not self.app.config.settings.peer_id and pool.serves_at_once(self.conn)):
            self.welcome = shown
            pool.request(self.conn)
            return
        self.send_welcome(shown, 0)
        self.take_early()

    def send_welcome(self, shown: dict[str, str], real_pid: int) -> None:
        self.cancel_pid, self.cancel_key = self.app.register_cancel_key(self.conn, real_pid)
        out = [m.AUTH_OK_MSG] if self.state == LOGIN_WAIT else []
        out += [_parameter_status(k, v) for k, v in shown.items()]
        out.append(m.backend_key_data(self.cancel_pid, self.cancel_key))
        notice = self.app.config.settings.login_notify_message
        if notice:
            out.append(m.notice_response(notice))
        out.append(m.READY_IDLE)
        self.transport.write(b"".join(out))
        move_client(self, READY)
        if self.app.config.settings.log_connections:
            log.debug("%s login ok", self.prefix())

    def take_early(self) -> None:
        """Messages that came behind the login, before the welcome: handle them now."""
        early = self._reader.take_rest()
        if early:
            self.data_received(early)
