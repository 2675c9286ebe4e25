"""The fleet page's trouble flags and the dataset page's group summary (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal

from protocol.messages import Telemetry
from protocol.registry import DeviceEntry, Registry
from server.catalog.records import UnitRecord
from server.web.fleet_view import fleet_rows
from server.web.study_view import summarise

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
KEY = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"


def _entry(
    device: str, *, status: Literal["active", "revoked"] = "active", days: int = 365
) -> DeviceEntry:
    return DeviceEntry(device_id=device, status=status, signing_key=KEY, cert_serial="ab",
                       cert_sha256="0" * 64, added_at=NOW - timedelta(days=30),
                       cert_not_after=NOW + timedelta(days=days),
                       revoked_at=NOW if status == "revoked" else None)  # fmt: skip


def _unit(
    device: str, state: str, *, seen: timedelta = timedelta(0), **telemetry: object
) -> UnitRecord:
    sample = None
    if telemetry:
        values = {"at": NOW, "uptime_s": 60.0, "free_bytes": 50 << 30, "queue_depth": 0,
                  "clock_synced": True, **telemetry}  # fmt: skip
        sample = Telemetry.model_validate(values)
    return UnitRecord(device, "ward7", NOW - timedelta(days=1), NOW - seen, state, NOW, None,
                      "0.1.0", False, sample, NOW)  # fmt: skip


def test_a_unit_in_trouble_says_why() -> None:
    registry = Registry(site_id="ward7", receiver_id="receiver", updated_at=NOW, devices={
        d: _entry(d) for d in ("cart-01", "cart-02", "cart-03", "cart-04")} | {
        "cart-05": _entry("cart-05", status="revoked"), "cart-06": _entry("cart-06", days=10),
        "cart-07": _entry("cart-07")})  # fmt: skip
    units = [
        _unit("cart-01", "online", clock_synced=True),
        _unit("cart-02", "offline"),
        _unit("cart-03", "online", free_bytes=1 << 30, clock_synced=False),
        _unit("cart-04", "online", queue_depth=2, oldest_unreceipted_s=7200.0),
        _unit("cart-05", "online"),
        _unit("cart-06", "online", seen=timedelta(minutes=20)),
        _unit("cart-09", "online"),
    ]
    rows = {r.device_id: r for r in fleet_rows(units, registry, {}, now=NOW)}
    assert rows["cart-01"].trouble == () and rows["cart-01"].online
    assert rows["cart-02"].trouble == ("offline",) and not rows["cart-02"].online
    assert rows["cart-03"].trouble == ("disk nearly full", "clock not synchronised")
    assert rows["cart-04"].trouble == ("clip waiting 2 h",) and rows["cart-04"].outbox == 2
    assert rows["cart-05"].state == "revoked" and rows["cart-05"].trouble == ("revoked",)
    assert rows["cart-06"].trouble == ("silent for 20 min", "certificate expires soon")
    assert rows["cart-07"].state == "never seen"
    assert rows["cart-09"].trouble == ("not in the registry",)


def test_key_features_by_group() -> None:
    clips: list[tuple[str, Mapping[str, object]]] = [
        ("pain", {"pspi_proxy_mp_mean": 1.0, "face_share": 0.9}),
        ("pain", {"pspi_proxy_mp_mean": 2.0, "face_share": None}),
        ("control", {"pspi_proxy_mp_mean": 0.5}),
    ]
    by_label = {s.label: s.by_group for s in summarise(clips)}
    assert by_label["PSPI proxy (MediaPipe), mean"]["pain"] == (2, 1.5, 0.7071067811865476)
    assert by_label["PSPI proxy (MediaPipe), mean"]["control"] == (1, 0.5, None)
    assert by_label["Share of frames with a face"]["pain"] == (1, 0.9, None)
    assert by_label["Loudness, mean"]["control"] == (0, None, None)
