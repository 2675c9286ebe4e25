"""Where a unit's clip server may be: the check of an announced URL's host and port, before any
connection, and the address the connection must then go to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

__all__ = ["AddressNotAllowedError", "CheckedTarget", "UnitAddressPolicy"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Sequence[str]]

_MAX_ADDRESSES: Final = 16  # a name resolving to more is not a unit's


class AddressNotAllowedError(ValueError):
    """An announced URL names a host or port no unit may advertise (or is not an https URL)."""


@dataclass(frozen=True)
class CheckedTarget:
    """A URL that passed the check: connect to *address* (checked), name *host* in TLS and
    HTTP, ask for *path*."""

    host: str
    address: str
    port: int
    path: str


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class UnitAddressPolicy:
    """The networks and ports a unit's clip server may be on (``[pull] unit_networks`` and
    ``unit_ports``).

    A unit chooses the URL it announces, so without this check it could make the receiver open
    TLS connections to any host and port of the hospital network. A host name is resolved once
    here; every address it resolves to must be in the networks (else a name could pass with one
    address and be used with another), and the connection goes to the first one checked, never
    to a second lookup of the name (DNS rebinding between check and connect)::

        policy = UnitAddressPolicy(["10.0.0.0/8"], [8443])
        target = policy.check("https://10.1.2.3:8443/v1/clips/c.age")   # or AddressNotAllowedError
    """

    def __init__(
        self,
        networks: Iterable[Network | str],
        ports: Iterable[int | str],
        *,
        resolve: Resolve = _resolve,
    ) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)
        self._ports: list[tuple[int, int]] = []
        for entry in ports:
            low, _, high = str(entry).partition("-")
            self._ports.append((int(low), int(high or low)))
        if not self.networks or not self._ports:
            raise ValueError("a unit address policy needs at least one network and one port")
        self._resolve = resolve

    def allows(self, address: Address, port: int) -> bool:
        """Whether a unit may serve on *address*:*port* (the decision, without a lookup)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        in_network = any(address.version == n.version and address in n for n in self.networks)
        return in_network and any(low <= port <= high for low, high in self._ports)

    def _lookup(self, host: str, port: int) -> list[Address]:
        try:
            resolved = self._resolve(host, port)[: _MAX_ADDRESSES + 1]
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
        except (OSError, UnicodeError, ValueError) as exc:
            raise AddressNotAllowedError(f"host {host!r} does not resolve: {exc}") from None
        if not addresses or len(addresses) > _MAX_ADDRESSES:
            raise AddressNotAllowedError(f"host {host!r} resolves to no usable address")
        return addresses

    def check(self, url: str) -> CheckedTarget:
        """The target of *url* if a unit may serve there; :class:`AddressNotAllowedError` naming
        what is refused otherwise. Only a host name is looked up (no connection is made)."""
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError as exc:  # a port out of range, a malformed netloc
            raise AddressNotAllowedError(f"not a URL: {exc}") from None
        host = parts.hostname
        if parts.scheme != "https" or not host:
            raise AddressNotAllowedError("not an https URL")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = self._lookup(host, port)
        refused = [a for a in addresses if not self.allows(a, port)]
        if refused:
            where = ", ".join(str(a) for a in refused[:3])
            raise AddressNotAllowedError(
                f"{where} port {port} is outside the unit networks and ports "
                "([pull] unit_networks, unit_ports)"
            )
        return CheckedTarget(host=host, address=str(addresses[0]), port=port, path=path)
