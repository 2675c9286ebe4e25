"""The fate of one MQTT publish, as a handle the publisher can wait on."""

from __future__ import annotations

import threading

__all__ = ["Published"]


class Published:
    """The fate of one publish: :attr:`acknowledged` or :attr:`failed` once settled, else
    neither. A failed message is never retried here; the caller keeps what must arrive."""

    __slots__ = ("_ok", "_reason", "_settled", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._settled = threading.Event()
        self._ok = False
        self._reason: str | None = None

    @property
    def acknowledged(self) -> bool:
        """The broker acknowledged it (QoS 1: a successful PUBACK; QoS 0: written out)."""
        return self._settled.is_set() and self._ok

    @property
    def failed(self) -> bool:
        """It will never be acknowledged: not connected, refused by the broker, or dropped."""
        return self._settled.is_set() and not self._ok

    @property
    def reason(self) -> str | None:
        """Why it failed, in a few words; None unless :attr:`failed`."""
        return self._reason if self.failed else None

    def wait(self, timeout_s: float) -> bool:
        """Wait up to *timeout_s* for it to settle; return :attr:`acknowledged`."""
        self._settled.wait(timeout_s)
        return self.acknowledged

    def _settle(self, ok: bool, reason: str | None = None) -> None:
        if self._settled.is_set():  # the first outcome stands
            return
        self._ok, self._reason = ok, reason
        self._settled.set()
