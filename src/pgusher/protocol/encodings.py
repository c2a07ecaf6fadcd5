"""PostgreSQL's names for client encodings, as it reports them (sans-IO).

Strategy: PostgreSQL accepts an encoding name in many spellings (``UTF-8``, ``utf8``,
``Unicode``, ``ISO-8859-1``, ``Windows-1252``, ``EUC-JP``): it drops everything but letters
and digits, lower-cases the rest and looks that up in a table of names and aliases, then
reports the encoding's own name (``UTF8``, ``LATIN1``, ``WIN1252``, ``EUC_JP``) in
ParameterStatus. The pooler answers a client's startup packet itself, so it does the same.
"""

from __future__ import annotations

# Every canonical name, keyed by its own letters and digits, lower-cased.
_CANONICAL = (
    "BIG5 EUC_CN EUC_JIS_2004 EUC_JP EUC_KR EUC_TW GB18030 GBK ISO_8859_5 ISO_8859_6 "
    "ISO_8859_7 ISO_8859_8 JOHAB KOI8R KOI8U LATIN1 LATIN2 LATIN3 LATIN4 LATIN5 LATIN6 "
    "LATIN7 LATIN8 LATIN9 LATIN10 MULE_INTERNAL SHIFT_JIS_2004 SJIS SQL_ASCII UHC UTF8 "
    "WIN866 WIN874 WIN1250 WIN1251 WIN1252 WIN1253 WIN1254 WIN1255 WIN1256 WIN1257 WIN1258")
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "iso88591": "LATIN1", "iso88592": "LATIN2",
    "iso88593": "LATIN3", "iso88594": "LATIN4", "iso88599": "LATIN5", "iso885910": "LATIN6",
    "iso885913": "LATIN7", "iso885914": "LATIN8", "iso885915": "LATIN9",
    "iso885916": "LATIN10", "koi8": "KOI8R", "mskanji": "SJIS", "shiftjis": "SJIS",
    "tcvn": "WIN1258", "tcvn5712": "WIN1258", "unicode": "UTF8", "vscii": "WIN1258",
    "win": "WIN1251", "win932": "SJIS", "win936": "GBK", "win949": "UHC", "win950": "BIG5",
    "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC", "windows950": "BIG5",
    "windows866": "WIN866", "windows874": "WIN874",
    **{f"windows125{i}": f"WIN125{i}" for i in range(9)},
}


def _key(name: str) -> str:
    return "".join(ch for ch in name if ch.isascii() and ch.isalnum()).lower()


_NAMES = {_key(name): name for name in _CANONICAL.split()} | _ALIASES


def canonical_encoding(value: str) -> str:
    """The name PostgreSQL reports for the encoding ``value`` names; a name it does not know
    is returned upper-cased (the server refuses it)."""
    return _NAMES.get(_key(value), value.upper())
