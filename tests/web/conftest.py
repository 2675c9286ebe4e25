"""A dashboard on a site with no broker: enough for sign-in, roles, CSRF and the throttle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.devices import add_device
from provisioning.site import init_site
from tests.support.dashboard import Dashboard, provision_dashboard


def _start(work: Path) -> Dashboard:
    site = init_site(work / "site", "ward7", broker_hosts=("127.0.0.1",))
    add_device(site, "cart-01")
    return provision_dashboard(site, work, f"sqlite:///{work / 'catalog.db'}").start()


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """One dashboard for a module's tests (starting one takes a few seconds)."""
    running = _start(tmp_path_factory.mktemp("board"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh_board(tmp_path: Path) -> Iterator[Dashboard]:
    """A dashboard of the test's own: for what leaves state behind (failed logins)."""
    running = _start(tmp_path)
    try:
        yield running
    finally:
        running.stop()
