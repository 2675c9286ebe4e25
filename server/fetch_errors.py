"""How a fetch from a unit fails: the kinds, whether each is worth a retry, and the
translation of socket, TLS and HTTP failures into them (once, at the boundary)."""

from __future__ import annotations

import enum
import http.client
import ssl
from typing import Final

__all__ = ["FetchError", "FetchErrorKind", "NoAnswerError", "network_error", "status_error"]


class NoAnswerError(TimeoutError):
    """The unit's address did not answer a TCP connection in time: the unit is away (switched
    off, off the network, or behind a firewall that drops), which is no attempt on the clip."""


class FetchErrorKind(enum.StrEnum):
    """What went wrong in a fetch; :attr:`FetchError.retryable` follows from it."""

    UNREACHABLE = "unreachable"  # refused, no route, no answer to connect, name not resolved
    TIMEOUT = "timeout"
    RESET = "reset"  # connection dropped or reset mid-exchange
    TRUNCATED = "truncated"  # body ended before its declared length
    SERVER_ERROR = "server_error"  # 5xx, 429
    LOCAL = "local"  # the receiver cannot write its own spool file
    NOT_FOUND = "not_found"  # 404: not (or no longer) pending on the unit
    FORBIDDEN = "forbidden"  # 401/403: the unit refuses our certificate
    IDENTITY = "identity"  # the server is not the unit the announcement names
    TLS = "tls"  # handshake failed: untrusted certificate, alert
    TOO_LARGE = "too_large"  # more bytes than announced
    MISMATCH = "mismatch"  # the unit serves another file (ETag, size) than announced
    PROTOCOL = "protocol"  # a response the clip server contract does not allow
    NOT_ALLOWED = "not_allowed"  # the URL names a host or port no unit may serve on


_RETRYABLE: Final = frozenset(
    {
        FetchErrorKind.UNREACHABLE,
        FetchErrorKind.TIMEOUT,
        FetchErrorKind.RESET,
        FetchErrorKind.TRUNCATED,
        FetchErrorKind.SERVER_ERROR,
        FetchErrorKind.LOCAL,
    }
)


class FetchError(Exception):
    """A fetch failed; :attr:`kind` says how, the message says where in one line."""

    def __init__(self, kind: FetchErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (network trouble, not a refusal)."""
        return self.kind in _RETRYABLE


def status_error(response: http.client.HTTPResponse, where: str) -> FetchError:
    status = response.status
    what = f"{where}: HTTP {status} {response.reason}"
    if status == 404:
        return FetchError(FetchErrorKind.NOT_FOUND, what)
    if status in (401, 403):
        return FetchError(FetchErrorKind.FORBIDDEN, what)
    if status == 416:  # the unit's file is shorter than what we hold of it
        return FetchError(FetchErrorKind.MISMATCH, what)
    if status >= 500 or status == 429:
        return FetchError(FetchErrorKind.SERVER_ERROR, what)
    return FetchError(FetchErrorKind.PROTOCOL, what)


def network_error(
    exc: BaseException, where: str, timeout_s: float, deadline_s: float | None = None
) -> FetchError:
    """Translate an exception of the socket, TLS or HTTP layer into a FetchError; *deadline_s*
    if the exchange's deadline had passed (and shut the socket) when it was raised."""
    if isinstance(exc, NoAnswerError):
        return FetchError(FetchErrorKind.UNREACHABLE, f"{where}: no answer: {exc}")
    if deadline_s is not None:
        # Whatever the socket said when the deadline shut it, the cause is the deadline.
        return FetchError(
            FetchErrorKind.TIMEOUT, f"{where}: not done in the {deadline_s:g} s allowed"
        )
    kind, what = FetchErrorKind.PROTOCOL, f"malformed response ({type(exc).__name__})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        kind, what = FetchErrorKind.TLS, f"certificate not trusted: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or ""):
        # An alert from the unit: it refused our certificate or the protocol. TLS 1.3 reports a
        # refused client certificate only at the first read, hence in any phase; and a reset
        # can overtake the alert, which then looks like RESET (retried; the unit logs why).
        kind, what = FetchErrorKind.TLS, f"TLS refused by the unit: {exc.reason}"
    elif isinstance(exc, TimeoutError):
        kind, what = FetchErrorKind.TIMEOUT, f"no progress for {timeout_s:g} s"
    elif isinstance(exc, ConnectionRefusedError):
        kind, what = FetchErrorKind.UNREACHABLE, "connection refused"
    elif isinstance(exc, http.client.IncompleteRead):
        kind, what = FetchErrorKind.TRUNCATED, "body ended early"
    elif isinstance(
        exc, ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    ):
        kind, what = FetchErrorKind.RESET, "connection closed by the unit"
    elif isinstance(exc, ssl.SSLError):
        kind, what = FetchErrorKind.TLS, f"TLS failure: {exc.reason or exc}"
    elif isinstance(exc, OSError):
        kind, what = FetchErrorKind.UNREACHABLE, f"network error: {exc.strerror or exc}"
    return FetchError(kind, f"{where}: {what}")
