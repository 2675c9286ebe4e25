"""Where a unit's clip server may be (``[pull] unit_networks``, ``unit_ports``), checked before
any connection, and a unit that does not answer: over real sockets on loopback."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time

import pytest

from server.fetch import FetchError, FetchErrorKind, UnitAddressPolicy
from server.unit_address import AddressNotAllowedError
from tests.server.test_fetch import HOST, receiver_client
from tests.server.test_verify import UNIT, Ward, make_ward


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Ward:
    return make_ward(tmp_path_factory.mktemp("ward"))


def test_a_unit_address_must_be_in_the_unit_networks_and_ports() -> None:
    names = {"cart.ward7": ["10.1.2.3"], "rebind.ward7": ["10.1.2.4", "192.0.2.7"]}

    def resolve(host: str, _port: int) -> list[str]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[host]

    policy = UnitAddressPolicy(["10.0.0.0/8", "fd00::/8"], [8443, "9000-9009"], resolve=resolve)
    target = policy.check("https://10.9.8.7:8443/v1/clips/c.age")
    assert (target.address, target.port, target.path) == ("10.9.8.7", 8443, "/v1/clips/c.age")
    assert policy.check("https://[fd00::5]:9009/v1/clips").address == "fd00::5"
    # A name resolves once; the connection goes to the address checked, not to a new lookup.
    named = policy.check("https://cart.ward7:9000/v1/clips")
    assert (named.host, named.address) == ("cart.ward7", "10.1.2.3")
    assert policy.allows(ipaddress.ip_address("::ffff:10.0.0.1"), 8443)  # IPv4-mapped
    for url, why in [
        ("https://192.168.1.1:8443/x", "outside the unit networks"),
        ("https://10.0.0.1:22/x", "port 22 is outside"),
        ("https://10.0.0.1/x", "port 443 is outside"),
        ("https://127.0.0.1:8443/x", "outside"),
        ("https://rebind.ward7:8443/x", "192.0.2.7"),  # every address must be allowed
        ("https://nowhere.ward7:8443/x", "does not resolve"),
        ("http://10.0.0.1:8443/x", "not an https URL"),
        ("https://10.0.0.1:99999/x", "not a URL"),
    ]:
        with pytest.raises(AddressNotAllowedError, match=re.escape(why)):
            policy.check(url)


def test_a_refused_url_is_never_connected_to(ward: Ward) -> None:
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    client = receiver_client(ward)
    client.policy = UnitAddressPolicy(["127.0.0.1/32"], [port + 1 if port < 65535 else 1024])
    with listener:
        with pytest.raises(FetchError) as refused:
            client.list_clips(f"https://{HOST}:{port}", device_id=UNIT)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected
    assert refused.value.kind is FetchErrorKind.NOT_ALLOWED and not refused.value.retryable
    assert f"https://{HOST}:{port}" in str(refused.value) and UNIT in str(refused.value)


def test_a_unit_that_does_not_answer_is_unreachable_not_a_failed_attempt(ward: Ward) -> None:
    # A listener whose accept queue is full drops further connections' SYNs, as a firewall
    # does for a unit that is switched off: the connect times out.
    listener = socket.create_server((HOST, 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    with listener, contextlib.ExitStack() as stack:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            stack.callback(filler.close)
            filler.connect_ex((HOST, port))
            fillers.append(filler)
        time.sleep(0.2)
        client = receiver_client(ward, timeout_s=0.5)
        with pytest.raises(FetchError) as away:
            client.list_clips(f"https://{HOST}:{port}", device_id=UNIT)
    # Not counted against the clip's attempts (the puller passes counted=False), and retried.
    assert away.value.kind is FetchErrorKind.UNREACHABLE and away.value.retryable, away.value
    assert "no answer" in str(away.value)
