"""pg_hba.conf rules: a parser and a matcher (auth_type = hba).

Strategy: sans-IO. :func:`parse_hba` takes the file's text and a callback that returns the text
of an ``@file`` include, so a unit test can feed any bytes it likes. Parsing is strict: the
first line that cannot be understood raises ConfigError naming ``file:line``, and the whole
rule set is refused (a half-read HBA file could let in someone a later line keeps out). The
matcher walks the rules in order; the first rule whose connection type, database, user and
address all match decides the method, and no match means the connection is rejected.

The file format is PostgreSQL's: one rule per line, ``#`` comments, fields separated by blanks,
lists separated by commas, double quotes to keep a blank, comma or keyword literal, and a
backslash at the end of a line to continue it. Supported here:

* connection types ``local``, ``host``, ``hostssl`` and ``hostnossl``;
* databases: names, ``all``, ``sameuser``, ``replication`` (never matches: the pooler does not
  carry replication connections) and ``@file``;
* users: names, ``all`` and ``@file``;
* addresses: ``all``, CIDR (``10.0.0.0/8``, ``::1/128``) or an address plus a mask field;
* methods ``trust``, ``reject``, ``md5``, ``scram-sha-256``, ``password``, ``cert`` and
  ``peer``, and the options ``clientcert=verify-ca|verify-full`` and, for ``cert`` and
  ``peer``, ``map=NAME`` (a user name map of auth_ident_file, see ``ident.py``);
* blanks around the commas of a list (``a , b``), as PgBouncer reads them.

Anything else PostgreSQL knows (``+group``, ``samerole``, host names, ``samehost``/``samenet``,
the other methods) is an error rather than a rule that silently never matches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from pgusher.errors import ConfigError

__all__ = ["METHODS", "HbaRule", "IdentMapping", "Token", "logical_lines", "match_hba", "parse_hba",
           "tokenize_line"]

METHODS = ("trust", "reject", "md5", "scram-sha-256", "password", "cert", "peer")
CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
_KNOWN_UNSUPPORTED_METHODS = ("ident", "gss", "sspi", "pam", "ldap", "radius", "bsd", "oauth")
_MAX_INCLUDE_DEPTH = 10

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ReadInclude = Callable[[str], str]


@dataclass(frozen=True)
class Token:
    """One word of a field; ``quoted`` tokens are never keywords."""

    text: str
    quoted: bool = False

    def keyword(self, word: str) -> bool:
        return not self.quoted and self.text == word


@dataclass(frozen=True)
class IdentMapping:
    """One line of a user name map: ``system_user`` may log in as ``pg_user`` (the keyword
    ``all``: as anyone). Parsed by auth/ident.py."""

    system_user: str
    pg_user: Token


@dataclass(frozen=True)
class HbaRule:
    """One parsed line. ``databases``/``users`` hold names; keywords are kept as Tokens."""

    lineno: int
    conn_type: str
    databases: tuple[Token, ...]
    users: tuple[Token, ...]
    network: Network | None  # None: any address (and always for local)
    method: str
    options: dict[str, str] = field(default_factory=dict)
    # The entries of the ``map=`` option's user name map, filled in when the rules are loaded
    # with auth_ident_file (see auth/ident.py); None: no map.
    ident_map: tuple[IdentMapping, ...] | None = None

    @property
    def map_name(self) -> str:
        return self.options.get("map", "")

    @property
    def clientcert(self) -> str:
        """'' (no client certificate needed), 'verify-ca' or 'verify-full'."""
        if self.method == "cert":
            return "verify-full"
        return self.options.get("clientcert", "")


class _LineError(ValueError):
    pass


# ---------------------------------------------------------------------------------- tokens


def tokenize_line(line: str) -> list[list[Token]]:
    """Split one logical line into fields, each a list of comma-separated tokens."""
    fields: list[list[Token]] = []
    current: list[Token] | None = None
    pos, n = 0, len(line)
    while pos < n:
        ch = line[pos]
        if ch in " \t\r\n\f\v":
            pos += 1
            continue
        if ch == "#":
            break
        text: list[str] = []
        quoted = False
        in_quote = False
        while pos < n:
            ch = line[pos]
            if in_quote:
                if ch == '"':
                    if pos + 1 < n and line[pos + 1] == '"':
                        text.append('"')
                        pos += 2
                        continue
                    in_quote = False
                else:
                    text.append(ch)
                pos += 1
                continue
            if ch == '"':
                in_quote = quoted = True
                pos += 1
                continue
            if ch in " \t\r\n\f\v," or ch == "#":
                break
            text.append(ch)
            pos += 1
        if in_quote:
            raise _LineError("unterminated quoted string")
        token = Token("".join(text), quoted)
        if current is None:
            current = []
            fields.append(current)
        current.append(token)
        after = pos
        while after < n and line[after] in " \t":
            after += 1
        if after < n and line[after] == ",":
            # The next token belongs to the same field, blanks before the comma or not
            # ("a , b" is a list, as PgBouncer reads it).
            pos = after + 1
            while pos < n and line[pos] in " \t":
                pos += 1
            if pos >= n or line[pos] == "#":
                raise _LineError("end of line after a comma")
        else:
            current = None
    return fields


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


# ---------------------------------------------------------------------------------- fields


def _expand_list(tokens: list[Token], what: str, read: ReadInclude | None, depth: int,
                 ) -> list[Token]:
    """Resolve ``@file`` tokens into the names the file lists."""
    out: list[Token] = []
    for token in tokens:
        if token.quoted or not token.text.startswith("@"):
            out.append(token)
            continue
        name = token.text[1:]
        if not name:
            raise _LineError(f"empty file name after @ in the {what} field")
        if read is None:
            raise _LineError(f"cannot read @{name}: no include reader")
        if depth >= _MAX_INCLUDE_DEPTH:
            raise _LineError(f"@{name}: includes nested too deeply")
        try:
            included = read(name)
        except OSError as exc:
            raise _LineError(f"could not read @{name}: {exc.strerror or exc}") from None
        for _, line in logical_lines(included):
            for sub_field in tokenize_line(line):
                out.extend(_expand_list(sub_field, what, read, depth + 1))
    return out


def _check_names(tokens: list[Token], what: str) -> tuple[Token, ...]:
    for token in tokens:
        if not token.text:
            raise _LineError(f"empty {what} name")
        if token.quoted:
            continue
        if token.text.startswith("+"):
            raise _LineError(f"group membership ({token.text}) is not supported")
        if what == "database" and token.text in ("samerole", "samegroup"):
            raise _LineError(f"{token.text} is not supported")
    return tuple(tokens)


def _parse_address(fields: list[list[Token]], idx: int) -> tuple[Network | None, int]:
    """The address (and maybe mask) fields starting at ``idx``; returns (network, next idx)."""
    if idx >= len(fields):
        raise _LineError("end of line before the client address")
    field_ = fields[idx]
    if len(field_) != 1:
        raise _LineError("multiple values in the address field")
    token = field_[0]
    if token.keyword("all"):
        return None, idx + 1
    if token.keyword("samehost") or token.keyword("samenet"):
        raise _LineError(f"{token.text} is not supported")
    text = token.text
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=False), idx + 1
        except ValueError:
            raise _LineError(f'invalid IP address or mask "{text}"') from None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _LineError(f'host names are not supported: "{text}"') from None
    if idx + 1 >= len(fields) or len(fields[idx + 1]) != 1:
        raise _LineError(f'IP address "{text}" needs a CIDR mask or a mask field')
    mask_text = fields[idx + 1][0].text
    try:
        mask = ipaddress.ip_address(mask_text)
    except ValueError:
        raise _LineError(f'invalid IP mask "{mask_text}"') from None
    if mask.version != address.version:
        raise _LineError("IP address and mask do not match")
    try:
        network = ipaddress.ip_network(f"{address}/{mask}", strict=False)
    except ValueError:
        raise _LineError(f'invalid IP mask "{mask_text}"') from None
    return network, idx + 2


def _parse_rule(lineno: int, fields: list[list[Token]], read: ReadInclude | None) -> HbaRule:
    def single(idx: int, what: str) -> str:
        if idx >= len(fields):
            raise _LineError(f"end of line before the {what}")
        if len(fields[idx]) != 1:
            raise _LineError(f"multiple values in the {what} field")
        return fields[idx][0].text

    conn_type = single(0, "connection type")
    if conn_type not in CONN_TYPES:
        raise _LineError(f'invalid connection type "{conn_type}"')
    if len(fields) < 2:
        raise _LineError("end of line before the database")
    databases = _check_names(_expand_list(fields[1], "database", read, 0), "database")
    if len(fields) < 3:
        raise _LineError("end of line before the role")
    users = _check_names(_expand_list(fields[2], "role", read, 0), "role")
    network: Network | None = None
    idx = 3
    if conn_type != "local":
        network, idx = _parse_address(fields, idx)
    method = single(idx, "authentication method")
    if method not in METHODS:
        if method in _KNOWN_UNSUPPORTED_METHODS:
            raise _LineError(f'authentication method "{method}" is not supported')
        raise _LineError(f'invalid authentication method "{method}"')
    if method == "peer" and conn_type != "local":
        raise _LineError("peer authentication is only supported on local sockets")
    # A "host" cert rule is accepted, as PgBouncer does (a plain connection it matches fails
    # for want of a certificate); only rules that can never see TLS are refused.
    if method == "cert" and conn_type in ("local", "hostnossl"):
        raise _LineError("cert authentication is only supported on TLS connections")
    options: dict[str, str] = {}
    for field_ in fields[idx + 1:]:
        for token in field_:
            name, eq, value = token.text.partition("=")
            if not eq:
                raise _LineError(f'authentication option not in name=value format: "{name}"')
            if name == "map":
                if method not in ("cert", "peer"):
                    raise _LineError(f'authentication option "map" is not supported with '
                                     f'"{method}"')
                if not value:
                    raise _LineError("empty ident map name")
                options[name] = value
                continue
            if name != "clientcert":
                raise _LineError(f'unsupported authentication option "{name}"')
            if value not in ("verify-ca", "verify-full"):
                raise _LineError(f'invalid value for clientcert: "{value}"')
            if conn_type != "hostssl":
                raise _LineError("clientcert can only be configured for hostssl rows")
            if method == "cert" and value != "verify-full":
                raise _LineError("clientcert only accepts verify-full with cert authentication")
            options[name] = value
    return HbaRule(lineno, conn_type, databases, users, network, method, options)


def parse_hba(text: str, filename: str = "<hba>", read_include: ReadInclude | None = None,
              ) -> list[HbaRule]:
    """Parse pg_hba.conf text; raises ConfigError("file:line: reason") on the first error."""
    if text.startswith("\ufeff"):
        text = text[1:]
    rules: list[HbaRule] = []
    for lineno, line in logical_lines(text):
        try:
            fields = tokenize_line(line)
            if fields:
                rules.append(_parse_rule(lineno, fields, read_include))
        except _LineError as exc:
            raise ConfigError(f"{filename}:{lineno}: {exc}") from None
    return rules


# ---------------------------------------------------------------------------------- matching


def _name_matches(tokens: tuple[Token, ...], name: str, user: str, is_db: bool) -> bool:
    for token in tokens:
        if token.keyword("all"):
            return True
        if is_db and token.keyword("sameuser"):
            if name == user:
                return True
            continue
        if is_db and token.keyword("replication"):
            continue
        if token.text == name:
            return True
    return False


def match_hba(rules: list[HbaRule], *, local: bool, tls: bool, database: str, user: str,
              address: IpAddress | None) -> HbaRule | None:
    """The first rule that applies to this connection, or None (reject)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener reports IPv4 clients this way
    for rule in rules:
        if rule.conn_type == "local":
            if not local:
                continue
        else:
            if local:
                continue
            if rule.conn_type == "hostssl" and not tls:
                continue
            if rule.conn_type == "hostnossl" and tls:
                continue
            if rule.network is not None and (
                    address is None or address.version != rule.network.version
                    or address not in rule.network):
                continue
        if not _name_matches(rule.databases, database, user, True):
            continue
        if not _name_matches(rule.users, user, user, False):
            continue
        return rule
    return None
