"""MD5 password authentication, as PostgreSQL does it.

Strategy: pure functions over strings and bytes. A stored MD5 secret is ``"md5"`` followed by
the lowercase hex MD5 of ``password + username``; the wire response to a 4-byte salt is
``"md5"`` followed by the hex MD5 of ``(stored hex digest) + salt``. Both a plain password and
a stored MD5 secret can therefore produce (and check) a salted response, while a SCRAM secret
cannot. Strings are encoded as UTF-8 with ``surrogateescape`` so that passwords read from a
file that is not valid UTF-8 keep their original bytes. Responses are compared in constant
time.
"""

from __future__ import annotations

import hashlib
import hmac

from pgusher.auth.md5_secret import is_md5_secret
from pgusher.auth.scram import is_scram_secret
from pgusher.errors import AuthError

__all__ = ["is_md5_secret", "md5_check", "md5_password_hash", "md5_salted_response"]


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def md5_password_hash(user: str, password: str) -> str:
    """The MD5 secret PostgreSQL stores for ``user`` with ``password``."""
    return "md5" + hashlib.md5(_encode(password) + _encode(user)).hexdigest()


def _stored_hex(user: str, secret: str) -> str:
    if is_md5_secret(secret):
        return secret[3:]
    if is_scram_secret(secret):
        raise AuthError("cannot use MD5 authentication with a SCRAM secret")
    return md5_password_hash(user, secret)[3:]


def md5_salted_response(user: str, secret: str, salt: bytes) -> bytes:
    """The PasswordMessage payload (without its trailing NUL) answering an MD5 challenge.

    ``secret`` is a plain password or a stored ``md5...`` hash. Raises AuthError for a SCRAM
    secret, from which no MD5 response can be derived.
    """
    digest = hashlib.md5(_stored_hex(user, secret).encode("ascii") + salt).hexdigest()
    return b"md5" + digest.encode("ascii")


def md5_check(user: str, secret: str, salt: bytes, response: bytes) -> bool:
    """Check a client's MD5 response against ``secret`` (plain password or MD5 hash).

    Returns False for a SCRAM secret. ``response`` must not include the trailing NUL.
    """
    try:
        expected = md5_salted_response(user, secret, salt)
    except AuthError:
        return False
    return hmac.compare_digest(expected, response)
