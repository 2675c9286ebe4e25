"""Publishing the site root's CRL, retained, on every unit's ``crl`` topic: how a revoked
receiver's certificates reach units already deployed.

IT copies the root CRL that ``painav provision receiver revoke`` (or ``crl refresh``) wrote into
each receiver's credentials folder; the receiver notices the file changed and publishes it to
every unit in the registry. It publishes again after each (re)connection to the broker and when
the registry gains a unit. Each unit checks the CRL's signature against its site root and keeps
it only if it is newer than the one it holds, so neither a stale copy from another receiver nor
a forged one can un-revoke anything.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol.messages import CrlMessage
from protocol.registry import Registry, RegistryError

__all__ = ["CrlPublisher"]

log = logging.getLogger("painav.receiver")

_ACK_S = 10.0


class Acknowledgement(Protocol):
    """What a publish returns (:class:`link.Published`): wait for the broker's answer."""

    def wait(self, timeout_s: float) -> bool: ...


class CrlPublisher:
    """Publishes *crl_path* (PEM) to the active units of *registry_path* through *publish*,
    whenever the file, the set of units or the broker connection changed since the last round
    that every unit's broker acknowledged. :meth:`poll` never blocks: a round runs on a thread
    of its own."""

    def __init__(
        self,
        crl_path: Path,
        registry_path: Path,
        publish: Callable[[str, CrlMessage], Acknowledgement],
    ) -> None:
        self._path, self._registry = crl_path, registry_path
        self._publish = publish
        self._done: tuple[bytes, tuple[str, ...], int] | None = None
        self._unreadable: bytes | None = None
        self._thread: threading.Thread | None = None

    def poll(self, connects: int) -> None:
        """Start a round if something changed and none is running; *connects* counts the
        connections to the broker so far."""
        if self._thread is not None and self._thread.is_alive():
            return
        try:
            data = self._path.read_bytes()
            devices = tuple(
                sorted(
                    d
                    for d, e in Registry.load(self._registry).devices.items()
                    if e.status == "active"
                )
            )
        except (OSError, RegistryError) as exc:
            self._warn_once(str(exc).encode(), f"CRL not published: {exc}")
            return
        state = (data, devices, connects)
        if state == self._done:
            return
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            self._warn_once(data, f"{self._path}: not a PEM CRL; not published to the units")
            return
        message = CrlMessage(
            crl=base64.b64encode(crl.public_bytes(serialization.Encoding.DER)).decode()
        )
        self._thread = threading.Thread(
            target=self._round, args=(state, message), name="crl", daemon=True
        )
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _warn_once(self, key: bytes, line: str) -> None:
        if key != self._unreadable:
            self._unreadable = key
            log.warning("%s", line)

    def _round(self, state: tuple[bytes, tuple[str, ...], int], message: CrlMessage) -> None:
        handles = []
        for device_id in state[1]:
            try:
                handles.append((device_id, self._publish(device_id, message)))
            except Exception as exc:  # one bad id must not keep the CRL from the others
                log.warning("CRL not published to %s: %s", device_id, exc)
        failed = [d for d, h in handles if not h.wait(_ACK_S)]
        if failed:
            log.warning("CRL not acknowledged for %d unit(s), e.g. %s", len(failed), failed[0])
            return  # tried again at the next poll
        self._done = state
        log.info("root CRL published to %d unit(s)", len(handles))
