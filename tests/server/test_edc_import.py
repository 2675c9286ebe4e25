"""Clinical data from the study's EDC (SQLite and PostgreSQL): REDCap and Castor exports
through a mapping file; every bad row reported and nothing imported; the same file again
changes nothing; a changed value updated and audited; the data in the export's phenotype/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pytest

from server.catalog import Catalog
from server.catalog.clinical import ImportRefusedError
from server.research.export import export_dataset
from server.research.importer import import_edc

from .edc_files import (
    CASTOR_MAPPING,
    REDCAP_HEADER,
    REDCAP_MAPPING,
    REDCAP_ROWS,
    castor_zip,
    redcap_csv,
)
from .study_data import StudySite


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[StudySite]:
    with Catalog(db_url, actor="datamanager") as catalog:
        study = StudySite(catalog, tmp_path)
        study.enrol("PAIN-0042", "pain", visits=2)
        study.enrol("CTRL-0001", "control")
        yield study


def _mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    return path


def test_a_redcap_export_imports_once(site: StudySite, tmp_path: Path) -> None:
    export, mapping = redcap_csv(tmp_path / "redcap.csv"), _mapping(tmp_path, REDCAP_MAPPING)
    report = import_edc(site.catalog, export, mapping)
    assert (report.new, report.updated, report.unchanged) == (9, 0, 0)
    rows = site.catalog.clinical("PAIN-0042")
    assert ("nrs", "day_1_arm_1", {"score": 7, "date": "2026-11-20"}) in rows
    assert ("analgesic", "day_1_arm_1/analgesics/1",
            {"name": "oxycodone", "route": "oral", "ome_mg": 30.0}) in rows  # fmt: skip
    assert ("questionnaire", "day_1_arm_1", {"mood": "3", "pain_face": "1,3"}) in rows
    assert ("tumour", "baseline_arm_1", {"type": "lung", "status": "admitted"}) in rows
    assert all(r[0] != "nrs" or r[1] != "baseline_arm_1" for r in rows)
    again = import_edc(site.catalog, export, mapping)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 9)

    changed = [row.replace(",7,2026-11-20", ",8,2026-11-20") for row in REDCAP_ROWS]
    report = import_edc(site.catalog, redcap_csv(tmp_path / "redcap-2.csv", changed), mapping)
    assert (report.new, report.updated) == (0, 1)
    [update] = [e for e in site.catalog.audit.entries() if e.action == "clinical_updated"]
    assert update.detail == {"pseudonym": "PAIN-0042", "domain": "nrs",
                             "instance": "day_1_arm_1", "fields": ["score"]}  # fmt: skip
    imports = [e for e in site.catalog.audit.entries() if e.action == "clinical_import"]
    assert len(imports) == 3 and imports[0].detail["source"].startswith("redcap.csv sha256:")


def test_every_bad_row_is_reported_and_nothing_is_imported(site: StudySite, tmp_path: Path) -> None:
    rows = [
        *REDCAP_ROWS,
        "PAIN-0042,day_3_arm_1,,,ward7,,,11,2026-11-22,,,,,,,",
        "PAIN-0042,day_4_arm_1,,,ward7,,,4,2026-13-01,,,,,,,",
        "PAIN-0077,day_1_arm_1,,,ward7,,,4,2026-11-22,,,,,,,",
        "PAT-140385,day_1_arm_1,,,ward7,,,4,2026-11-22,,,,,,,",
        "PAIN-0042,day_1_arm_1,analgesics,3,ward7,,,,,morphine,oral,-5,,,,",
    ]
    before = site.catalog.audit.head()
    with pytest.raises(ImportRefusedError) as refused:
        import_edc(site.catalog, redcap_csv(tmp_path / "bad.csv", rows),
                   _mapping(tmp_path, REDCAP_MAPPING))  # fmt: skip
    problems = refused.value.problems
    assert len(problems) == 5
    assert "bad.csv: row 8: field 'nrs_score': NRS '11'" in problems[0]
    assert "row 9: field 'nrs_date': '2026-13-01' is not a date" in problems[1]
    assert "bad.csv: row 10: participant PAIN-0077 is not enrolled" in problems[2]
    assert "row 11: field 'record_id': pseudonym 'PAT-140385'" in problems[3]
    assert "row 12: field 'analgesic_ome'" in problems[4]
    assert site.catalog.clinical("PAIN-0042") == [] and site.catalog.audit.head() == before


def test_a_mapped_field_missing_from_the_export_is_one_line(
    site: StudySite, tmp_path: Path
) -> None:
    export = tmp_path / "redcap.csv"
    export.write_text(REDCAP_HEADER.replace("nrs_date", "nrs_day") + "\n")
    with pytest.raises(ImportRefusedError, match="field 'nrs_date': no such column"):
        import_edc(site.catalog, export, _mapping(tmp_path, REDCAP_MAPPING))


def test_a_castor_export_imports_once_and_reaches_the_dataset(
    site: StudySite, tmp_path: Path
) -> None:
    mapping = _mapping(tmp_path, CASTOR_MAPPING)
    report = import_edc(site.catalog, castor_zip(tmp_path / "castor.zip"), mapping)
    assert (report.new, report.updated) == (7, 0)
    rows = site.catalog.clinical("PAIN-0042")
    assert ("nrs", "Pain score - 1", {"score": 7, "date": "2026-11-20"}) in rows
    assert ("analgesic", "Analgesic - 1",
            {"name": "oxycodone - slow release", "route": "oral"}) in rows  # fmt: skip
    assert ("questionnaire", "S-17", {"mood": "3", "pain_face": "1"}) in rows
    again = import_edc(site.catalog, castor_zip(tmp_path / "castor-2.zip", nrs_first="6"), mapping)
    assert (again.new, again.updated, again.unchanged) == (0, 1, 6)

    out = export_dataset(site.catalog, site.features, tmp_path / "dataset").out
    nrs = pd.read_csv(out / "phenotype/nrs.tsv", sep="\t")
    assert list(nrs.columns) == ["participant_id", "instance", "date", "score"]
    assert sorted(nrs["score"]) == [0, 5, 6]
    tumour = pd.read_csv(out / "phenotype/tumour.tsv", sep="\t")
    assert set(tumour["status"]) == {"admitted", "chemotherapy - cycle 2"}
