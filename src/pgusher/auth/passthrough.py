"""SCRAM pass-through: logging in to the server with what a client's SCRAM login proved.

Strategy: when a client logs in with SCRAM against a stored SCRAM secret, its proof yields the
ClientKey (``ScramServer.client_key``); the secret itself holds the ServerKey. Those two keys are
all a SCRAM client needs, so the pooler can then log in to the server as that user without any
plain password on disk. The keys live only in memory, per user and per secret: a changed secret
(auth_file reload, or a new answer from auth_query) makes the old keys unusable at once.

A client that logs in with a cleartext password (auth_type plain, or HBA ``password``) against a
SCRAM secret is handled the same way: the keys are derived from the password with the secret's
salt and iteration count.

The keys work only when the server stores the very same secret (same salt and iteration count)
as the one the client was checked against. That is always so with auth_query, and so with an
auth_file copied from ``pg_authid``; after ``ALTER ROLE ... PASSWORD`` on the server a stale
auth_file copy no longer matches and the server refuses the login.
"""

from __future__ import annotations

import hashlib
import hmac

from pgusher.auth.scram import parse_scram_secret, salted_password

__all__ = ["ScramKeyStore"]


class ScramKeyStore:
    """ClientKeys recovered from successful logins, by user name and the secret they match."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, bytes]] = {}

    def remember(self, user: str, secret: str, client_key: bytes) -> None:
        parsed = parse_scram_secret(secret)
        if parsed is None or hashlib.sha256(client_key).digest() != parsed.stored_key:
            return  # only keys that verify against the secret are worth keeping
        self._keys[user] = (secret, client_key)

    def remember_password(self, user: str, secret: str, password: str) -> None:
        parsed = parse_scram_secret(secret)
        if parsed is None:
            return
        salted = salted_password(password, parsed.salt, parsed.iterations)
        self.remember(user, secret, hmac.digest(salted, b"Client Key", "sha256"))

    def keys_for(self, user: str, secret: str) -> tuple[bytes, bytes] | None:
        """(ClientKey, ServerKey) to log in as ``user`` whose stored secret is ``secret``."""
        entry = self._keys.get(user)
        parsed = parse_scram_secret(secret)
        if entry is None or parsed is None or entry[0] != secret:
            return None
        return entry[1], parsed.server_key

    def __len__(self) -> int:
        return len(self._keys)
