"""SCRAM-SHA-256 (RFC 5802, RFC 7677) the way PostgreSQL speaks it.

Strategy: sans-IO state machines. ``ScramClient`` (the pooler logging in to a server) and
``ScramServer`` (a client logging in to the pooler) consume and produce the SASL payloads as
bytes; the caller moves them in and out of SASLInitialResponse / SASLResponse /
AuthenticationSASLContinue / AuthenticationSASLFinal messages. Each object is single-use and
refuses to be driven out of order.

PostgreSQL specifics followed here:

* no channel binding: the client sends the GS2 header ``n,,``; the server accepts ``n`` and
  ``y`` and rejects ``p=`` (the ``-PLUS`` mechanism is never advertised);
* the user name inside the SCRAM exchange is sent empty (``n=``) and ignored by the server,
  because the startup packet already named the user;
* passwords go through SASLprep (RFC 4013) using the stdlib ``stringprep`` tables; a pure
  ASCII password is used as is, and a password that SASLprep rejects (prohibited or
  unassigned characters, bad bidirectional text, empty after mapping, or bytes that were not
  valid UTF-8) is used raw, exactly as PostgreSQL does, so secrets it creates verify here;
* stored secrets look like ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
  with standard base64 fields.

A server that knows only ClientKey and ServerKey (recovered from a client's proof, see
``ScramServer.client_key``) can still log in to a backend with ``ScramClient.from_keys``.

Messages a server receives that are malformed raise AuthError with SQLSTATE 08P01 (protocol
violation); a wrong proof raises AuthError("password authentication failed") with 28P01.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

from pgusher.auth.md5_secret import is_md5_secret
from pgusher.errors import AuthError

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
DEFAULT_SALT_LENGTH = 16

_SECRET_PREFIX = MECHANISM + "$"
_KEY_LENGTH = 32
_NONCE_RANDOM_BYTES = 18
_MAX_ITERATIONS = 2**31 - 1
_PROTOCOL_VIOLATION = "08P01"
_MOCK_KEY = secrets.token_bytes(32)


# --------------------------------------------------------------------------------------------
# SASLprep


def _prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(text: str) -> str:
    """Apply SASLprep (RFC 4013, stored-string rules) to ``text``.

    Pure ASCII input is returned unchanged, as PostgreSQL does. Raises ValueError when the
    profile rejects the string.
    """
    if text.isascii():
        return text
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    if not mapped:
        raise ValueError("string is empty after SASLprep mapping")
    normalized = unicodedata.normalize("NFKC", mapped)
    for ch in normalized:
        if _prohibited(ch):
            raise ValueError(f"prohibited character U+{ord(ch):04X}")
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise ValueError("mixed left-to-right and right-to-left text")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ValueError("right-to-left text must start and end with a RandALCat character")
    return normalized


def prepare_password(password: str) -> bytes:
    """The bytes PBKDF2 is fed: SASLprep'd password, or the raw password if SASLprep fails."""
    try:
        prepared = saslprep(password)
    except ValueError:
        prepared = password
    return prepared.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Primitives and stored secrets


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64, or None."""
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_iterations(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    if value < 1 or value > _MAX_ITERATIONS:
        return None
    return value


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword := Hi(Normalize(password), salt, i)."""
    return hashlib.pbkdf2_hmac("sha256", prepare_password(password), salt, iterations)


def _keys_from_salted(salted: bytes) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for a SaltedPassword."""
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


@dataclass(frozen=True)
class ScramSecret:
    """A parsed ``SCRAM-SHA-256$...`` secret as PostgreSQL stores it."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def parse_scram_secret(secret: str) -> ScramSecret | None:
    """Parse ``SCRAM-SHA-256$<iter>:<b64salt>$<b64StoredKey>:<b64ServerKey>``; None if not one."""
    if not secret.startswith(_SECRET_PREFIX):
        return None
    parts = secret[len(_SECRET_PREFIX) :].split("$")
    if len(parts) != 2:
        return None
    iter_text, sep1, salt_text = parts[0].partition(":")
    stored_text, sep2, server_text = parts[1].partition(":")
    if not (sep1 and sep2):
        return None
    iterations = _parse_iterations(iter_text)
    salt = _b64decode(salt_text)
    stored_key = _b64decode(stored_text)
    server_key = _b64decode(server_text)
    if iterations is None or not salt or stored_key is None or server_key is None:
        return None
    if len(stored_key) != _KEY_LENGTH or len(server_key) != _KEY_LENGTH:
        return None
    return ScramSecret(iterations, salt, stored_key, server_key)


def is_scram_secret(secret: str) -> bool:
    """True if ``secret`` is a well-formed SCRAM-SHA-256 stored secret."""
    return parse_scram_secret(secret) is not None


def make_scram_secret(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramSecret:
    """Derive the stored secret for ``password`` (random 16-byte salt unless given)."""
    if salt is None:
        salt = secrets.token_bytes(DEFAULT_SALT_LENGTH)
    if not salt:
        raise ValueError("SCRAM salt must not be empty")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"invalid SCRAM iteration count: {iterations}")
    client_key, server_key = _keys_from_salted(salted_password(password, salt, iterations))
    return ScramSecret(iterations, salt, _sha256(client_key), server_key)


def format_scram_secret(secret: ScramSecret) -> str:
    """The textual form PostgreSQL stores in pg_authid.rolpassword."""
    return (
        f"{_SECRET_PREFIX}{secret.iterations}:{_b64encode(secret.salt)}"
        f"${_b64encode(secret.stored_key)}:{_b64encode(secret.server_key)}"
    )


# --------------------------------------------------------------------------------------------
# Message parsing helpers


def _is_valid_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in nonce)


def _make_nonce() -> str:
    return _b64encode(secrets.token_bytes(_NONCE_RANDOM_BYTES))


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _split_attributes(message: str) -> list[tuple[str, str]] | None:
    """Split ``a=value,b=value`` into pairs; None unless every part is letter '=' value."""
    pairs: list[tuple[str, str]] = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not (part[0].isascii() and part[0].isalpha()):
            return None
        pairs.append((part[0], part[2:]))
    return pairs


class _Failure:
    """Builds AuthError values for one side of the exchange."""

    def __init__(self, sqlstate: str | None) -> None:
        self.sqlstate = sqlstate

    def malformed(self, detail: str) -> AuthError:
        return AuthError(f"malformed SCRAM message ({detail})", sqlstate=self.sqlstate)


# --------------------------------------------------------------------------------------------
# Client


class ScramClient:
    """The client side: the pooler authenticating to a PostgreSQL server.

    Call ``client_first()``, then ``client_final(server_first)``, then
    ``verify_server_final(server_final)``.
    """

    mechanism = MECHANISM

    _INITIAL = 0
    _FINAL_SENT = 1
    _DONE = 2
    _FAILED = 3

    def __init__(
        self,
        password: str,
        nonce: str | None = None,
        *,
        username: str = "",
        min_iterations: int = 1,
    ) -> None:
        if nonce is None:
            nonce = _make_nonce()
        elif not _is_valid_nonce(nonce):
            raise ValueError("SCRAM nonce must be printable ASCII without ','")
        self._password = password
        self._keys: tuple[bytes, bytes] | None = None
        self._nonce = nonce
        self._min_iterations = max(1, min_iterations)
        self._gs2_header = "n,,"
        self._client_first_bare = f"n={_escape_saslname(username)},r={nonce}"
        self._server_signature = b""
        self._state = self._INITIAL
        self._fail = _Failure(None)

    @classmethod
    def from_keys(
        cls,
        client_key: bytes,
        server_key: bytes,
        nonce: str | None = None,
        *,
        username: str = "",
    ) -> ScramClient:
        """A client that proves itself with ClientKey/ServerKey instead of a password.

        The server's salt and iteration count are accepted as sent: the keys already embody
        them, so they cannot be checked.
        """
        if len(client_key) != _KEY_LENGTH or len(server_key) != _KEY_LENGTH:
            raise ValueError("SCRAM-SHA-256 keys must be 32 bytes")
        client = cls("", nonce, username=username)
        client._keys = (bytes(client_key), bytes(server_key))
        return client

    def client_first(self) -> bytes:
        """The SASLInitialResponse payload: GS2 header plus client-first-message-bare."""
        if self._state != self._INITIAL:
            raise AuthError("SCRAM exchange out of order")
        return (self._gs2_header + self._client_first_bare).encode("utf-8", "surrogateescape")

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise self._fail.malformed("non-ASCII data from server") from None

    def client_final(self, server_first: bytes) -> bytes:
        """Answer the server-first-message with client-final-message (including the proof)."""
        if self._state != self._INITIAL:
            raise AuthError("SCRAM exchange out of order")
        self._state = self._FAILED
        text = self._decode(server_first)
        attrs = _split_attributes(text)
        if attrs is None or len(attrs) < 3:
            raise self._fail.malformed("invalid server-first-message")
        if attrs[0][0] == "m":
            raise AuthError("SCRAM server requires an unsupported extension")
        (k_nonce, nonce), (k_salt, salt_text), (k_iter, iter_text) = attrs[:3]
        if (k_nonce, k_salt, k_iter) != ("r", "s", "i"):
            raise self._fail.malformed("invalid server-first-message")
        if (
            not _is_valid_nonce(nonce)
            or not nonce.startswith(self._nonce)
            or len(nonce) == len(self._nonce)
        ):
            raise AuthError("invalid SCRAM response (nonce mismatch)")
        salt = _b64decode(salt_text)
        if not salt:
            raise self._fail.malformed("invalid salt")
        iterations = _parse_iterations(iter_text)
        if iterations is None:
            raise self._fail.malformed("invalid iteration count")
        if iterations < self._min_iterations:
            raise AuthError(
                f"SCRAM iteration count {iterations} is below the minimum {self._min_iterations}"
            )

        if self._keys is not None:
            client_key, server_key = self._keys
        else:
            client_key, server_key = _keys_from_salted(
                salted_password(self._password, salt, iterations)
            )
        without_proof = f"c={_b64encode(self._gs2_header.encode('ascii'))},r={nonce}"
        auth_message = ",".join((self._client_first_bare, text, without_proof)).encode(
            "utf-8", "surrogateescape"
        )
        client_signature = _hmac(_sha256(client_key), auth_message)
        proof = _xor(client_key, client_signature)
        self._server_signature = _hmac(server_key, auth_message)
        self._state = self._FINAL_SENT
        return f"{without_proof},p={_b64encode(proof)}".encode("ascii")

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server-final-message; raises AuthError unless the server proved itself."""
        if self._state != self._FINAL_SENT:
            raise AuthError("SCRAM exchange out of order")
        self._state = self._FAILED
        text = self._decode(server_final)
        attrs = _split_attributes(text)
        if attrs is None:
            raise self._fail.malformed("invalid server-final-message")
        key, value = attrs[0]
        if key == "e":
            raise AuthError(f"error received from server in SCRAM exchange: {value}")
        if key != "v":
            raise self._fail.malformed("invalid server-final-message")
        signature = _b64decode(value)
        if signature is None or not hmac.compare_digest(signature, self._server_signature):
            raise AuthError("invalid server signature in SCRAM exchange")
        self._state = self._DONE


# --------------------------------------------------------------------------------------------
# Server


class ScramServer:
    """The server side: checking a client of the pooler against a stored secret.

    ``secret`` is a plain password or a ``SCRAM-SHA-256$...`` secret. Any other stored form
    (an MD5 hash) cannot verify a SCRAM proof; the exchange then runs normally and fails at
    the end, so the client learns nothing beyond "authentication failed". ``mock()`` does the
    same for users that do not exist.

    Call ``server_first(client_first)`` then ``server_final(client_final)``. After a
    successful ``server_final`` the ClientKey recovered from the proof is in ``client_key``.
    """

    mechanism = MECHANISM

    _INITIAL = 0
    _FIRST_SENT = 1
    _DONE = 2
    _FAILED = 3

    def __init__(self, secret: str | ScramSecret, nonce: str | None = None) -> None:
        if nonce is None:
            nonce = _make_nonce()
        elif not _is_valid_nonce(nonce):
            raise ValueError("SCRAM nonce must be printable ASCII without ','")
        self._mock = False
        self._secret: ScramSecret
        if isinstance(secret, ScramSecret):
            self._secret = secret
        elif (parsed := parse_scram_secret(secret)) is not None:
            self._secret = parsed
        elif is_md5_secret(secret):
            self._secret = _mock_secret(secret)
            self._mock = True
        else:
            self._secret = make_scram_secret(secret)
        self._server_nonce = nonce
        self._nonce = ""
        self._gs2_header = b""
        self._client_first_bare = ""
        self._server_first = ""
        self._state = self._INITIAL
        self._fail = _Failure(_PROTOCOL_VIOLATION)
        self.client_key: bytes | None = None

    @classmethod
    def mock(cls, username: str, nonce: str | None = None) -> ScramServer:
        """An exchange that always fails, with a salt stable per ``username`` (unknown users)."""
        server = cls(_mock_secret(username), nonce)
        server._mock = True
        return server

    def server_first(self, client_first: bytes) -> bytes:
        """Parse client-first-message; return server-first-message ``r=...,s=...,i=...``."""
        if self._state != self._INITIAL:
            raise AuthError("SCRAM exchange out of order", sqlstate=_PROTOCOL_VIOLATION)
        self._state = self._FAILED
        text = client_first.decode("utf-8", "surrogateescape")
        flag, sep, rest = text.partition(",")
        if not sep:
            raise self._fail.malformed("invalid GS2 header")
        if flag.startswith("p="):
            raise AuthError("SCRAM channel binding is not supported", sqlstate=_PROTOCOL_VIOLATION)
        if flag not in ("n", "y"):
            raise self._fail.malformed("unexpected channel-binding flag")
        authzid, sep, bare = rest.partition(",")
        if not sep:
            raise self._fail.malformed("invalid GS2 header")
        if authzid:
            if authzid.startswith("a="):
                raise AuthError(
                    "client uses authorization identity, but it is not supported",
                    sqlstate=_PROTOCOL_VIOLATION,
                )
            raise self._fail.malformed("invalid GS2 header")
        attrs = _split_attributes(bare)
        if attrs is None or len(attrs) < 2:
            raise self._fail.malformed("invalid client-first-message")
        if attrs[0][0] == "m":
            raise AuthError(
                "client requires an unsupported SCRAM extension", sqlstate=_PROTOCOL_VIOLATION
            )
        if attrs[0][0] != "n" or attrs[1][0] != "r":
            raise self._fail.malformed("invalid client-first-message")
        client_nonce = attrs[1][1]
        if not _is_valid_nonce(client_nonce):
            raise self._fail.malformed("invalid nonce")
        self._gs2_header = f"{flag},,".encode("ascii")
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._server_first = (
            f"r={self._nonce},s={_b64encode(self._secret.salt)},i={self._secret.iterations}"
        )
        self._state = self._FIRST_SENT
        return self._server_first.encode("ascii")

    def server_final(self, client_final: bytes) -> bytes:
        """Verify client-final-message; return server-final-message ``v=<ServerSignature>``."""
        if self._state != self._FIRST_SENT:
            raise AuthError("SCRAM exchange out of order", sqlstate=_PROTOCOL_VIOLATION)
        self._state = self._FAILED
        text = client_final.decode("utf-8", "surrogateescape")
        cut = text.rfind(",p=")
        if cut < 0:
            raise self._fail.malformed("proof missing from client-final-message")
        without_proof, proof_text = text[:cut], text[cut + 3 :]
        attrs = _split_attributes(without_proof)
        if attrs is None or len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise self._fail.malformed("invalid client-final-message")
        if _b64decode(attrs[0][1]) != self._gs2_header:
            raise AuthError("SCRAM channel binding check failed", sqlstate=_PROTOCOL_VIOLATION)
        if attrs[1][1] != self._nonce:
            raise self._fail.malformed("nonce mismatch")
        proof = _b64decode(proof_text)
        if proof is None or len(proof) != _KEY_LENGTH:
            raise self._fail.malformed("invalid proof")

        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        auth_bytes = auth_message.encode("utf-8", "surrogateescape")
        client_signature = _hmac(self._secret.stored_key, auth_bytes)
        client_key = _xor(proof, client_signature)
        matches = hmac.compare_digest(_sha256(client_key), self._secret.stored_key)
        if self._mock or not matches:
            raise AuthError("password authentication failed")
        self.client_key = client_key
        self._state = self._DONE
        return b"v=" + _b64encode(_hmac(self._secret.server_key, auth_bytes)).encode("ascii")


def _mock_secret(seed: str) -> ScramSecret:
    """A secret nobody can match, with a salt that is stable for ``seed`` in this process."""
    digest = _hmac(_MOCK_KEY, seed.encode("utf-8", "surrogateescape"))
    return ScramSecret(
        DEFAULT_ITERATIONS,
        digest[:DEFAULT_SALT_LENGTH],
        secrets.token_bytes(_KEY_LENGTH),
        secrets.token_bytes(_KEY_LENGTH),
    )
