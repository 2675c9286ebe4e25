"""The receiver as it ships: the ``receiver.toml`` that ``painav provision receiver config``
prints, under painav-receiver.service's system-call filter, clock protection, address families
and W^X memory. A press on a real unit ends stored and receipted."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from painav.cli import main
from painav.localsite import free_port
from server.catalog import Catalog, ClipState
from tests.server.test_metrics import get
from tests.server.test_receiver_e2e import wait_for
from tests.support.mosquitto import HOST, Broker
from tests.support.sandbox import launcher
from tests.support.unit import ReceiverProcess, make_unit

UNIT_FILE = Path(__file__).resolve().parents[2] / "systemd" / "painav-receiver.service"


def test_the_provisioned_receiver_stores_a_clip_under_its_units_sandbox(
    broker_site, broker: Broker, tmp_path: Path
) -> None:
    site = broker_site
    work = tmp_path / "receiver"
    work.mkdir()
    out = io.StringIO()
    args = ["provision", "receiver", "config", "--dir", str(site.dir)]
    args += ["--catalog-url", f"sqlite:///{work / 'catalog.db'}"]
    args += ["--store", str(work / "store"), "--spool", str(work / "spool")]
    with redirect_stdout(out):
        assert main(args) == 0
    # Only the broker's address differs off the broker host; everything else is as printed.
    text = out.getvalue().replace(
        'host = "127.0.0.1"\nport = 8883', f'host = "{HOST}"\nport = {broker.port}'
    )
    assert f"port = {broker.port}" in text
    # Its metrics endpoint as printed, on a port free here: it must listen inside the sandbox.
    metrics_port = free_port()
    assert '[metrics]\nlisten = "127.0.0.1"\nport = 9464\n' in text
    text = text.replace("port = 9464", f"port = {metrics_port}")
    config = work / "receiver.toml"
    config.write_text(text)
    receiver = ReceiverProcess(config, work, wrapper=launcher(UNIT_FILE)).start()
    unit = make_unit(site, broker, tmp_path / "unit", max_seconds=1.0).start()
    catalog = Catalog(f"sqlite:///{work / 'catalog.db'}")
    try:
        unit.press()
        wait_for(lambda: catalog.clips(state=ClipState.RECEIPTED), "a receipted clip", 60)
        wait_for(lambda: unit.status()["queue"] == [], "the unit's outbox to empty", 30)
        code, body = get(f"http://127.0.0.1:{metrics_port}/healthz")
        assert (code, body) == (200, "ok\n"), receiver.log()
        assert (
            'painav_clips{state="receipted"} 1.0'
            in get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        )
        status = (Path("/proc") / str(receiver.process.pid) / "status").read_text()  # type: ignore[union-attr]
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
    finally:
        assert unit.stop() == 0, unit.log()
        assert receiver.stop() == 0, receiver.log()
        catalog.close()
