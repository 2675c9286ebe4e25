"""Generated EDC exports for the import tests: a REDCap flat CSV (longitudinal, a repeating
form, checkboxes, a data-access-group column) and a Castor EDC CSV ZIP (study data, repeating
data, a survey; DD-MM-YYYY dates; checkbox options as columns). No real patient data."""

from __future__ import annotations

import zipfile
from pathlib import Path

REDCAP_HEADER = (
    "record_id,redcap_event_name,redcap_repeat_instrument,redcap_repeat_instance,"
    "redcap_data_access_group,tumour_type,clinical_status,nrs_score,nrs_date,analgesic_name,"
    "analgesic_route,analgesic_ome,mood,pain_face___1,pain_face___2,pain_face___3"
)
REDCAP_ROWS = [
    "PAIN-0042,baseline_arm_1,,,ward7,lung,admitted,,,,,,,,,",
    "PAIN-0042,day_1_arm_1,,,ward7,,,7,2026-11-20,,,,3,1,0,1",
    "PAIN-0042,day_1_arm_1,analgesics,1,ward7,,,,,oxycodone,oral,30,,,,",
    "PAIN-0042,day_1_arm_1,analgesics,2,ward7,,,,,paracetamol,oral,,,,,",
    "PAIN-0042,day_2_arm_1,,,ward7,,,5,2026-11-21,,,,,,,",
    "CTRL-0001,baseline_arm_1,,,ward7,breast,chemotherapy,0,2026-11-20,,,,2,0,0,0",
]

REDCAP_MAPPING = """\
format = "redcap"
participant = "record_id"

[nrs]
score = "nrs_score"
date = "nrs_date"

[analgesics]
form = "analgesics"
name = "analgesic_name"
route = "analgesic_route"
ome_mg = "analgesic_ome"

[tumour]
type = "tumour_type"
status = "clinical_status"

[questionnaire]
items = ["mood", "pain_face"]
"""

CASTOR_MAPPING = """\
format = "castor"
participant = "Participant Id"

[nrs]
form = "Pain_score"
score = "nrs_score"
date = "nrs_date"

[analgesics]
form = "Analgesics"
name = "analgesic_name"
route = "analgesic_route"

[tumour]
type = "tumour_type"
status = "clinical_status"

[questionnaire]
form = "Pain_expression"
items = ["mood", "pain_face"]
"""


def redcap_csv(path: Path, rows: list[str] | None = None) -> Path:
    path.write_text("\n".join([REDCAP_HEADER, *(REDCAP_ROWS if rows is None else rows)]) + "\n")
    return path


def castor_zip(path: Path, *, nrs_first: str = "7") -> Path:
    files = {
        "Study_export.csv": [
            "Participant Id;Participant Status;Site Abbreviation;Participant Creation date;"
            "tumour_type;clinical_status",
            "PAIN-0042;Enrolled;W7;20-11-2026;lung;admitted",
            "CTRL-0001;Enrolled;W7;20-11-2026;breast;chemotherapy - cycle 2",
        ],
        "Pain_score.csv": [
            "Participant Id;Participant Status;Report creation date;Report Name Custom;"
            "Report Parent;nrs_score;nrs_date",
            f"PAIN-0042;Enrolled;20-11-2026;Pain score - 1;Day 1;{nrs_first};20-11-2026",
            "PAIN-0042;Enrolled;21-11-2026;Pain score - 2;Day 2;5;21-11-2026",
            "CTRL-0001;Enrolled;20-11-2026;Pain score - 1;Day 1;0;20-11-2026",
        ],
        "Analgesics.csv": [
            "Participant Id;Participant Status;Report creation date;Report Name Custom;"
            "Report Parent;analgesic_name;analgesic_route",
            "PAIN-0042;Enrolled;20-11-2026;Analgesic - 1;Day 1;oxycodone - slow release;oral",
        ],
        "Pain_expression.csv": [
            "Survey Instance Id;Castor Participant Id;Survey creation date;Survey sent date;"
            "Survey Progress;Survey Completed On;Survey Parent;Survey Package Name;"
            "Survey Package Id;mood;pain_face#1;pain_face#2",
            "S-17;PAIN-0042;20-11-2026;20-11-2026;100;20-11-2026;Day 1;Day 1;P-1;3;1;0",
        ],
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, lines in files.items():
            archive.writestr(name, "\n".join(lines) + "\n")
    return path
