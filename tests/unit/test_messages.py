"""Encoders and the few decoders the pooler needs; decoders also with trailing bytes."""

from __future__ import annotations

import pytest

from pgusher.errors import ProtocolError
from pgusher.protocol import messages as m


def test_startup_roundtrip() -> None:
    packet = m.startup_message({"user": "u", "database": "d", "application_name": "a b"})
    assert m.INT32.unpack_from(packet, 0)[0] == len(packet)
    code, params = m.parse_startup(packet[4:])
    assert code == m.PROTOCOL_3_0
    assert params == {"user": "u", "database": "d", "application_name": "a b"}


@pytest.mark.parametrize("body", [
    m.INT32.pack(m.PROTOCOL_3_0) + b"user\0u\0",             # no terminator
    m.INT32.pack(m.PROTOCOL_3_0) + b"user\0u\0database\0\0x",  # trailing garbage
    m.INT32.pack(m.PROTOCOL_3_0) + b"user\0",                 # key without value
    b"\0\0",
])
def test_startup_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        m.parse_startup(body)


def test_startup_other_codes_pass_through() -> None:
    assert m.parse_startup(m.INT32.pack(m.SSL_REQUEST_CODE)) == (m.SSL_REQUEST_CODE, {})


def test_error_response_fields_roundtrip() -> None:
    msg = m.error_response("FATAL", "28P01", "password authentication failed", detail="d")
    assert msg[0:1] == b"E"
    fields = m.parse_error_fields(msg[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28P01",
                      "M": "password authentication failed", "D": "d"}


def test_error_fields_with_trailing_bytes_stop_at_terminator() -> None:
    msg = m.error_response("ERROR", "42000", "x")
    assert m.parse_error_fields(msg[5:] + b"junk")["M"] == "x"


def test_error_fields_truncated() -> None:
    with pytest.raises(ProtocolError):
        m.parse_error_fields(b"Mno terminator")


def test_parameter_status() -> None:
    msg = m.parameter_status("TimeZone", "UTC")
    assert m.parse_parameter_status(msg[5:]) == ("TimeZone", "UTC")
    with pytest.raises(ProtocolError):
        m.parse_parameter_status(b"only\0")


def test_sasl_initial_response_roundtrip() -> None:
    msg = m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert m.parse_sasl_initial(msg[5:]) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    with pytest.raises(ProtocolError):
        m.parse_sasl_initial(msg[5:] + b"extra")


def test_password_message() -> None:
    msg = m.password_message(b"secret")
    assert m.parse_password(msg[5:]) == b"secret"
    with pytest.raises(ProtocolError):
        m.parse_password(b"no-nul")


def test_row_and_data() -> None:
    desc = m.row_description([("a", 25), ("b", 23)])
    assert desc[0:1] == b"T" and m.INT32.unpack_from(desc, 1)[0] == len(desc) - 1
    row = m.data_row(["x", None])
    assert row.endswith(b"\xff\xff\xff\xff")
