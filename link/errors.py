"""The link's errors: one root for what cannot be set up, and the signal a handler gives."""

from __future__ import annotations

__all__ = ["LinkError", "Redeliver"]


class LinkError(RuntimeError):
    """The link cannot be set up or started: a bad certificate, key or CA file, a bad address
    or setting; the message names what and where."""


class Redeliver(Exception):
    """Raised by a message handler when it could not record the message (database down, disk
    full): the link leaves the message unacknowledged and reconnects, so that the broker
    delivers it again. The message says why, in one line.

    Any other exception from a handler is a bug or a bad message: it is logged and the message
    is acknowledged, so that one message nobody can handle does not stall the link for ever.
    """
