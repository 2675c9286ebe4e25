"""``painav research …`` and ``painav export``: enrol participants, record consent, open and
close visits, assign clips, withdraw, export the dataset."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.catalog import Catalog


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/painav/receiver.toml"),
        help="the receiver's config, for its catalog (default: %(default)s)",
    )
    research = commands.add_parser(
        "research", help="the study: participants, consent, visits (for data managers)"
    )
    sub = research.add_subparsers(dest="research_command", required=True, metavar="ACTION")

    enrol = sub.add_parser("enrol", parents=[common], help="enrol a participant with consent")
    enrol.add_argument("pseudonym", help="the study id, e.g. PAIN-0042 (never a name or number)")
    enrol.add_argument("--group", required=True, choices=("pain", "control"))
    enrol.add_argument("--language", required=True, choices=("nl", "en"))
    enrol.add_argument("--consent-form", required=True, help="the signed form's version")
    enrol.add_argument("--consent-date", type=_date, help="when it was signed (default: today)")
    enrol.add_argument("--enrolled", type=_date, help="enrolment date (default: today)")
    enrol.set_defaults(handler="painav.researchcmd:enrol")

    consent = sub.add_parser(
        "consent", parents=[common], help="record a newer consent form the participant signed"
    )
    consent.add_argument("pseudonym")
    consent.add_argument("--form", required=True, help="the signed form's version")
    consent.add_argument("--date", type=_date, help="when it was signed (default: today)")
    consent.set_defaults(handler="painav.researchcmd:consent")

    visit = sub.add_parser("visit", parents=[common], help="open or close a participant's visit")
    visit.add_argument("action", choices=("open", "close"))
    visit.add_argument("pseudonym")
    visit.add_argument("number", nargs="?", type=int, help="the visit to close")
    visit.add_argument("--on", type=_date, help="the visit's day (default: today)")
    visit.set_defaults(handler="painav.researchcmd:visit")

    assign = sub.add_parser(
        "assign", parents=[common], help="assign a clip recorded unarmed to a participant's visit"
    )
    assign.add_argument("clip_id")
    assign.add_argument("pseudonym")
    assign.add_argument("--visit", required=True, type=int, help="the visit's number")
    assign.set_defaults(handler="painav.researchcmd:assign")

    arm = sub.add_parser(
        "arm", parents=[common], help="arm a unit for a consented participant's open visit"
    )
    arm.add_argument("unit")
    arm.add_argument("pseudonym")
    arm.add_argument("--visit", required=True, type=int, help="the open visit's number")
    arm.add_argument("--hours", type=float, default=8.0, help="until it disarms itself (8)")
    arm.set_defaults(handler="painav.researchcmd:arm")
    disarm = sub.add_parser("disarm", parents=[common], help="disarm a unit")
    disarm.add_argument("unit")
    disarm.set_defaults(handler="painav.researchcmd:disarm")

    imports = sub.add_parser(
        "import", parents=[common], help="import clinical data from the study's EDC export"
    )
    imports.add_argument("export", type=Path, help="REDCap CSV or Castor ZIP export")
    imports.add_argument("--mapping", required=True, type=Path, help="the mapping file (TOML)")
    imports.set_defaults(handler="painav.researchcmd:import_clinical")

    withdraw = sub.add_parser(
        "withdraw",
        help="a participant withdraws: erase their clips, features and QC; keep a tombstone",
    )
    withdraw.add_argument("pseudonym")
    withdraw.add_argument(
        "--extract-config",
        type=Path,
        default=Path("/etc/painav/extract.toml"),
        help="the extraction worker's config: catalog, store and feature folder (%(default)s)",
    )
    withdraw.add_argument(
        "--wait", type=float, default=900.0, help="seconds to wait for busy workers (900)"
    )
    withdraw.set_defaults(handler="painav.researchcmd:withdraw")

    exports = sub.add_parser(
        "exports", parents=[common], help="the exports written, and which are superseded"
    )
    exports.set_defaults(handler="painav.researchcmd:exports")

    show = sub.add_parser("show", parents=[common], help="participants with consent and visits")
    show.add_argument("pseudonym", nargs="?", help="only this participant")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler="painav.researchcmd:show")

    export = commands.add_parser(
        "export", help="write the research dataset (features; media only with --media)"
    )
    export.add_argument("--out", required=True, type=Path, help="a new folder for the dataset")
    export.add_argument(
        "--extract-config",
        type=Path,
        default=Path("/etc/painav/extract.toml"),
        help="the extraction worker's config: catalog, store, feature folder (%(default)s)",
    )
    export.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    export.add_argument(
        "--media", action="store_true", help="also the decrypted media files (audited)"
    )
    export.set_defaults(handler="painav.researchcmd:export")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a date (YYYY-MM-DD)") from None


def _catalog(args: argparse.Namespace) -> Catalog:
    from server.catalog import Catalog
    from server.config import load_config

    return Catalog(load_config(args.config).catalog.url, actor=_actor())


def _actor() -> str:
    """Who changed the study, in the audit log: the account at the command line."""
    return f"os:{getpass.getuser()}"[:64]


def enrol(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        today = date.today()
        added = catalog.enrol(
            args.pseudonym,
            group=args.group,
            language=args.language,
            enrolled_on=args.enrolled or today,
            consented_on=args.consent_date or today,
            form_version=args.consent_form,
        )
    print(f"enrolled {added.pseudonym} ({added.group}, {added.language}); open a visit next")
    return 0


def consent(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        catalog.record_consent(
            args.pseudonym, consented_on=args.date or date.today(), form_version=args.form
        )
    print(f"{args.pseudonym}: consent form {args.form} recorded")
    return 0


def visit(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        if args.action == "open":
            opened = catalog.open_visit(args.pseudonym, on=args.on or date.today())
            print(f"{args.pseudonym}: visit {opened.number} ({opened.label}) open")
            return 0
        if args.number is None:
            print("painav: error: research visit close: give the visit's number")
            return 2
        catalog.close_visit(args.pseudonym, args.number)
    print(f"{args.pseudonym}: visit {args.number} closed")
    return 0


def assign(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        clip = catalog.assign_clip(args.clip_id, args.pseudonym, args.visit)
    print(f"{clip.clip_id}: {clip.participant} visit {clip.visit}; it may now be extracted")
    return 0


def arm(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        request = catalog.request_arm(args.unit, args.pseudonym, args.visit, hours=args.hours)
    print(
        f"{args.unit}: armed for {args.pseudonym} {request.visit} until "
        f"{request.expires_at:%Y-%m-%d %H:%M} UTC; the receiver signs and sends it within seconds"
    )
    return 0


def disarm(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        catalog.request_disarm(args.unit)
    print(f"{args.unit}: disarm requested; the receiver sends it within seconds")
    return 0


def import_clinical(args: argparse.Namespace) -> int:
    from server.catalog.clinical import ImportRefusedError
    from server.research.importer import import_edc

    with _catalog(args) as catalog:
        try:
            report = import_edc(catalog, args.export, args.mapping)
        except ImportRefusedError as refused:
            for problem in refused.problems:  # every bad row, one line each
                print(f"painav: {problem}", file=sys.stderr)
            print(f"painav: error: nothing imported: {len(refused.problems)} problem(s)",
                  file=sys.stderr)  # fmt: skip
            return 1
    print(
        f"{args.export.name}: {report.new} new, {report.updated} updated (audited), "
        f"{report.unchanged} unchanged"
    )
    return 0


def withdraw(args: argparse.Namespace) -> int:
    from protocol.extract_config import ExtractConfig
    from protocol.tomlconfig import load_toml
    from server.catalog import Catalog
    from server.research.withdrawal import withdraw as erase
    from server.stores import open_store

    config = load_toml(args.extract_config, ExtractConfig)
    with Catalog(config.catalog.url, actor=_actor()) as catalog:
        tombstone = erase(
            catalog,
            open_store(config.store),
            config.features.dir,
            args.pseudonym,
            wait_s=args.wait,
            say=print,
        )
    counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in tombstone.erased.items())
    print(f"{tombstone.pseudonym} withdrawn and erased ({counts}); the tombstone stays")
    return 0


def export(args: argparse.Namespace) -> int:
    from protocol.extract_config import ExtractConfig
    from protocol.tomlconfig import load_toml
    from server.catalog import Catalog
    from server.extract.worker import data_key_path, load_identities
    from server.research.export import export_dataset
    from server.stores import open_store

    config = load_toml(args.extract_config, ExtractConfig)
    media = None
    if args.media:
        media = (open_store(config.store), load_identities(data_key_path(config)))
    with Catalog(config.catalog.url, actor=_actor()) as catalog:
        result = export_dataset(
            catalog, config.features.dir, args.out, folds=args.folds, media=media, actor=_actor()
        )
    print(
        f"exported {result.participants} participant(s), {result.clips} clip(s) to {result.out} "
        f"(export {result.record.id}); load it with "
        f"pandas.read_csv('{result.out}/participants.tsv', sep='\\t')"
    )
    return 0


def exports(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        rows = catalog.exports()
    for e in rows:
        state = f"superseded {e.superseded_at:%Y-%m-%d}" if e.superseded_at else "current"
        media = ", with media" if e.media else ""
        print(f"{e.id:>4}  {e.created_at:%Y-%m-%d %H:%M}  {state:<21} "
              f"{len(e.participants)} participant(s){media}  {e.out}")  # fmt: skip
    return 0


def show(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        rows = [catalog.participant(args.pseudonym)] if args.pseudonym else catalog.participants()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "pseudonym": p.pseudonym,
                        "group": p.group,
                        "language": p.language,
                        "enrolled_on": p.enrolled_on.isoformat(),
                        "consent_form": p.consent.form_version if p.consent else None,
                        "consented": p.consented,
                        "visits": [
                            {
                                "number": v.number,
                                "opened_on": v.opened_on.isoformat(),
                                "closed_at": v.closed_at.isoformat() if v.closed_at else None,
                            }
                            for v in p.visits
                        ],
                    }
                    for p in rows
                ],
                indent=2,
            )
        )
        return 0
    print(f"{'participant':<12} {'group':<8} {'lang':<5} {'enrolled':<11} {'consent':<10} visits")
    for p in rows:
        state = (p.consent.form_version if p.consented and p.consent else "withdrawn")[:10]
        visits = " ".join(f"{v.label}{'' if v.closed_at else '(open)'}" for v in p.visits)
        print(
            f"{p.pseudonym:<12} {p.group:<8} {p.language:<5} {p.enrolled_on.isoformat():<11} "
            f"{state:<10} {visits or '-'}"
        )
    return 0
