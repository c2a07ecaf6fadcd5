"""Reading a server's session back after a transaction the pooler could not follow (sans-IO).

When a transaction ran code whose effects on the session cannot be read from its text (see
:mod:`.opaque`), the pooler asks the server, before the server goes back to the pool, what the
session now holds: every setting whose source is the session, the role, the session
authorization, the values of the custom settings the client's texts named, and whether
anything that cannot move with a client exists (temporary objects, session advisory locks,
LISTEN, WITH HOLD cursors, SQL-level prepared statements the pooler did not make).

The answer replaces the client's carried settings, so the client keeps exactly what the
server shows, and becomes the server's own record, so the next client's link undoes what is
not its own. Custom settings nobody named cannot be listed by PostgreSQL; the server is
marked so that ``RESET ALL`` runs before another client uses it. State that cannot move makes
the server reset before reuse.

Values are kept in the server's own text form (``setting`` of pg_settings) and replayed with
``set_config``, which reads that form exactly; such values are marked with
:data:`RAW` so that :func:`.session.replay_sql` can tell them from SQL text.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

from .messages import INT32, query

RAW = "\0"  # prefix of a value in the server's text form, replayed with set_config

_INT16 = struct.Struct("!h")
_IDENTITY_NAMES = ("role", "session_authorization")

# One row per fact: (kind, name, value). Kinds: s = setting, r = role or authorization,
# c = a custom setting asked for by name, h = state that cannot move (name = what).
_BASE = (
    "SELECT 's', name, setting FROM pg_catalog.pg_settings WHERE source = 'session'"
    " UNION ALL SELECT 'r', 'role', pg_catalog.current_setting('role')"
    " UNION ALL SELECT 'r', 'session_authorization',"
    " pg_catalog.current_setting('session_authorization')"
    " UNION ALL SELECT 'h', 'temporary object', NULL WHERE EXISTS (SELECT 1 FROM"
    " pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
    " UNION ALL SELECT 'h', 'session advisory lock', NULL WHERE EXISTS (SELECT 1 FROM"
    " pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())"
    " UNION ALL SELECT 'h', 'LISTEN', NULL WHERE EXISTS (SELECT 1 FROM"
    " pg_catalog.pg_listening_channels())"
    " UNION ALL SELECT 'h', 'WITH HOLD cursor', NULL WHERE EXISTS (SELECT 1 FROM"
    " pg_catalog.pg_cursors)"
    " UNION ALL SELECT 'h', 'SQL-level PREPARE', NULL WHERE EXISTS (SELECT 1 FROM"
    " pg_catalog.pg_prepared_statements WHERE from_sql AND name NOT LIKE 'pgusher\\_%')"
)


def _literal(value: str) -> str:
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# When the transaction's only unread code was set_config with literal names, nothing else can
# have changed: the role, the authorization and those names are enough, and far cheaper than
# pg_settings (which formats every setting PostgreSQL has).
_NAMED_ONLY = (
    "SELECT 'r', 'role', pg_catalog.current_setting('role')"
    " UNION ALL SELECT 'r', 'session_authorization',"
    " pg_catalog.current_setting('session_authorization')"
)


def capture_query(custom: Collection[str], full: bool = True) -> bytes:
    """The Query message that reads the session back, asking for ``custom`` by name; with
    ``full`` false, only those, the role and the authorization."""
    parts = [_BASE if full else _NAMED_ONLY]
    for name in sorted(custom):
        lit = _literal(name)
        parts.append(f" UNION ALL SELECT 'c', {lit}, pg_catalog.current_setting({lit}, true)")
    return query("".join(parts))


class Captured:
    """What a server's session holds, from the rows of :func:`capture_query`."""

    __slots__ = ("authorization", "hidden", "role", "settings")

    def __init__(self) -> None:
        self.settings: dict[str, str] = {}  # name -> value in the server's text form
        self.role = "none"
        self.authorization = ""
        self.hidden: list[str] = []


def _columns(body: bytes) -> list[str | None]:
    """The text columns of one DataRow body."""
    (count,) = _INT16.unpack_from(body, 0)
    pos = 2
    out: list[str | None] = []
    for _ in range(count):
        (length,) = INT32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            out.append(None)
            continue
        out.append(body[pos:pos + length].decode("utf-8", "replace"))
        pos += length
    return out


def parse_rows(rows: list[bytes]) -> Captured:
    """Read the DataRow bodies of the capture query. Malformed rows raise ValueError."""
    got = Captured()
    for body in rows:
        try:
            cols = _columns(body)
        except Exception as exc:  # struct.error on a short row
            raise ValueError("malformed capture row") from exc
        if len(cols) != 3:
            raise ValueError("malformed capture row")
        kind, name, value = cols
        if kind is None or name is None:
            raise ValueError("malformed capture row")
        if kind == "s" and value is not None:
            got.settings[name.lower()] = value
        elif kind == "c" and value is not None:
            got.settings.setdefault(name.lower(), value)
        elif kind == "r" and value is not None:
            if name == "role":
                got.role = value
            else:
                got.authorization = value
        elif kind == "h":
            got.hidden.append(name)
    return got


def merge_named(old: dict[str, str], got: Captured, asked: Collection[str],
                login_user: str, carried_elsewhere: set[str] | dict[str, str]) -> dict[str, str]:
    """``old`` carried settings updated with a named-only read-back of ``asked``."""
    out = dict(old)
    for name in asked:
        if name in carried_elsewhere or name in _IDENTITY_NAMES:
            continue
        value = got.settings.get(name)
        if value is None:
            out.pop(name, None)
        else:
            out[name] = RAW + value
    for name, value in _identity(got, login_user).items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _identity(got: Captured, login_user: str) -> dict[str, str | None]:
    auth = RAW + got.authorization if got.authorization and got.authorization != login_user \
        else None
    role = RAW + got.role if got.role and got.role != "none" else None
    return {"session_authorization": auth, "role": role}


def session_sets(got: Captured, login_user: str, carried_elsewhere: set[str] | dict[str, str],
                 ) -> dict[str, str]:
    """The settings a client carries after this capture, as :data:`RAW` values.

    Settings in ``carried_elsewhere`` (those the server reports with ParameterStatus) are left
    out: they follow the client by another road.
    """
    out = {name: RAW + value for name, value in got.settings.items()
           if name not in carried_elsewhere and name not in _IDENTITY_NAMES}
    out.update({n: v for n, v in _identity(got, login_user).items() if v is not None})
    return out
