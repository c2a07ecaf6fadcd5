"""Authentication primitives: MD5, SCRAM-SHA-256 and the auth_file reader.

Strategy: everything here is sans-IO. Functions and small state machines take and return
strings and bytes; the network layer moves the payloads in and out of protocol messages and
decides what to log. Nothing here opens sockets or files, except ``load_userlist``, which
reads the one file it is given.
"""

from pgusher.auth.md5 import is_md5_secret, md5_check, md5_password_hash, md5_salted_response
from pgusher.auth.scram import (
    ScramClient,
    ScramSecret,
    ScramServer,
    format_scram_secret,
    is_scram_secret,
    make_scram_secret,
    parse_scram_secret,
    saslprep,
)
from pgusher.auth.userlist import load_userlist, parse_userlist

__all__ = [
    "ScramClient",
    "ScramSecret",
    "ScramServer",
    "format_scram_secret",
    "is_md5_secret",
    "is_scram_secret",
    "load_userlist",
    "make_scram_secret",
    "md5_check",
    "md5_password_hash",
    "md5_salted_response",
    "parse_scram_secret",
    "parse_userlist",
    "saslprep",
]
