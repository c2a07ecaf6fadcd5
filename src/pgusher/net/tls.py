"""TLS on both legs: contexts from the settings, the client-side upgrade, the server-side connect.

Strategy: the SSLContexts are built once per configuration (at start, on RELOAD and on the
console's SET of a TLS setting, so changed files and modes apply to new connections) by
:func:`build_contexts`, which also validates: a mode that needs a key, a certificate or a CA
without one is a configuration error, not a connection that quietly runs in the clear. The
contexts remember the server_tls_* values they were built from: when these change, the
server connections made under the old ones are retired (see ``Application.use_tls``).

Client leg. A plain connection that sends SSLRequest is answered ``S`` and upgraded in place with
``loop.start_tls(server_side=True)``; the connection object stays the same and simply gets the
TLS transport. PostgreSQL 17's direct TLS (the first bytes are a TLS ClientHello, ALPN
"postgresql") is recognised by its first byte, which no startup packet can start with; the bytes
already read are handed to the TLS layer once it is in place. Unix sockets never use TLS, as in
PostgreSQL.

Server leg. :func:`connect_server` opens the TCP connection, sends SSLRequest when the mode asks
for TLS, and only then hands the (plain or TLS) transport to the caller's protocol, which starts
its login as if nothing happened. Every failure the mode forbids to ignore is a ServerError that
names the reason; only ``prefer`` falls back to plain text when the server says ``N``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..config import Settings
from ..errors import ClientFatal, ConfigError, ProtocolError, ServerError
from ..log import log
from ..pooling.states import STARTUP, TLS_HANDSHAKE, move_client
from ..protocol import messages as m
from .tls13 import set_tls13_ciphers

if TYPE_CHECKING:
    from .client_conn import ClientConn

ALPN = "postgresql"
SSL_REQUEST = m.INT32.pack(8) + m.INT32.pack(m.SSL_REQUEST_CODE)
SSL_YES = b"S"
_TLS_HANDSHAKE_RECORD = 0x16
_HANDSHAKE_TIMEOUT = 30.0

_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_PROTOCOL_SHORTCUTS = {
    "secure": ("tlsv1.2", "tlsv1.3"),
    "all": tuple(_VERSIONS),
    "legacy": tuple(_VERSIONS),
}
# libtls-style cipher shortcuts PgBouncer accepts; the "secure" family keeps OpenSSL's default
# list, the permissive ones open it up. Anything else is an OpenSSL cipher string.
_CIPHER_SHORTCUTS = {
    "default": None, "secure": None, "normal": None, "fast": None,
    "compat": "ALL:!aNULL:!eNULL", "legacy": "ALL:!aNULL:!eNULL",
    "insecure": "ALL", "all": "ALL",
}


_SERVER_TLS_KEYS = ("server_tls_sslmode", "server_tls_ca_file", "server_tls_key_file",
                    "server_tls_cert_file", "server_tls_protocols", "server_tls_ciphers",
                    "server_tls13_ciphers")


@dataclass(frozen=True)
class TlsContexts:
    """``client``: presented to applications (None: client_tls_sslmode = disable).
    ``server``: used toward PostgreSQL (None: never request TLS).
    ``server_key``: the server_tls_* values the server context was built from."""

    client: ssl.SSLContext | None
    server: ssl.SSLContext | None
    server_key: tuple[object, ...] = ()

    @property
    def server_mode(self) -> str:
        """The server_tls_sslmode the server context was built for."""
        return str(self.server_key[0]) if self.server_key else "prefer"


def _protocol_range(text: str, key: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    names: list[str] = []
    for word in (w.strip().lower() for w in text.replace(":", ",").split(",")):
        if not word:
            continue
        if word in _PROTOCOL_SHORTCUTS:
            names.extend(_PROTOCOL_SHORTCUTS[word])
        elif word in _VERSIONS:
            names.append(word)
        else:
            raise ConfigError(f"{key}: unknown TLS protocol '{word}'")
    if not names:
        raise ConfigError(f"{key}: no TLS protocol given")
    versions = sorted(_VERSIONS[n] for n in names)
    return versions[0], versions[-1]


def _configure(ctx: ssl.SSLContext, protocols: str, ciphers: str, ciphers13: str | None,
               prefix: str) -> None:
    low, high = _protocol_range(protocols, f"{prefix}_tls_protocols")
    try:
        ctx.minimum_version = low
        ctx.maximum_version = high
    except (ValueError, ssl.SSLError) as exc:
        raise ConfigError(f"{prefix}_tls_protocols: {exc}") from None
    cipher_list = _CIPHER_SHORTCUTS.get(ciphers.strip().lower(), ciphers)
    if cipher_list:
        try:
            ctx.set_ciphers(cipher_list)
        except ssl.SSLError:
            raise ConfigError(f"{prefix}_tls_ciphers: no usable cipher in '{ciphers}'") from None
    if ciphers13 and high >= ssl.TLSVersion.TLSv1_3:
        set_tls13_ciphers(ctx, ciphers13, f"{prefix}_tls13_ciphers")
    ctx.set_alpn_protocols([ALPN])


def _load(action: Callable[[], object], key: str, path: str) -> None:
    try:
        action()
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"{key}: cannot load {path}: {reason}") from None


def client_context(s: Settings) -> ssl.SSLContext | None:
    """The context applications see, or None when client TLS is off."""
    mode = s.client_tls_sslmode
    if mode == "disable":
        return None
    if not (s.client_tls_key_file and s.client_tls_cert_file):
        raise ConfigError(f"client_tls_sslmode = {mode} needs client_tls_key_file and "
                          "client_tls_cert_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, s.client_tls_protocols, s.client_tls_ciphers, s.client_tls13_ciphers,
               "client")
    _load(lambda: ctx.load_cert_chain(s.client_tls_cert_file, s.client_tls_key_file),
          "client_tls_cert_file", s.client_tls_cert_file)
    if s.client_tls_ca_file:
        _load(lambda: ctx.load_verify_locations(cafile=s.client_tls_ca_file),
              "client_tls_ca_file", s.client_tls_ca_file)
        # With a CA, a certificate a client offers is checked during the handshake (auth_type
        # cert and HBA clientcert rely on it). verify-ca/verify-full make one mandatory, but
        # that is checked after the handshake: a client refused inside TLS 1.3 only sees the
        # connection drop, while a FATAL after the handshake tells it why.
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif mode in ("verify-ca", "verify-full"):
        raise ConfigError(f"client_tls_sslmode = {mode} needs client_tls_ca_file")
    elif s.auth_type == "cert":
        raise ConfigError("auth_type = cert needs client_tls_ca_file")
    return ctx


def server_context(s: Settings) -> ssl.SSLContext | None:
    """The context used toward PostgreSQL, or None when TLS is never requested."""
    mode = s.server_tls_sslmode
    if mode in ("disable", "allow"):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _configure(ctx, s.server_tls_protocols, s.server_tls_ciphers, s.server_tls13_ciphers,
               "server")
    if mode in ("verify-ca", "verify-full"):
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
        if s.server_tls_ca_file:
            _load(lambda: ctx.load_verify_locations(cafile=s.server_tls_ca_file),
                  "server_tls_ca_file", s.server_tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        # prefer and require encrypt without checking who answers, as libpq does.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.server_tls_cert_file or s.server_tls_key_file:
        if not s.server_tls_cert_file:
            raise ConfigError("server_tls_key_file is set but server_tls_cert_file is not")
        _load(lambda: ctx.load_cert_chain(s.server_tls_cert_file,
                                          s.server_tls_key_file or None),
              "server_tls_cert_file", s.server_tls_cert_file)
    return ctx


def build_contexts(s: Settings) -> TlsContexts:
    """Both contexts; ConfigError (logged as PgBouncer's "TLS setup failed") when either
    cannot be built, so the caller keeps the contexts it has."""
    try:
        return TlsContexts(client_context(s), server_context(s), server_tls_key(s))
    except ConfigError as exc:
        log.error("TLS setup failed: %s", exc.message)
        raise


def server_tls_key(s: Settings) -> tuple[object, ...]:
    """What server connections were made with: when it changes, existing ones are obsolete."""
    return tuple(getattr(s, name) for name in _SERVER_TLS_KEYS)


def describe(transport: asyncio.BaseTransport) -> str:
    """PgBouncer's tls= log value: 'no', or version/cipher."""
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return "no"
    cipher = obj.cipher()
    return f"{obj.version()}/{cipher[0] if cipher else '?'}"


def peer_common_name(transport: asyncio.BaseTransport) -> str | None:
    """The CN of a verified client certificate, or None."""
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class _Holding(asyncio.Protocol):
    """Stands in for the real protocol during a handshake.

    A failed handshake then closes nothing but this, and whatever arrives between the end of
    the handshake and the hand-over is kept for the real protocol.
    """

    def __init__(self) -> None:
        self.early: list[bytes] = []
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _hand_over(transport: asyncio.Transport, holding: _Holding,
               protocol: asyncio.Protocol) -> None:
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    for chunk in holding.early:
        protocol.data_received(chunk)
    if holding.lost:
        protocol.connection_lost(None)


# ---------------------------------------------------------------------------------- client leg


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver bytes already read from the socket to a protocol, as the transport would.

    uvloop's TLS layer has the buffered-protocol methods without being registered as an
    asyncio.BufferedProtocol, so the methods are looked up rather than the type.
    """
    get_buffer = getattr(protocol, "get_buffer", None)
    if get_buffer is None:
        cast(asyncio.Protocol, protocol).data_received(data)
        return
    pos = 0
    while pos < len(data):
        view = memoryview(get_buffer(len(data) - pos))
        size = min(view.nbytes, len(data) - pos)
        view[:size] = data[pos:pos + size]
        protocol.buffer_updated(size)  # type: ignore[attr-defined]
        pos += size


def client_ssl_request(client: ClientConn, pipelined: bool) -> bool:
    """SSLRequest from a client: True when the upgrade has begun, False to answer 'N'."""
    ctx = client.app.tls.client
    if ctx is None or client.is_unix or client.tls != "no":
        return False
    if pipelined:
        # Bytes sent before our answer would be taken as if they had come over TLS.
        raise ProtocolError("received unencrypted data after SSL request")
    client.transport.write(SSL_YES)
    _begin_upgrade(client, ctx, b"")
    return True


def client_direct_tls(client: ClientConn, data: bytes) -> bool:
    """True when ``data`` opens a direct TLS connection (and the upgrade has begun)."""
    if data[0] != _TLS_HANDSHAKE_RECORD or client.tls != "no":
        return False
    ctx = client.app.tls.client
    if ctx is None or client.is_unix:
        raise ProtocolError("direct TLS connection received but TLS is not enabled")
    _begin_upgrade(client, ctx, data, direct=True)
    return True


def _begin_upgrade(client: ClientConn, ctx: ssl.SSLContext, early: bytes,
                   direct: bool = False) -> None:
    move_client(client, TLS_HANDSHAKE)
    # Nothing more may be read in the clear; start_tls resumes reading through TLS.
    client.transport.pause_reading()
    client.app.loop.create_task(_upgrade(client, ctx, early, direct))


async def _upgrade(client: ClientConn, ctx: ssl.SSLContext, early: bytes, direct: bool) -> None:
    loop = client.app.loop
    raw = client.transport
    holding = _Holding()
    task = loop.create_task(loop.start_tls(raw, holding, ctx, server_side=True,
                                           ssl_handshake_timeout=_HANDSHAKE_TIMEOUT))
    if early:
        # start_tls swaps the transport's protocol for its TLS layer at once and schedules
        # that layer's connection_made; once both happened, the ClientHello already read
        # goes in as if just received.
        while raw.get_protocol() is client and not task.done():
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        if not task.done() and not raw.is_closing():
            try:
                _feed(raw.get_protocol(), early)
            except Exception as exc:  # the handshake is then doomed
                log.warning("%s TLS handshake failed: %s", client.prefix(), exc)
                raw.close()
    try:
        transport = await task
    except OSError as exc:  # ssl.SSLError, ConnectionError and TimeoutError included
        if not client.closed:
            log.warning("%s TLS handshake failed: %s", client.prefix(), exc)
            client.close("TLS handshake failed")
        raw.close()
        return
    if client.closed or transport is None:
        if transport is not None:
            transport.close()
        return
    client.transport = client.flow.transport = transport
    client.tls = describe(transport)
    move_client(client, STARTUP)
    transport.set_protocol(client)
    if direct and transport.get_extra_info("ssl_object").selected_alpn_protocol() != ALPN:
        client.fatal(ProtocolError("received direct SSL connection request without ALPN "
                                   "protocol negotiation extension"))
        return
    # The client object already saw connection_made for the plain socket; only the bytes
    # (and a close) that came during the hand-over are passed on.
    for chunk in holding.early:
        client.data_received(chunk)
    if holding.lost and not client.closed:
        client.connection_lost(None)


def check_client_plaintext(client: ClientConn) -> None:
    """client_tls_sslmode require/verify-*: a plain TCP client is told and refused, and so
    is a TLS client without a certificate under verify-ca/verify-full."""
    mode = client.app.config.settings.client_tls_sslmode
    if client.is_unix or mode not in ("require", "verify-ca", "verify-full"):
        return
    if client.tls == "no":
        raise ClientFatal("SSL required", sqlstate="28000")
    if mode != "require" and not client.transport.get_extra_info("peercert"):
        raise ClientFatal("connection requires a valid client certificate", sqlstate="28000")


# ---------------------------------------------------------------------------------- server leg


class _SslAnswer(asyncio.Protocol):
    """Sends SSLRequest and waits for the server's one-byte answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(SSL_REQUEST)

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            # Stop reading: whatever follows belongs to TLS (or to the login, with 'N').
            # Bytes that came with the answer are checked by the caller.
            assert self.transport is not None
            self.transport.pause_reading()
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("server closed the connection "
                                                           "during TLS negotiation"))


async def connect_server(loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol,
                         host: str, port: int, tls: TlsContexts) -> None:
    """Connect ``protocol`` to host:port, with TLS as the server_tls_sslmode the contexts
    were built with says (a console SET whose contexts could not be built changes nothing).

    ``protocol.connection_made`` is called with the transport to use. Raises OSError when the
    server cannot be reached and ServerError when TLS fails in a way the mode forbids.
    """
    mode = tls.server_mode
    ctx = tls.server
    if ctx is None:
        await loop.create_connection(lambda: protocol, host, port)
        return
    raw, probe = await loop.create_connection(lambda: _SslAnswer(loop), host, port)
    try:
        answer = await probe.answer
    except ConnectionError as exc:
        raw.close()
        raise ServerError(str(exc), transient=True) from None
    if answer == SSL_YES:
        holding = _Holding()
        try:
            transport = await loop.start_tls(raw, holding, ctx, server_hostname=host,
                                             ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise ServerError(f"server certificate verification failed "
                              f"(server_tls_sslmode = {mode}): {exc.verify_message}") from None
        except OSError as exc:
            raw.close()
            # A reset or a timeout may pass; a TLS error proper (versions, ciphers) will not.
            raise ServerError(f"TLS handshake with server failed: {exc}",
                              transient=not isinstance(exc, ssl.SSLError)) from None
        if transport is None:
            raw.close()
            raise ServerError("TLS handshake with server failed")
        _hand_over(transport, holding, protocol)
        return
    if answer[:1] == b"N" and len(answer) == 1:
        if mode == "prefer":
            raw.set_protocol(protocol)
            protocol.connection_made(raw)
            raw.resume_reading()
            return
        raw.close()
        raise ServerError(f"server does not support TLS, but server_tls_sslmode = {mode} "
                          "requires it")
    raw.close()
    if answer[:1] in (b"S", b"N"):
        raise ServerError("server sent unencrypted data after its answer to SSLRequest")
    raise ServerError("server answered SSLRequest with an error")
