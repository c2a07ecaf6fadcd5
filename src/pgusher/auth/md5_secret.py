"""The form of a stored MD5 secret: ``"md5"`` plus 32 lowercase hex digits.

Strategy: its own module because both mechanisms need to recognise it and md5.py already
imports scram.py (to refuse SCRAM secrets): md5.py uses it to take a stored hash as is, and
scram.py's server side to answer a user whose secret is an MD5 hash with a mock exchange.
"""

from __future__ import annotations

_HEX_DIGITS = frozenset("0123456789abcdef")
_MD5_SECRET_LEN = 35


def is_md5_secret(secret: str) -> bool:
    """True if ``secret`` is a stored MD5 hash: ``"md5"`` plus 32 lowercase hex digits."""
    return (
        len(secret) == _MD5_SECRET_LEN
        and secret.startswith("md5")
        and all(ch in _HEX_DIGITS for ch in secret[3:])
    )
