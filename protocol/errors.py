"""The exception root of ``protocol`` and the error classes callers branch on.

Every error inherits from :class:`ProtocolError` and from the builtin it resembles, so a caller
can catch all of painav's protocol errors at once or just the kind it can act on. Messages name
what was wrong and where, in one line.
"""


class ProtocolError(Exception):
    """Root of every error raised by ``protocol``."""


# --- keys ------------------------------------------------------------------------------------


class KeyFormatError(ProtocolError, ValueError):
    """A key string or key file is malformed (bad encoding, wrong length, wrong type)."""


# --- clip envelope (age v1) ------------------------------------------------------------------


class EnvelopeError(ProtocolError, ValueError):
    """A clip envelope cannot be read or written."""


class HeaderError(EnvelopeError):
    """The age header is malformed: version line, stanza, base64, MAC line."""


class NoIdentityMatchError(EnvelopeError):
    """None of the given identities can unwrap the file key: the clip is not for these keys."""


class HeaderMacError(EnvelopeError):
    """The header MAC does not verify: the header was altered after it was written."""


class PayloadError(EnvelopeError):
    """The payload is truncated or a chunk fails authentication; no unauthenticated byte is
    released, and what was released before this error is all the file holds."""


# --- signatures (minisign) -------------------------------------------------------------------


class SignatureError(ProtocolError, ValueError):
    """A clip signature is malformed or does not verify."""


class SignatureFormatError(SignatureError):
    """A signature file is malformed (not minisign's format)."""


class BadSignatureError(SignatureError):
    """A well-formed signature does not verify: altered data or comment, or another key."""


class BindingError(SignatureError):
    """A valid signature whose trusted comment names another clip, device or hash."""


class RelabelledError(BindingError):
    """A valid signature whose trusted comment names another participant or visit than the
    manifest: the clip was relabelled after the unit signed it."""


# --- MQTT messages ---------------------------------------------------------------------------


class MessageError(ProtocolError, ValueError):
    """An MQTT topic or payload breaks the contract; the message names the field."""


class TopicError(MessageError):
    """A topic is not of the form ``painav/v1/<site>/<device>/<kind>``."""
