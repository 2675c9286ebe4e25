"""The byte range a clip server request asks for (RFC 9110 ``Range``), read strictly and cheaply."""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = ["byte_range"]

# One range only, at most 18 digits a side (int() of longer text is refused or slow).
_RANGE: Final = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal[False] | None:
    """The ``(first, last)`` bytes a ``Range`` header asks of *size*, inclusive.

    None: send the whole file (no header, or one that RFC 9110 lets a server ignore: malformed,
    several ranges, last before first). False: unsatisfiable (416).
    """
    match = _RANGE.fullmatch(header.strip()) if header is not None else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # "-n": the last n bytes
        suffix = int(last)
        return (max(size - suffix, 0), size - 1) if suffix and size else False
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return False
    return start, min(int(last), size - 1) if last else size - 1
