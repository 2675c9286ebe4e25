"""Bech32 (BIP 173), the encoding of age's ``age1…`` recipients and ``AGE-SECRET-KEY-1…`` keys.

age uses plain Bech32 (not Bech32m) and, unlike Bitcoin, no 90-character limit.
"""

from .errors import KeyFormatError

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATORS):
            if (top >> i) & 1:
                check ^= generator
    return check


def _expand_hrp(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out = []
    max_value = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or (acc << (to_bits - bits)) & max_value:
        raise KeyFormatError("bech32: non-zero padding bits")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode *data* under the human-readable part *hrp*, lower case (age upper-cases secrets)."""
    values = _convert_bits(data, 8, 5, pad=True)
    checksum = _polymod([*_expand_hrp(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values)


def decode(text: str) -> tuple[str, bytes]:
    """Decode a Bech32 string into its human-readable part (lower case) and data."""
    if text.lower() != text and text.upper() != text:
        raise KeyFormatError("bech32: mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise KeyFormatError("bech32: separator '1' missing or checksum too short")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise KeyFormatError("bech32: invalid character in prefix")
    try:
        values = [_CHARSET.index(c) for c in rest]
    except ValueError:
        raise KeyFormatError("bech32: invalid character") from None
    if _polymod(_expand_hrp(hrp) + values) != 1:
        raise KeyFormatError("bech32: bad checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, pad=False))
