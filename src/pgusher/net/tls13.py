"""TLS 1.3 cipher suites (``client_tls13_ciphers``, ``server_tls13_ciphers``).

Strategy: Python's ``ssl`` module sets TLS 1.2 ciphers (``set_ciphers``) but has no setter for
TLS 1.3 suites, which OpenSSL keeps apart (``SSL_CTX_set_ciphersuites``). The function is
called through ctypes in the very OpenSSL that ``ssl`` links (the ``_ssl`` extension module's
own dependencies, so the context pointer belongs to the same library), on the ``SSL_CTX``
pointer an ``ssl.SSLContext`` holds right after its object header. When any of that is not
available (a Python built without a loadable ``_ssl``, another TLS library), the setting is a
configuration error rather than silently ignored.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
from collections.abc import Callable

from ..errors import ConfigError

_Setter = Callable[[int, bytes], int]


def _load_setter() -> _Setter | None:
    path = getattr(_ssl, "__file__", None)
    try:
        lib = ctypes.CDLL(path)  # None: the running program, when _ssl is built in
        func = lib.SSL_CTX_set_ciphersuites
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    func.restype = ctypes.c_int
    return func


_SETTER = _load_setter()
# An SSLContext object is its header, then the SSL_CTX pointer (CPython's PySSLContext).
_CTX_OFFSET = object.__basicsize__


def set_tls13_ciphers(ctx: ssl.SSLContext, suites: str, key: str) -> None:
    """Limit ``ctx`` to the colon-separated TLS 1.3 ``suites``; ConfigError when refused."""
    if _SETTER is None:
        raise ConfigError(f"{key}: this Python's ssl module cannot choose TLS 1.3 cipher suites")
    pointer = ctypes.c_void_p.from_address(id(ctx) + _CTX_OFFSET).value
    if not pointer:
        raise ConfigError(f"{key}: failed to set the TLSv1.3 cipher suites")
    if _SETTER(pointer, suites.encode()) != 1:
        raise ConfigError(f"{key}: failed to set the TLSv1.3 cipher suites '{suites}'")
