"""The age v1 header: stanzas, the MAC line, and their strict, canonical text encoding.

Knows nothing about recipients or the payload cipher. Parsing is strict so that a header has
exactly one encoding: the MAC is computed over the re-encoded header, as the reference does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import HeaderError, HeaderMacError

__all__ = [
    "INTRO",
    "Header",
    "Stanza",
    "b64decode",
    "b64encode",
    "header_mac",
    "parse_header",
    "verify_header_mac",
]

INTRO = b"age-encryption.org/v1\n"
_STANZA_PREFIX = b"->"
_FOOTER_PREFIX = b"---"
_COLUMNS = 64
_BYTES_PER_LINE = _COLUMNS // 4 * 3
_MAX_HEADER_BYTES = 1 << 20  # a real header is a few hundred bytes; refuse to buffer a bogus one


def b64encode(data: bytes) -> str:
    """Unpadded standard base64, as age writes it."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str, what: str) -> bytes:
    """Decode unpadded standard base64, refusing any non-canonical form (padding, stray
    characters, non-zero trailing bits), so that one header has one encoding."""
    if len(text) % 4 == 1 or not text.isascii() or "=" in text or "\n" in text or "\r" in text:
        raise HeaderError(f"{what}: not canonical unpadded base64")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise HeaderError(f"{what}: not canonical unpadded base64") from None
    if b64encode(data) != text:
        raise HeaderError(f"{what}: non-canonical base64 (trailing bits set)")
    return data


def _is_valid_arg(arg: bytes) -> bool:
    return len(arg) > 0 and all(0x21 <= c <= 0x7E for c in arg)


@dataclass
class Stanza:
    """One recipient stanza: a type, string arguments and an opaque body."""

    type: str
    args: list[str] = field(default_factory=list)
    body: bytes = b""

    def encode(self) -> bytes:
        line = " ".join(["->", self.type, *self.args]) + "\n"
        text = b64encode(self.body)
        # A body always ends with a short line, so a body that fills its last line exactly
        # (including an empty body) gets an extra empty line.
        lines = [text[i : i + _COLUMNS] for i in range(0, len(text), _COLUMNS)]
        if len(text) % _COLUMNS == 0:
            lines.append("")
        return (line + "".join(f"{chunk}\n" for chunk in lines)).encode("ascii")


@dataclass
class Header:
    """A parsed header: its stanzas and the MAC over its encoding."""

    stanzas: list[Stanza]
    mac: bytes = b""

    def encode_without_mac(self) -> bytes:
        """The bytes the MAC covers: everything up to and including ``---``."""
        return INTRO + b"".join(s.encode() for s in self.stanzas) + _FOOTER_PREFIX

    def encode(self) -> bytes:
        return self.encode_without_mac() + b" " + b64encode(self.mac).encode("ascii") + b"\n"


def header_mac(file_key: bytes, header: Header) -> bytes:
    """HMAC-SHA-256 of the header under a key derived from the file key."""
    key = HKDF(hashes.SHA256(), 32, None, b"header").derive(file_key)
    return hmac.new(key, header.encode_without_mac(), hashlib.sha256).digest()


def verify_header_mac(file_key: bytes, header: Header) -> None:
    if not hmac.compare_digest(header_mac(file_key, header), header.mac):
        raise HeaderMacError("header MAC does not verify: the header was altered")


def parse_header(readline: Callable[[], bytes]) -> Header:
    """Parse a header from *readline*, which returns one ``\\n``-terminated line per call
    (a line without ``\\n`` only at end of file). Raises :class:`HeaderError`."""
    total = 0

    def line() -> bytes:
        nonlocal total
        data = readline()
        total += len(data)
        if total > _MAX_HEADER_BYTES:
            raise HeaderError("header is longer than 1 MiB: not an age file")
        if not data.endswith(b"\n"):
            raise HeaderError("file ends inside the header")
        return data[:-1]

    first = line()
    if first + b"\n" != INTRO:
        if first.startswith(b"age-encryption.org/"):
            raise HeaderError(f"unsupported age version {first[:40]!r}")
        raise HeaderError("not an age v1 file: first line is not 'age-encryption.org/v1'")

    stanzas: list[Stanza] = []
    while True:
        text = line()
        if text.startswith(_FOOTER_PREFIX):
            prefix, *args = text.split(b" ")
            if prefix != _FOOTER_PREFIX or len(args) != 1:
                raise HeaderError("malformed closing line '---'")
            mac = b64decode(_ascii(args[0], "header MAC"), "header MAC")
            if len(mac) != 32:
                raise HeaderError("header MAC is not 32 bytes")
            return Header(stanzas, mac)
        if not text.startswith(_STANZA_PREFIX):
            raise HeaderError(f"unexpected header line {text[:40]!r}")
        prefix, *args = text.split(b" ")
        if prefix != _STANZA_PREFIX or not args or not all(_is_valid_arg(a) for a in args):
            raise HeaderError(f"malformed stanza line {text[:40]!r}")
        body = bytearray()
        while True:
            chunk = b64decode(_ascii(line(), "stanza body"), "stanza body")
            if len(chunk) > _BYTES_PER_LINE:
                raise HeaderError("stanza body line longer than 64 columns")
            body += chunk
            if len(chunk) < _BYTES_PER_LINE:
                break  # a body always ends with a short line
        kind, *rest = (a.decode("ascii") for a in args)
        stanzas.append(Stanza(kind, rest, bytes(body)))


def _ascii(data: bytes, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise HeaderError(f"{what}: non-ASCII byte") from None
