"""The HTTP contract between a unit's clip server and the hospital's puller: routes and URLs.

A unit serves, over HTTPS with mutual TLS, ``GET /v1/clips`` (the clips it still holds, see
:mod:`protocol.listing`) and ``GET``/``HEAD /v1/clips/<clip id>.age`` and ``….age.minisig``
(one clip and its signature, with byte ranges). Both ends build and match paths here only.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CLIPS_PATH", "clip_path", "clip_url", "match_clip_path", "server_url"]

CLIPS_PATH: Final = "/v1/clips"
_CLIP_PATH: Final = re.compile(r"/v1/clips/([^/]+)\.age(\.minisig)?")


def clip_path(clip_id: str, *, signature: bool = False) -> str:
    """``/v1/clips/<clip_id>.age`` (or ``.age.minisig``)."""
    return f"{CLIPS_PATH}/{clip_id}.age" + (".minisig" if signature else "")


def server_url(host: str, port: int) -> str:
    """``https://host:port``; an IPv6 address goes in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{port}"


def clip_url(host: str, port: int, clip_id: str) -> str:
    """Where a unit announces that *clip_id* can be fetched."""
    return server_url(host, port) + clip_path(clip_id)


def match_clip_path(path: str) -> tuple[str, bool] | None:
    """``(clip id, is the signature)`` for a clip path, else None (the id is checked by the
    caller against the clip-id pattern)."""
    match = _CLIP_PATH.fullmatch(path)
    return (match[1], bool(match[2])) if match else None
