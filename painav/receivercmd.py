"""``painav receiver …`` and ``painav audit verify``: run the hospital receiver, look inside."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/painav/receiver.toml"),
        help="the receiver's config (default: %(default)s)",
    )
    receiver = commands.add_parser("receiver", help="the hospital receiver and its catalog")
    sub = receiver.add_subparsers(dest="receiver_command", required=True, metavar="ACTION")
    run = sub.add_parser("run", parents=[common], help="run the receiver (systemd runs this)")
    run.set_defaults(handler="painav.receivercmd:run")
    clips = sub.add_parser("clips", parents=[common], help="clips in the catalog")
    clips.add_argument("--json", action="store_true", help="machine-readable output")
    clips.add_argument("--state", help="only clips in this state (e.g. quarantined)")
    clips.set_defaults(handler="painav.receivercmd:clips")
    units = sub.add_parser(
        "units", parents=[common], help="every registered unit: status (or revoked), last seen"
    )
    units.add_argument("--json", action="store_true")
    units.set_defaults(handler="painav.receivercmd:units")
    events = sub.add_parser(
        "events", parents=[common], help="units' recent events (refused presses, errors, …)"
    )
    events.add_argument("--unit", help="only this unit's events")
    events.add_argument("--limit", type=int, default=20, help="how many, newest first (20)")
    events.add_argument("--json", action="store_true")
    events.set_defaults(handler="painav.receivercmd:events")
    reconcile = sub.add_parser(
        "reconcile",
        parents=[common],
        help="list online units' outboxes once, catalogue missed clips",
    )
    reconcile.set_defaults(handler="painav.receivercmd:reconcile")
    audit = commands.add_parser("audit", help="the append-only audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", parents=[common], help="check the hash chain")
    verify.set_defaults(handler="painav.receivercmd:audit_verify")


def run(args: argparse.Namespace) -> int:
    import logging

    from server.config import load_config
    from server.service import ReceiverService

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    service = ReceiverService(load_config(args.config))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.run(stop)
    return 0


def clips(args: argparse.Namespace) -> int:
    from server.catalog import Catalog, ClipState
    from server.config import load_config

    catalog = Catalog(load_config(args.config).catalog.url)
    try:
        state = ClipState(args.state) if args.state else None
        rows = catalog.clips(state=state)
        verdicts = catalog.last_verdicts(c.clip_id for c in rows)
    finally:
        catalog.close()
    if args.json:
        print(json.dumps([_clip_json(c, verdicts.get(c.clip_id)) for c in rows], indent=2))
        return 0
    print(f"{'clip':<34} {'unit':<12} {'state':<12} {'seconds':>7} {'bytes':>10}  {'qc':<7} reason")
    for c in rows:
        qc = verdicts.get(c.clip_id)
        print(
            f"{c.clip_id:<34} {c.device_id:<12} {c.state.value:<12} "
            f"{c.manifest.duration_s:>7.1f} {c.size_bytes:>10}  "
            f"{qc.verdict.value if qc else '-':<7} "
            f"{c.quarantine_reason or c.extraction_error or ''}"
        )
    return 0


def _clip_json(c: object, qc: object = None) -> dict[str, object]:
    from server.catalog import QcRecord
    from server.catalog.records import ClipRecord

    assert isinstance(c, ClipRecord)
    assert qc is None or isinstance(qc, QcRecord)
    return {
        "clip_id": c.clip_id,
        "device_id": c.device_id,
        "state": c.state.value,
        "sha256": c.sha256,
        "size_bytes": c.size_bytes,
        "participant": c.participant,
        "duration_s": c.manifest.duration_s,
        "announced_at": c.announced_at.isoformat(),
        "stored_at": c.stored_at.isoformat() if c.stored_at else None,
        "receipted_at": c.receipted_at.isoformat() if c.receipted_at else None,
        "quarantine_reason": c.quarantine_reason,
        "attempts": c.attempts,
        "extract_attempts": c.extract_attempts,
        "extraction_error": c.extraction_error,
        "extracted_at": c.extracted_at.isoformat() if c.extracted_at else None,
        "qc": None
        if qc is None
        else {
            "pass": qc.qc_pass.value,
            "verdict": qc.verdict.value,
            "reasons": list(qc.reasons),
            "at": qc.created_at.isoformat(),
        },
    }


def units(args: argparse.Namespace) -> int:
    from protocol.registry import Registry
    from server.catalog import Catalog
    from server.config import load_config
    from server.fleet import fleet

    config = load_config(args.config)
    registry = Registry.load(config.site.registry)
    catalog = Catalog(config.catalog.url)
    try:
        rows = fleet(catalog.units(), registry)
    finally:
        catalog.close()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "device_id": u.device_id,
                        "status": u.state,
                        "last_seen_at": u.record.last_seen_at.isoformat() if u.record else None,
                        "queue_depth": (
                            u.record.last_telemetry.queue_depth
                            if u.record and u.record.last_telemetry
                            else None
                        ),
                        "revoked_at": u.revoked_at.isoformat() if u.revoked_at else None,
                        "registered": u.registered,
                    }
                    for u in rows
                ],
                indent=2,
            )
        )
        return 0
    for u in rows:
        seen = f"{u.record.last_seen_at:%Y-%m-%d %H:%M:%S}Z" if u.record else "never"
        telemetry = u.record.last_telemetry if u.record else None
        queue = telemetry.queue_depth if telemetry else "?"
        note = "" if u.registered else "  (not in the registry)"
        print(f"{u.device_id:<16} {u.state:<10} last seen {seen:<20} queue {queue}{note}")
    return 0


def events(args: argparse.Namespace) -> int:
    from server.catalog import Catalog
    from server.config import load_config

    catalog = Catalog(load_config(args.config).catalog.url)
    try:
        rows = catalog.events(device_id=args.unit, limit=max(args.limit, 1))
    finally:
        catalog.close()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "device_id": e.device_id,
                        "kind": e.kind,
                        "reason": e.reason,
                        "at": e.at.isoformat(),
                        "clip_id": e.clip_id,
                        "detail": e.detail,
                    }
                    for e in rows
                ],
                indent=2,
            )
        )
        return 0
    for e in rows:
        print(
            f"{e.at:%Y-%m-%d %H:%M:%S}Z {e.device_id:<16} {e.kind:<10} {e.reason:<22} "
            f"{e.clip_id or ''} {e.detail}".rstrip()
        )
    return 0


def reconcile(args: argparse.Namespace) -> int:
    import logging
    from datetime import UTC, datetime

    from server.catalog import Catalog
    from server.config import load_config
    from server.fetch import FetchClient
    from server.reconcile import reconcile_once

    # What went wrong with a unit is logged (one line each), the counts printed.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl …" is not news
    config = load_config(args.config)
    fetcher = FetchClient.for_receiver(config.tls, config.pull)
    catalog = Catalog(config.catalog.url)
    try:
        report = reconcile_once(catalog, fetcher, now=datetime.now(UTC))
    finally:
        catalog.close()
    # A running receiver's pullers find new clips in the catalog within their idle poll.
    print(report)
    return 1 if report.errors else 0


def audit_verify(args: argparse.Namespace) -> int:
    from server.audit import verify
    from server.config import load_config

    report = verify(load_config(args.config).catalog.url)
    print(report, file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1
