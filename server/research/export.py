"""The research export: a dataset a researcher loads in one line of pandas, laid out after BIDS.

::

    OUT/dataset_description.json      what, by which versions of painav and its tools
    OUT/participants.tsv (+ .json)    one row per participant, with a data dictionary
    OUT/folds.tsv                     each participant in exactly one cross-validation fold
    OUT/qc.tsv                        every exported clip's quality checks
    OUT/phenotype/<measure>.tsv (+ .json)  NRS, analgesics, tumour, questionnaire (from the EDC)
    OUT/sub-PAIN0042/ses-V1/clips.tsv                   the visit's clips
    OUT/sub-PAIN0042/ses-V1/<feature set>.tsv           per-clip values (eGeMAPS functionals, …)
    OUT/sub-PAIN0042/ses-V1/<clip>_<feature set>.parquet per-frame tables (descriptors, face)
    OUT/sub-PAIN0042/ses-V1/media/<clip>.mkv           only with ``media=True``: remuxed

Only participants whose consent is in force, and only their extracted clips. The same catalog
gives the same bytes, but for ``created_at`` in ``dataset_description.json``: rows and columns
are sorted, numbers written one way, tables copied as the worker wrote them. The export is
written beside *out* and renamed into place when whole; it is recorded in the catalog (so a
withdrawal marks it superseded) and audited, each decrypted clip too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol.envelope import EnvelopeReader
from protocol.x25519 import X25519Identity

from ..catalog import Catalog, ClipRecord, ParticipantRecord, StudyError
from ..catalog.exports import ExportRecord
from ..extract.media import MediaError
from ..extract.remux import remux
from ..store import ClipStore
from .folds import assign_folds

__all__ = ["ExportResult", "export_dataset"]

FORMAT = "painav-export/1"

_PARTICIPANT_COLUMNS = {
    "participant_id": "BIDS label: sub- and the pseudonym without its hyphen.",
    "pseudonym": "The study's pseudonymous id (never a name or hospital number).",
    "group": "pain: admitted for cancer pain; control: admitted for chemotherapy, NRS 0.",
    "language": "Language of the recordings: nl (Dutch) or en (English).",
    "enrolled_on": "Date of enrolment (YYYY-MM-DD).",
    "consent_form": "Version of the consent form in force.",
    "visits": "Number of visits opened.",
}


@dataclass
class ExportResult:
    out: Path
    record: ExportRecord
    participants: int = 0
    clips: int = 0
    files: list[str] = field(default_factory=list)


def export_dataset(
    catalog: Catalog,
    features_dir: Path,
    out: Path,
    *,
    folds: int = 5,
    media: tuple[ClipStore, Sequence[X25519Identity]] | None = None,
    actor: str = "export",
) -> ExportResult:
    """Write the dataset to *out* (which must not exist); see the module's description.
    With *media* (the store and the data key), the clips' media too, decrypted."""
    if out.exists():
        raise StudyError(f"{out}: exists already; exports never overwrite (give a new folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        writer = _Writer(staging)
        people = [p for p in catalog.participants() if p.consented]
        clips = {p.pseudonym: catalog.extracted_clips(p.pseudonym) for p in people}
        tools: dict[str, str] = {}
        for person in people:
            for clip in clips[person.pseudonym]:
                for found in catalog.features(clip.clip_id):
                    tools[found.provenance.tool] = found.provenance.tool_version
        _participants(writer, people)
        fold_of = assign_folds(((p.pseudonym, p.group) for p in people), k=folds)
        writer.tsv(
            "folds.tsv",
            ["participant_id", "group", "fold"],
            [[_label(p.pseudonym), p.group, fold_of[p.pseudonym]] for p in people],
        )
        qc_rows: list[list[object]] = []
        for person in people:
            for clip in clips[person.pseudonym]:
                for check in catalog.qc(clip.clip_id):
                    qc_rows.append(
                        [
                            _label(person.pseudonym),
                            f"ses-{clip.visit or 'none'}",
                            clip.clip_id,
                            check.qc_pass.value,
                            check.verdict.value,
                            ",".join(check.reasons),
                        ]
                    )
            _sessions(writer, catalog, features_dir, person, clips[person.pseudonym], media, actor)
        _phenotype(writer, catalog, people)
        writer.tsv(
            "qc.tsv",
            ["participant_id", "session", "clip_id", "pass", "verdict", "reasons"],
            sorted(qc_rows, key=lambda row: (str(row[0]), str(row[1]), str(row[2]), str(row[3]))),
        )
        digest = writer.digest()
        count = sum(len(c) for c in clips.values())
        writer.json(
            "dataset_description.json",
            {
                "Name": "painav research export (NCT07262632)",
                "DatasetType": "derivative",
                "Format": FORMAT,
                "GeneratedBy": [{"Name": "painav", "Version": _painav_version()}],
                "Tools": dict(sorted(tools.items())),
                "Participants": len(people),
                "Clips": count,
                "Media": media is not None,
                "Digest": digest,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = catalog.record_export(
        str(out),
        participants=[p.pseudonym for p in people],
        media=media is not None,
        digest=digest,
    )
    return ExportResult(out, record, len(people), count, writer.written)


def _participants(writer: _Writer, people: list[ParticipantRecord]) -> None:
    rows = [
        [
            _label(p.pseudonym),
            p.pseudonym,
            p.group,
            p.language,
            p.enrolled_on.isoformat(),
            p.consent.form_version if p.consent else None,
            len(p.visits),
        ]
        for p in people
    ]
    writer.tsv("participants.tsv", list(_PARTICIPANT_COLUMNS), rows)
    dictionary: dict[str, Any] = {k: {"Description": v} for k, v in _PARTICIPANT_COLUMNS.items()}
    dictionary["group"]["Levels"] = {"pain": "cancer pain", "control": "chemotherapy, NRS 0"}
    dictionary["language"]["Levels"] = {"nl": "Dutch", "en": "English"}
    writer.json("participants.json", dictionary)


_PHENOTYPE = {
    "nrs": ("nrs", ["date", "score"], "Pain score (NRS 0-10) and the day it was taken."),
    "analgesic": ("analgesics", ["name", "route", "ome_mg"],
                  "Analgesics: name, route, oral morphine equivalent in mg/day (if known)."),
    "tumour": ("tumour", ["type", "status"], "Tumour type and clinical status."),
    "questionnaire": ("questionnaire", [], "The questionnaire's answers (codes as in the EDC)."),
}  # fmt: skip


def _phenotype(writer: _Writer, catalog: Catalog, people: list[ParticipantRecord]) -> None:
    """``phenotype/<measure>.tsv`` (+ ``.json``): the clinical and questionnaire data, one row
    per EDC instance (the ``instance`` column is the EDC's own key: event, form, number)."""
    rows: dict[str, list[tuple[str, str, dict[str, Any]]]] = {domain: [] for domain in _PHENOTYPE}
    for person in people:
        for domain, instance, data in catalog.clinical(person.pseudonym):
            rows[domain].append((_label(person.pseudonym), instance, data))
    for domain, (name, fixed, description) in _PHENOTYPE.items():
        columns = fixed or sorted({key for _, _, data in rows[domain] for key in data})
        writer.tsv(f"phenotype/{name}.tsv", ["participant_id", "instance", *columns],
                   [[who, instance, *(data.get(c) for c in columns)]
                    for who, instance, data in rows[domain]])  # fmt: skip
        writer.json(
            f"phenotype/{name}.json", {"MeasurementToolMetadata": {"Description": description}}
        )


def _sessions(
    writer: _Writer,
    catalog: Catalog,
    features_dir: Path,
    person: ParticipantRecord,
    clips: list[ClipRecord],
    media: tuple[ClipStore, Sequence[X25519Identity]] | None,
    actor: str,
) -> None:
    by_visit: dict[str, list[ClipRecord]] = {}
    for clip in clips:
        by_visit.setdefault(clip.visit or "none", []).append(clip)
    for visit, visit_clips in sorted(by_visit.items()):
        folder = f"{_label(person.pseudonym)}/ses-{visit}"
        m = [c.manifest for c in visit_clips]
        writer.tsv(
            f"{folder}/clips.tsv",
            ["clip_id", "unit", "started_at", "duration_s", "stop_reason", "clock_synced"],
            [
                [
                    x.clip_id,
                    x.device_id,
                    x.started_at.isoformat(),
                    x.duration_s,
                    x.stop_reason,
                    x.clock_synced,
                ]
                for x in m
            ],
        )
        values: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        for clip in visit_clips:
            for record in catalog.features(clip.clip_id):
                if record.values:
                    values.setdefault(record.feature_set, []).append((clip.clip_id, record.values))
                if record.frames is not None:
                    writer.copy(
                        f"{folder}/{clip.clip_id}_{record.feature_set}.parquet",
                        features_dir / record.frames.path,
                        record.frames.sha256,
                    )
            if media is not None:
                writer.media(
                    f"{folder}/media/{clip.clip_id}.{_extension(clip)}", catalog, clip, media, actor
                )
        for feature_set, rows in sorted(values.items()):
            columns = sorted({name for _, row in rows for name in row})
            writer.tsv(
                f"{folder}/{feature_set}.tsv",
                ["clip_id", *columns],
                [[clip_id, *(row.get(c) for c in columns)] for clip_id, row in rows],
            )


class _Writer:
    """Files into the staging folder, each one's SHA-256 kept for the export's digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sums: dict[str, str] = {}
        self.written: list[str] = []

    def _put(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.sums[relative] = hashlib.sha256(data).hexdigest()
        self.written.append(relative)

    def tsv(self, relative: str, header: list[str], rows: Iterable[Sequence[object]]) -> None:
        text = io.StringIO()
        out = csv.writer(text, delimiter="\t", lineterminator="\n")
        out.writerow(header)
        out.writerows([_cell(value) for value in row] for row in rows)
        self._put(relative, text.getvalue().encode())

    def json(self, relative: str, value: object) -> None:
        self._put(relative, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def copy(self, relative: str, source: Path, sha256: str) -> None:
        data = source.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StudyError(f"{source}: not the feature table the catalog recorded (SHA-256)")
        self._put(relative, data)

    def media(
        self,
        relative: str,
        catalog: Catalog,
        clip: ClipRecord,
        media: tuple[ClipStore, Sequence[X25519Identity]],
        actor: str,
    ) -> None:
        store, identities = media
        catalog.audit_decrypt(clip.clip_id, worker=actor, purpose="export")  # no audit, no file
        with store.open(clip.sha256) as sealed, EnvelopeReader(sealed, list(identities)) as clear:
            plain = clear.read()
        # A finished file: remuxed (packets copied, not re-encoded) so that players see its
        # length and can seek, which the clip as written live does not allow.
        finished = io.BytesIO()
        try:
            remux(plain, finished)
        except MediaError:  # not media painav can read: kept as decrypted, still audited
            finished = io.BytesIO(plain)
        self._put(relative, finished.getvalue())

    def digest(self) -> str:
        lines = "".join(f"{self.sums[name]}  {name}\n" for name in sorted(self.sums))
        return hashlib.sha256(lines.encode()).hexdigest()


def _cell(value: object) -> str:
    """One TSV cell: ``n/a`` for nothing (as BIDS writes it), numbers in one fixed form."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _label(pseudonym: str) -> str:
    """The BIDS subject label: letters and digits only."""
    return "sub-" + pseudonym.replace("-", "")


def _extension(clip: ClipRecord) -> str:
    return "mkv" if clip.manifest.container == "matroska" else "mp4"


def _painav_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("painav")
    except PackageNotFoundError:
        return "unknown"
