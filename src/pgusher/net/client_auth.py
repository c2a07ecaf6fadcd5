"""Who may log in, and with what: the decisions around a client's authentication.

Strategy: ``client_conn`` runs the password exchanges; this module decides everything around
them, so the connection code only calls in at a few points:

* :func:`load_security` builds what a configuration needs (TLS contexts, HBA rules) and fails
  with ConfigError before anything is applied, so a bad RELOAD changes nothing;
* :func:`auth_method` says which method applies: ``auth_type``, or with ``auth_type = hba`` the
  first matching pg_hba.conf rule; ``cert`` and ``peer`` are checked right there;
* :func:`start_lookup` asks auth_query for a user missing from auth_file;
* :func:`login_failed` logs the failure with address and user and holds the answer back:
  ``auth_fail_delay`` (``[pgusher]``) for every failure, and longer and longer for repeated
  failures from one source address (:class:`FailedLogins`, up to ``auth_fail_delay_max``),
  so that guessing passwords is slow. A timer sends the error; nothing else waits;
* :func:`scram_login` picks how the pooler answers a server's SCRAM request, including SCRAM
  pass-through with the keys a client's login proved (see ``auth/passthrough.py``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import socket
import struct
from typing import TYPE_CHECKING

from ..auth.hba import HbaRule, match_hba, parse_hba
from ..auth.ident import map_allows, parse_ident
from ..auth.scram import ScramClient, is_scram_secret
from ..config import Config
from ..errors import AuthError, ConfigError, PgusherError
from ..log import log
from ..pooling.states import AUTH_FAILED, move_client
from .tls import TlsContexts, build_contexts, peer_common_name

if TYPE_CHECKING:
    from ..app import Application
    from ..pooling.pool import Pool
    from .client_conn import ClientConn

# HBA method names -> the auth_type word client_conn runs.
_HBA_TO_AUTH_TYPE = {"password": "plain"}


def load_hba(path: str, ident_path: str | None = None) -> list[HbaRule]:
    """The rules of ``path``, with the user name maps their ``map=`` options name taken from
    ``ident_path`` (auth_ident_file); ConfigError when a map cannot be found."""
    rules = _read_hba(path)
    if not any(rule.map_name for rule in rules):
        return rules
    if not ident_path:
        raise ConfigError(f"{path}: map= needs auth_ident_file")
    try:
        with open(ident_path, encoding="utf-8", errors="surrogateescape") as handle:
            maps = parse_ident(handle.read(), ident_path)
    except OSError as exc:
        raise ConfigError(f"could not read auth_ident_file {ident_path}: "
                          f"{exc.strerror or exc}") from None
    out = []
    for rule in rules:
        if rule.map_name:
            if rule.map_name not in maps:
                raise ConfigError(f"{path}:{rule.lineno}: ident map {rule.map_name} is not "
                                  f"found in {ident_path}")
            rule = dataclasses.replace(rule, ident_map=maps[rule.map_name])
        out.append(rule)
    return out


def _read_hba(path: str) -> list[HbaRule]:
    if not path:
        raise ConfigError("auth_type = hba needs auth_hba_file")
    base = os.path.dirname(os.path.abspath(path))

    def read(name: str) -> str:
        full = name if os.path.isabs(name) else os.path.join(base, name)
        with open(full, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()

    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"could not read auth_hba_file {path}: {exc.strerror or exc}") from None
    return parse_hba(text, path, read)


def load_security(config: Config) -> tuple[TlsContexts, list[HbaRule] | None]:
    """Everything security-related a configuration needs, built and checked up front."""
    s = config.settings
    if s.auth_type == "cert" and s.client_tls_sslmode == "disable":
        raise ConfigError("auth_type = cert needs client_tls_sslmode other than disable")
    contexts = build_contexts(s)
    hba = load_hba(s.auth_hba_file, s.auth_ident_file) if s.auth_type == "hba" else None
    return contexts, hba


# ---------------------------------------------------------------------------------- methods


def _where(client: ClientConn) -> str:
    host = "[local]" if client.is_unix else client.addr.rsplit(":", 1)[0]
    encryption = "SSL encryption" if client.tls != "no" else "no encryption"
    return (f'host "{host}", user "{client.user}", database "{client.db_name}", '
            f"{encryption}")


def _client_ip(client: ClientConn) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if client.is_unix:
        return None
    try:
        return ipaddress.ip_address(client.addr.rsplit(":", 1)[0].split("%", 1)[0])
    except ValueError:
        return None


def auth_method(client: ClientConn) -> str:
    """The auth_type word to run for this client; raises AuthError when it is refused."""
    app = client.app
    method = app.config.settings.auth_type
    clientcert = ""
    ident: HbaRule | None = None  # the rule whose user name map applies
    if method == "hba":
        rules = app.hba or []
        rule = match_hba(rules, local=client.is_unix, tls=client.tls != "no",
                         database=client.db_name, user=client.user, address=_client_ip(client))
        if rule is None:
            raise AuthError(f"no pg_hba.conf entry for {_where(client)}", sqlstate="28000")
        if rule.method == "reject":
            raise AuthError(f"pg_hba.conf rejects connection for {_where(client)}",
                            sqlstate="28000")
        method = _HBA_TO_AUTH_TYPE.get(rule.method, rule.method)
        clientcert = rule.clientcert
        if rule.ident_map is not None:
            ident = rule
    elif method == "cert":
        clientcert = "verify-full"
    if clientcert:
        name = peer_common_name(client.transport) if client.tls != "no" else None
        if name is None:
            raise AuthError("connection requires a valid client certificate", sqlstate="28000")
        if method == "cert" and ident is not None:
            if not _mapped(client, ident, name, "ident map: %s does not have a match"):
                raise AuthError(f'certificate authentication failed for user "{client.user}"')
        elif clientcert == "verify-full" and name != client.user:
            raise AuthError(f'certificate authentication failed for user "{client.user}": '
                            f'the certificate is for "{name}"')
    if method == "peer":
        owner = _peer_user(client)
        if ident is not None:
            if not _mapped(client, ident, owner, "ident map %s cannot be matched"):
                raise AuthError(f'Peer authentication failed for user "{client.user}"')
        elif owner != client.user:
            raise AuthError(f'Peer authentication failed for user "{client.user}"')
    return method


def _mapped(client: ClientConn, rule: HbaRule, system_user: str | None, failure: str) -> bool:
    """Whether the rule's user name map lets ``system_user`` in as the client's user; a
    refusal is logged in PgBouncer's words (``failure`` takes the map's name)."""
    assert rule.ident_map is not None
    if map_allows(rule.ident_map, system_user, client.user):
        return True
    log.warning("%s " + failure, client.prefix(), rule.map_name)
    return False


def _peer_user(client: ClientConn) -> str | None:
    sock = client.transport.get_extra_info("socket")
    if sock is None or not client.is_unix or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        uid = struct.unpack("3i", raw)[1]
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return None


def start_lookup(client: ClientConn, method: str) -> bool:
    """Ask auth_query for the secret of a user missing from auth_file.

    True when a lookup is under way (``client.secret_found`` is called later)."""
    if method == "any":
        return False
    target = client.app.find_target(client.db_name)
    if target is None:
        return False

    def done(found: bool, secret: str | None, error: PgusherError | None) -> None:
        if client.closed:
            return
        if error is not None:
            client.fatal(error)
            return
        # A missing user and a NULL secret (expired VALID UNTIL) fail like a wrong password,
        # except under trust, where a NULL secret logs in (see ClientLogin.secret_found).
        client.secret_found(method, found, secret if found else None)

    return client.app.lookups.lookup(target, client.user, done, client.prefix())


class FailedLogins:
    """Recent failed logins per source address (the IP; all unix-socket clients are one).

    A source's count goes up with each failure and is forgotten after FORGET seconds
    without one. The table is bounded: past LIMIT sources, the forgotten ones are dropped,
    then the quietest half.
    """

    FORGET = 60.0
    LIMIT = 4096
    FIRST_STEP = 0.05  # the delay of a source's second failure; it doubles from there

    def __init__(self) -> None:
        self._by_source: dict[str, tuple[int, float]] = {}

    def note(self, source: str, now: float) -> int:
        """Count a failure from ``source``; the number of its recent failures."""
        count, last = self._by_source.get(source, (0, now))
        if now - last > self.FORGET:
            count = 0
        count += 1
        self._by_source[source] = (count, now)
        if len(self._by_source) > self.LIMIT:
            self._prune(now)
        return count

    def _prune(self, now: float) -> None:
        table = self._by_source
        for source in [k for k, (_, last) in table.items() if now - last > self.FORGET]:
            del table[source]
        if len(table) > self.LIMIT // 2:
            by_age = sorted(table.items(), key=lambda item: item[1][1])
            for source, _ in by_age[:len(table) // 2]:
                del table[source]

    @classmethod
    def delay(cls, count: int, base: float, most: float) -> float:
        """How long to hold back the answer to failure number ``count`` from one source:
        ``base`` for every failure; from the second on, 50 ms doubling with each further
        failure, up to ``most`` (0: no growth)."""
        if most <= 0 or count < 2:
            return base
        return max(base, min(most, cls.FIRST_STEP * 2.0 ** min(count - 2, 30)))


def _source(client: ClientConn) -> str:
    return "[local]" if client.is_unix else client.addr.rsplit(":", 1)[0]


def failure_reason(client: ClientConn, err: AuthError) -> str:
    """The reason label of a failed login (pgusher_client_auth_failures_total)."""
    text = err.message
    if "pg_hba.conf" in text:
        return "hba"
    if "certificate" in text:
        return "certificate"
    if text.startswith("Peer authentication"):
        return "peer"
    if text == "no such user" or text == '"trust" authentication failed':
        return "no_such_user"
    if text.startswith(("password authentication failed", "SASL authentication failed")):
        # Neither auth_file nor auth_query knew the user: the exchange was bound to fail.
        known = (client.app.userlist.get(client.user) is not None
                 or client._login_secret is not None)
        return "password" if known else "no_such_user"
    return "other"


def login_failed(client: ClientConn, err: AuthError) -> None:
    """Log a failed login with address and user; answer now, or later after repeated ones.
    The closing line gives the error's own text, as PgBouncer's "closing because" does."""
    what = err.message
    app = client.app
    app.metrics.events.auth_failed(failure_reason(client, err))
    source = _source(client)
    count = app.failed_logins.note(source, app.loop.time())
    settings = app.config.pgusher
    delay = FailedLogins.delay(count, settings.auth_fail_delay, settings.auth_fail_delay_max)
    if count > 1 and delay > 0:
        log.warning("%s %s (%d recent failed logins from %s: answered after %.2fs)",
                    client.prefix(), what, count, source, delay)
    else:
        log.warning("%s %s", client.prefix(), what)
    if delay > 0:
        move_client(client, AUTH_FAILED)
        client.transport.pause_reading()
        client.app.loop.call_later(delay, client.fatal, err)
    else:
        client.fatal(err)


def logged_in(client: ClientConn, pool: Pool, secret: str | None) -> None:
    """A client passed authentication for ``pool``: give the pool what it needs to log in."""
    if pool.user != client.user:
        return
    if secret is not None and pool.target.password is None:
        pool.password = secret  # looked up by auth_query
    err = pool.last_login_error
    if (err is not None and pool.total == 0 and "no client has logged in" in err.message
            and pool.password is not None
            and client.app.scram_keys.keys_for(pool.user, pool.password) is not None):
        # The previous attempt only lacked the keys this login just provided.
        pool.forget_failure()


# ---------------------------------------------------------------------------------- server


def scram_login(app: Application, user: str, password: str) -> ScramClient:
    """How to answer a server's SCRAM request as ``user`` whose stored secret is ``password``."""
    if is_scram_secret(password):
        keys = app.scram_keys.keys_for(user, password)
        if keys is None:
            raise AuthError(f'cannot do SCRAM authentication as user "{user}": wrong password '
                            "type: only a SCRAM secret is stored and no client has logged in "
                            "with SCRAM or a password against it yet (SCRAM pass-through "
                            "needs one)")
        return ScramClient.from_keys(*keys)
    if password.startswith("md5") and len(password) == 35:
        raise AuthError(f'cannot do SCRAM authentication as user "{user}": wrong password '
                        "type: the stored password is an md5 hash")
    return ScramClient(password)
