"""Durable file writes: whole or not at all, with the final mode from the first byte."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

__all__ = ["StrPath", "exists_error", "write_atomic"]

StrPath = str | os.PathLike[str]


def exists_error(path: StrPath) -> FileExistsError:
    return FileExistsError(
        errno.EEXIST, "exists; pass overwrite=True to replace it", os.fspath(path)
    )


def write_atomic(path: StrPath, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write *data* to *path* whole or not at all: temp file beside it, fsync, rename."""
    target = Path(path)
    if not overwrite and os.path.lexists(target):
        raise exists_error(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # Created with its final mode, so a secret key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # unlike rename, fails if the target appeared meanwhile
            except FileExistsError:
                raise exists_error(target) from None
            os.unlink(tmp)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)
