"""The study's rules for participants, visits and consent, free of I/O: each check returns the
problem in one line, or None.

The study (NCT07262632) compares a pain group, recorded on several days, with controls,
recorded once. painav holds no name or hospital number: a participant is a pseudonym such as
``PAIN-0042``, and a pseudonym whose number reads as a date (a birth date typed by mistake) is
refused as well.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Final, Literal, get_args

from protocol.message_fields import PSEUDONYM_PATTERN

__all__ = [
    "FORM_VERSION_PATTERN",
    "Group",
    "Language",
    "consent_problem",
    "group_problem",
    "language_problem",
    "pseudonym_problem",
    "visit_label",
]

Group = Literal["pain", "control"]
Language = Literal["nl", "en"]

FORM_VERSION_PATTERN: Final = r"^[A-Za-z0-9._-]{1,32}$"
"""A consent form's version as the ethics committee approved it, e.g. ``v2.1`` or ``2026-03``."""

_PSEUDONYM: Final = re.compile(PSEUDONYM_PATTERN)


def pseudonym_problem(pseudonym: str) -> str | None:
    """Why *pseudonym* cannot be a participant's id: not of the study's form (2-6 capitals, a
    hyphen, 3-6 digits), or six digits that read as a date (ddmmyy, yymmdd, mmddyy)."""
    if not _PSEUDONYM.fullmatch(pseudonym):
        return (
            f"pseudonym {pseudonym[:40]!r}: must be 2-6 capital letters, '-' and 3-6 digits "
            "(e.g. PAIN-0042); painav holds no names or hospital numbers"
        )
    digits = pseudonym.split("-", 1)[1]
    if len(digits) == 6 and _reads_as_date(digits):
        return (
            f"pseudonym {pseudonym!r}: its number reads as a date; painav holds no birth dates "
            "or hospital numbers (number participants, e.g. PAIN-0042)"
        )
    return None


def _reads_as_date(six: str) -> bool:
    a, b, c = int(six[:2]), int(six[2:4]), int(six[4:])
    return any(
        1 <= month <= 12 and 1 <= day <= 31
        for day, month in ((a, b), (c, b), (b, a))  # ddmmyy, yymmdd, mmddyy
    )


def group_problem(group: str) -> str | None:
    if group not in get_args(Group):
        return f"group {group[:20]!r}: must be one of {', '.join(get_args(Group))}"
    return None


def language_problem(language: str) -> str | None:
    if language not in get_args(Language):
        return f"language {language[:20]!r}: must be nl (Dutch) or en (English)"
    return None


def consent_problem(form_version: str, consented_on: date, *, today: date) -> str | None:
    if not re.fullmatch(FORM_VERSION_PATTERN, form_version):
        return f"consent form version {form_version[:40]!r}: 1-32 of A-Z a-z 0-9 . _ -"
    if consented_on > today:
        return f"consent date {consented_on.isoformat()} is in the future"
    return None


def visit_label(number: int) -> str:
    """The visit label a clip carries (the arm command's ``visit``): ``V1``, ``V2``, …"""
    return f"V{number}"
