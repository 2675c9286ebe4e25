"""Reading the study's EDC exports into rows: REDCap's flat CSV and Castor EDC's CSV ZIP.

Both become :class:`EdcRow`: the participant, which form the row is of and which instance of
it, and the values by field name. What the formats differ in is settled here:

- **REDCap** (comma-separated, one file): ``redcap_event_name`` (longitudinal projects),
  ``redcap_repeat_instrument`` and ``redcap_repeat_instance`` (repeating forms) name the
  instance; ``redcap_data_access_group`` is dropped; checkbox fields come expanded as
  ``field___code`` columns (``1``/``0``, or ``Checked``/``Unchecked`` in label exports) and
  are folded into one value, the ticked codes joined by ``,``.
- **Castor** (a ZIP of semicolon-separated files): the study data file (wide, one row per
  participant, starting ``Participant Id;Participant Status;Site Abbreviation``), one file per
  repeating data form (keyed by ``Participant Id`` and ``Report Name Custom``) and one per
  survey (``Survey Instance Id``, ``Castor Participant Id``); checkbox options come as
  ``field#option`` columns and are folded likewise. Castor replaced semicolons inside text by
  hyphens already: nothing to undo.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

__all__ = ["EdcError", "EdcExport", "EdcRow", "read_castor", "read_redcap"]

_REDCAP_META: Final = frozenset(
    {"redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance",
     "redcap_data_access_group", "redcap_survey_identifier"}
)  # fmt: skip
_CASTOR_STUDY: Final = ("Participant Id", "Participant Status", "Site Abbreviation")
_CASTOR_META: Final = frozenset(
    {"Participant Id", "Participant Status", "Site Abbreviation", "Randomization Id",
     "Randomization Group", "Randomized On", "Participant Creation date",
     "Report creation date", "Report Name Custom", "Report Parent", "Survey Instance Id",
     "Castor Participant Id", "Survey creation date", "Survey sent date", "Survey Progress",
     "Survey Completed On", "Survey Parent", "Survey Package Name", "Survey Package Id"}
)  # fmt: skip
_TICKED: Final = frozenset({"1", "checked"})
_MAX_BYTES: Final = 64 * 1024 * 1024


class EdcError(ValueError):
    """An export that cannot be read at all (not its format, no participant column)."""


@dataclass(frozen=True)
class EdcRow:
    """One row of an export: where it is (*file*, *line*), whose, of which form and instance."""

    file: str
    line: int
    participant: str
    form: str  # "" for the study's non-repeating data
    instance: str  # "" for non-repeating data
    values: dict[str, str]


@dataclass(frozen=True)
class EdcExport:
    """An export's rows and the fields its files have (checkbox columns folded)."""

    name: str
    rows: list[EdcRow]
    fields: frozenset[str]


def read_redcap(path: Path, participant_field: str) -> EdcExport:
    """The rows of a REDCap flat CSV export; *participant_field* holds the pseudonym."""
    text = _text(path.read_bytes(), path.name)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if participant_field not in header:
        raise EdcError(f"{path.name}: no column {participant_field!r} (the record id)")
    rows = []
    for line, raw in enumerate(reader, start=2):
        event = (raw.get("redcap_event_name") or "").strip()
        instrument = (raw.get("redcap_repeat_instrument") or "").strip()
        number = (raw.get("redcap_repeat_instance") or "").strip()
        values = _fold(
            {k: v for k, v in raw.items() if k not in _REDCAP_META and k is not None}, "___"
        )
        participant = values.pop(participant_field, "").strip()
        instance = "/".join(part for part in (event, instrument, number) if part)
        rows.append(EdcRow(path.name, line, participant, instrument, instance, values))
    return EdcExport(path.name, rows, _fields(header, "___"))


def read_castor(path: Path, participant_field: str = "Participant Id") -> EdcExport:
    """The rows of every data file in a Castor CSV export ZIP (study, repeating, surveys)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise EdcError(f"{path.name}: not a Castor export ZIP ({exc})") from None
    rows: list[EdcRow] = []
    fields: set[str] = set()
    with archive:
        found_study = False
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            name = PurePosixPath(info.filename)
            if info.is_dir() or name.suffix.lower() != ".csv":
                continue
            if info.file_size > _MAX_BYTES:
                raise EdcError(f"{path.name}: {name}: larger than {_MAX_BYTES >> 20} MiB")
            text = _text(archive.read(info), f"{path.name}:{name}")
            header = next(csv.reader(io.StringIO(text), delimiter=";"), [])
            fields |= _fields(header, "#")
            if tuple(header[:3]) == _CASTOR_STUDY:
                found_study = True
                rows.extend(_castor_rows(text, name.name, "", participant_field, None))
            elif "Report Name Custom" in header:
                rows.extend(_castor_rows(text, name.name, name.stem, participant_field,
                                         "Report Name Custom"))  # fmt: skip
            elif "Survey Instance Id" in header:
                rows.extend(_castor_rows(text, name.name, name.stem, "Castor Participant Id",
                                         "Survey Instance Id"))  # fmt: skip
        if not found_study:
            raise EdcError(f"{path.name}: no study data file (Participant Id;Participant Status;…)")
    return EdcExport(path.name, rows, frozenset(fields))


def _castor_rows(
    text: str, file: str, form: str, participant_field: str, instance_field: str | None
) -> Iterator[EdcRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=";")
    if participant_field not in (reader.fieldnames or []):
        raise EdcError(f"{file}: no column {participant_field!r}")
    for line, raw in enumerate(reader, start=2):
        instance = (raw.get(instance_field) or "").strip() if instance_field else ""
        participant = (raw.get(participant_field) or "").strip()
        values = _fold({k: v for k, v in raw.items() if k not in _CASTOR_META and k}, "#")
        yield EdcRow(file, line, participant, form, instance, values)


def _fold(raw: dict[str, str | None], separator: str) -> dict[str, str]:
    """Values by field, checkbox columns (``field<separator>code``) folded into one value:
    the ticked codes, sorted, joined by ``,``."""
    values: dict[str, str] = {}
    boxes: dict[str, list[str]] = {}
    for name, value in raw.items():
        text = (value or "").strip()
        field, sep, option = name.partition(separator)
        if sep and option:
            ticked = boxes.setdefault(field, [])
            if text.lower() in _TICKED:
                ticked.append(option)
        else:
            values[name] = text
    for field, ticked in boxes.items():
        values[field] = ",".join(sorted(ticked))
    return values


def _fields(header: Sequence[str], separator: str) -> frozenset[str]:
    return frozenset(name.partition(separator)[0] for name in header if name)


def _text(data: bytes, where: str) -> str:
    if len(data) > _MAX_BYTES:
        raise EdcError(f"{where}: larger than {_MAX_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8-sig")  # REDCap and Excel write a byte order mark
    except UnicodeDecodeError:
        raise EdcError(f"{where}: not UTF-8 text") from None
