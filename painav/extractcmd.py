"""``painav extract …``: run the extraction worker, show the queue, extract one clip now."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/painav/extract.toml"),
        help="the worker's config (default: /etc/painav/extract.toml)",
    )
    extract = commands.add_parser("extract", help="the extraction worker: features and QC")
    sub = extract.add_subparsers(dest="extract_command", required=True, metavar="ACTION")
    run = sub.add_parser("run", parents=[common], help="run a worker (systemd runs this)")
    run.add_argument("--worker", default="1", help="this worker's number on this host")
    run.set_defaults(handler="painav.extractcmd:run")
    status = sub.add_parser("status", parents=[common], help="clips waiting, extracted, failed")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler="painav.extractcmd:status")
    clip = sub.add_parser("clip", parents=[common], help="extract one clip now (data managers)")
    clip.add_argument("clip_id")
    clip.set_defaults(handler="painav.extractcmd:clip")


def _config(args: argparse.Namespace) -> object:
    from protocol.extract_config import ExtractConfig
    from protocol.tomlconfig import load_toml

    return load_toml(args.config, ExtractConfig)


def _worker(args: argparse.Namespace, number: str) -> object:
    from protocol.extract_config import ExtractConfig
    from server.extract.worker import ExtractionWorker, data_key_path, load_identities

    config = _config(args)
    assert isinstance(config, ExtractConfig)
    # Each worker of a host serves its metrics on a port of its own ([metrics] port + N - 1).
    config = config.model_copy(update={"metrics": config.metrics.for_worker(number)})
    identities = load_identities(data_key_path(config))  # one line at start if it is missing
    return ExtractionWorker(
        config, worker_id=f"extract-{number}@{socket.gethostname()}", identities=identities
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from server.extract.worker import ExtractionWorker

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    worker = _worker(args, args.worker)
    assert isinstance(worker, ExtractionWorker)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        worker.run(stop)
    finally:
        worker.close()
    return 0


def status(args: argparse.Namespace) -> int:
    from collections import Counter

    from protocol.extract_config import ExtractConfig
    from server.catalog import Catalog, ClipState

    config = _config(args)
    assert isinstance(config, ExtractConfig)
    catalog = Catalog(config.catalog.url)
    try:
        clips = catalog.clips(limit=100_000)
        failed = [c for c in clips if c.state is ClipState.FAILED]
    finally:
        catalog.close()
    counts = Counter(c.state.value for c in clips)
    waiting = counts.get("receipted", 0)
    if args.json:
        print(json.dumps({"states": dict(counts), "failed": [_failure(c) for c in failed]}))
        return 0
    print(
        f"waiting {waiting}, extracting {counts.get('extracting', 0)}, "
        f"extracted {counts.get('extracted', 0)}, failed {len(failed)}"
    )
    for c in failed:
        print(f"  {c.clip_id}: {c.extraction_error}")
    return 0


def _failure(c: object) -> dict[str, object]:
    from server.catalog.records import ClipRecord

    assert isinstance(c, ClipRecord)
    return {"clip_id": c.clip_id, "reason": c.extraction_error}


def clip(args: argparse.Namespace) -> int:
    import logging
    import sys

    from server.extract.worker import ExtractionWorker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    worker = _worker(args, "cli")
    assert isinstance(worker, ExtractionWorker)
    try:
        outcome = worker.extract_one(args.clip_id)
        features = worker.catalog.features(args.clip_id) if outcome else []
    finally:
        worker.close()
    if outcome is None:
        print(
            f"painav: error: clip {args.clip_id}: not waiting for extraction "
            "(unknown, not yet stored, extracted already, or being extracted)",
            file=sys.stderr,
        )
        return 1
    print(f"clip {outcome.clip_id}: {outcome.result}", end="")
    print(f", quick check {outcome.verdict}" if outcome.verdict else f": {outcome.reason}")
    for f in features:
        print(
            f"  {f.feature_set} {f.feature_set_version}  "
            f"{f.provenance.tool} {f.provenance.tool_version}"
        )
    return 0 if outcome.result == "extracted" else 1
