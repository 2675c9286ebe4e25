"""The mapping from an EDC export's fields to painav's clinical data, and its checks.

A mapping file (TOML) names the export's format and, for each kind of data, the form it is on
and its fields::

    format = "redcap"            # or "castor"
    participant = "record_id"    # the column with the pseudonym (Castor: "Participant Id")
    date_format = "%Y-%m-%d"     # default: REDCap %Y-%m-%d, Castor %d-%m-%Y

    [nrs]                        # the pain score, per visit: a repeating form or event
    form = "pain_score"          # REDCap repeat instrument, Castor repeating data file name
    score = "nrs_score"
    date = "nrs_date"

    [analgesics]                 # one row per analgesic
    form = "analgesics"
    name = "analgesic_name"
    route = "analgesic_route"
    ome_mg = "analgesic_ome"     # oral morphine equivalent, mg/day, when the export has it

    [tumour]                     # study data, one row per participant
    type = "tumour_type"
    status = "clinical_status"

    [questionnaire]              # a survey: its answers as given
    form = "pain_expression"
    items = ["mood", "pain_face", "pain_voice"]

:func:`clinical_rows` turns an export's rows into :class:`ClinicalRow` values and a list of
:class:`RowProblem` (file, line, field, reason): any problem, and nothing is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..catalog.clinical import ClinicalRow, Domain
from ..catalog.study_rules import pseudonym_problem
from .edc import EdcExport, EdcRow

__all__ = ["ClinicalRow", "Mapping", "RowProblem", "clinical_rows"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NrsMap(_Section):
    form: str = ""
    score: str
    date: str


class AnalgesicsMap(_Section):
    form: str = ""
    name: str
    route: str
    ome_mg: str | None = None


class TumourMap(_Section):
    type: str
    status: str | None = None


class QuestionnaireMap(_Section):
    form: str = ""
    items: list[str] = Field(min_length=1)


class Mapping(_Section):
    format: Literal["redcap", "castor"]
    participant: str = Field(min_length=1)
    date_format: str | None = None
    nrs: NrsMap | None = None
    analgesics: AnalgesicsMap | None = None
    tumour: TumourMap | None = None
    questionnaire: QuestionnaireMap | None = None

    @property
    def dates(self) -> str:
        return self.date_format or ("%Y-%m-%d" if self.format == "redcap" else "%d-%m-%Y")


@dataclass(frozen=True)
class RowProblem:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.line}: field {self.field!r}: {self.reason}"


class _Bad(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def clinical_rows(
    export: EdcExport, mapping: Mapping
) -> tuple[list[ClinicalRow], list[RowProblem]]:
    """What *export* holds of the mapped data, and every problem found (all rows checked)."""
    found: list[ClinicalRow] = []
    problems = [
        RowProblem(export.name, 1, name, "no such column in the export")
        for name in _mapped_fields(mapping)
        if name not in export.fields
    ]
    if problems:
        return found, problems
    for row in export.rows:
        try:
            found.extend(_row(row, mapping))
        except _Bad as bad:
            problems.append(RowProblem(row.file, row.line, bad.field, str(bad)))
    return found, problems


def _row(row: EdcRow, m: Mapping) -> list[ClinicalRow]:
    out: list[ClinicalRow] = []

    def add(domain: Domain, data: dict[str, Any]) -> None:
        problem = pseudonym_problem(row.participant)
        if problem:
            raise _Bad(m.participant, problem)
        out.append(ClinicalRow(row.participant, domain, row.instance, data, row.file, row.line))

    v = row.values
    if m.nrs and _on_form(row, m.nrs.form) and v.get(m.nrs.score):
        score = _number(v, m.nrs.score)
        if score != int(score) or not 0 <= score <= 10:
            raise _Bad(m.nrs.score, f"NRS {v[m.nrs.score]!r}: a whole number from 0 to 10")
        add("nrs", {"score": int(score), "date": _date(v, m.nrs.date, m.dates)})
    if m.analgesics and _on_form(row, m.analgesics.form) and v.get(m.analgesics.name):
        a = m.analgesics
        data: dict[str, Any] = {"name": _text(v, a.name, 64), "route": _text(v, a.route, 32)}
        if a.ome_mg and v.get(a.ome_mg):
            ome = _number(v, a.ome_mg)
            if ome < 0:
                raise _Bad(a.ome_mg, "oral morphine equivalent: not negative")
            data["ome_mg"] = ome
        add("analgesic", data)
    if m.tumour and not row.form and v.get(m.tumour.type):
        data = {"type": _text(v, m.tumour.type, 64)}
        if m.tumour.status:
            data["status"] = v.get(m.tumour.status, "") or None
        add("tumour", data)
    q = m.questionnaire
    if q and _on_form(row, q.form) and any(v.get(item) for item in q.items):
        add("questionnaire", {item: v.get(item) or None for item in q.items})
    return out


def _mapped_fields(m: Mapping) -> list[str]:
    fields: list[str | None] = []
    if m.nrs:
        fields += [m.nrs.score, m.nrs.date]
    if m.analgesics:
        fields += [m.analgesics.name, m.analgesics.route, m.analgesics.ome_mg]
    if m.tumour:
        fields += [m.tumour.type, m.tumour.status]
    if m.questionnaire:
        fields += m.questionnaire.items
    return [f for f in fields if f]


def _on_form(row: EdcRow, form: str) -> bool:
    """Whether *row* is of *form* ("" : any row whose fields hold the data, e.g. an event)."""
    return not form or row.form == form


def _number(values: dict[str, str], field: str) -> float:
    text = values.get(field, "").replace(",", ".")  # a Dutch decimal comma
    try:
        number = float(text)
    except ValueError:
        raise _Bad(field, f"{text[:20]!r} is not a number") from None
    if not math.isfinite(number):
        raise _Bad(field, f"{text[:20]!r} is not a number")
    return number


def _date(values: dict[str, str], field: str, fmt: str) -> str:
    text = values.get(field, "")
    if not text:
        raise _Bad(field, "missing: the date is required")
    try:
        return datetime.strptime(text, fmt).date().isoformat()
    except ValueError:
        raise _Bad(field, f"{text[:20]!r} is not a date ({fmt})") from None


def _text(values: dict[str, str], field: str, limit: int) -> str:
    text = values.get(field, "")
    if len(text) > limit:
        raise _Bad(field, f"longer than {limit} characters")
    return text
