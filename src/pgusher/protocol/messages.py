"""Encoders for what the pooler originates and decoders for the few bodies it must read.

The pooler forwards almost everything unread. It builds only its own replies (errors, the
login handshake, ready-for-query) and reads only a handful of bodies: the startup packet,
authentication requests, ParameterStatus, BackendKeyData, ErrorResponse fields and the
ready-for-query status. Constant messages are prebuilt once at import time.
"""

from __future__ import annotations

import struct

from ..errors import ProtocolError

INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")
HEADER = struct.Struct("!ci")
TYPE_LEN = struct.Struct("!Bi")

PROTOCOL_3_0 = 196608
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104

MAX_STARTUP_PACKET = 10000

# Authentication request codes (the 'R' message).
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def message(kind: bytes, body: bytes = b"") -> bytes:
    """A typed message: one type byte, an int32 length that counts itself, then the body."""
    return kind + INT32.pack(len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


# Prebuilt constants.
READY_IDLE = message(b"Z", b"I")
AUTH_OK_MSG = message(b"R", INT32.pack(AUTH_OK))
AUTH_CLEARTEXT_MSG = message(b"R", INT32.pack(AUTH_CLEARTEXT))
TERMINATE = message(b"X")
SYNC = message(b"S")
SSL_NO = b"N"


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def error_response(severity: str, sqlstate: str, text: str, detail: str | None = None,
                   hint: str | None = None) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    return message(b"E", body + b"\0")


def notice_response(text: str, sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    return message(b"N", body + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, key))


def auth_md5_request(salt: bytes) -> bytes:
    return message(b"R", INT32.pack(AUTH_MD5) + salt)


def auth_sasl_request(mechanisms: list[str]) -> bytes:
    return message(b"R", INT32.pack(AUTH_SASL) + b"".join(cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return message(b"R", INT32.pack(AUTH_SASL_CONTINUE) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return message(b"R", INT32.pack(AUTH_SASL_FINAL) + data)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def password_message(payload: bytes) -> bytes:
    return message(b"p", payload + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def startup_message(params: dict[str, str]) -> bytes:
    body = INT32.pack(PROTOCOL_3_0)
    for key, value in params.items():
        body += cstr(key) + cstr(value)
    body += b"\0"
    return INT32.pack(len(body) + 4) + body


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, key)


def row_description(columns: list[tuple[str, int]]) -> bytes:
    """Columns as (name, type oid); text format, no table."""
    body = struct.pack("!h", len(columns))
    for name, oid in columns:
        body += cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0)
    return message(b"T", body)


def data_row(values: list[str | None]) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            body += INT32.pack(-1)
        else:
            raw = value.encode()
            body += INT32.pack(len(raw)) + raw
    return message(b"D", body)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


# ---------------------------------------------------------------- decoders


def split_cstrings(body: bytes) -> list[str]:
    """Split a run of NUL-terminated strings (the last NUL may close the list)."""
    parts = body.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts]


def parse_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    """Decode a startup-phase packet (without its length word): (code, params).

    For a protocol 3.0 startup the params are the key/value pairs; for Cancel/SSL/GSS requests
    the dict is empty and the caller reads the rest itself.
    """
    if len(packet) < 4:
        raise ProtocolError("invalid startup packet layout: too short")
    code = INT32.unpack_from(packet, 0)[0]
    if code != PROTOCOL_3_0:
        return code, {}
    raw = packet[4:]
    params: dict[str, str] = {}
    pos = 0
    end = len(raw)
    while pos < end and raw[pos] != 0:
        key_end = raw.find(b"\0", pos)
        value_end = raw.find(b"\0", key_end + 1) if key_end >= 0 else -1
        if value_end < 0:
            raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
        key = raw[pos:key_end].decode("utf-8", "replace")
        params[key] = raw[key_end + 1:value_end].decode("utf-8", "replace")
        pos = value_end + 1
    if pos != end - 1:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    return code, params


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = split_cstrings(body)
    if len(parts) != 2:
        raise ProtocolError("malformed ParameterStatus message")
    return parts[0], parts[1]


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body -> {field code: value}."""
    fields: dict[str, str] = {}
    pos = 0
    end = len(body)
    while pos < end and body[pos] != 0:
        code = chr(body[pos])
        nul = body.find(b"\0", pos + 1)
        if nul < 0:
            raise ProtocolError("malformed ErrorResponse message")
        fields[code] = body[pos + 1:nul].decode("utf-8", "replace")
        pos = nul + 1
    return fields


def parse_auth_request(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolError("malformed authentication request")
    return INT32.unpack_from(body, 0)[0], body[4:]


def parse_sasl_initial(body: bytes) -> tuple[str, bytes]:
    nul = body.find(b"\0")
    if nul < 0 or len(body) < nul + 5:
        raise ProtocolError("malformed SASLInitialResponse message")
    mechanism = body[:nul].decode("ascii", "replace")
    length = INT32.unpack_from(body, nul + 1)[0]
    data = body[nul + 5:]
    if length == -1:
        data = b""
    elif length != len(data):
        raise ProtocolError("malformed SASLInitialResponse message: bad length")
    return mechanism, data


def parse_password(body: bytes) -> bytes:
    if not body.endswith(b"\0"):
        raise ProtocolError("malformed password message")
    return body[:-1]


def parse_data_row(body: bytes) -> list[bytes | None]:
    """The column values of a DataRow body (None for NULL)."""
    if len(body) < 2:
        raise ProtocolError("invalid DataRow")
    count = _INT16.unpack_from(body, 0)[0]
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > len(body):
            raise ProtocolError("invalid DataRow")
        size = INT32.unpack_from(body, pos)[0]
        pos += 4
        if size < 0:
            values.append(None)
            continue
        if pos + size > len(body):
            raise ProtocolError("invalid DataRow")
        values.append(body[pos:pos + size])
        pos += size
    if pos != len(body):
        raise ProtocolError("invalid DataRow")
    return values
