"""Importing the study's EDC export into the catalog, through a mapping file: read, map, check
every row, then import in one transaction or not at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

from protocol.tomlconfig import load_toml

from ..catalog import Catalog
from ..catalog.clinical import ImportRefusedError, ImportReport
from .edc import read_castor, read_redcap
from .mapping import Mapping, clinical_rows

__all__ = ["import_edc"]


def import_edc(catalog: Catalog, export: Path, mapping_file: Path) -> ImportReport:
    """Import *export* (REDCap CSV or Castor ZIP, as *mapping_file* says). Every bad row is
    reported (:class:`ImportRefusedError`: file, row, field, reason) and then nothing is
    imported; the same export again changes nothing."""
    mapping = load_toml(mapping_file, Mapping)
    if mapping.format == "redcap":
        edc = read_redcap(export, mapping.participant)
    else:
        edc = read_castor(export, mapping.participant)
    found, problems = clinical_rows(edc, mapping)
    # Every problem at once, in file order: the rows the mapping refuses and those the catalog
    # would (participants not enrolled or withdrawn).
    every = [(p.file, p.line, str(p)) for p in problems]
    every += catalog.clinical_problems(found)
    if every:
        raise ImportRefusedError([text for *_, text in sorted(every)])
    digest = hashlib.sha256(export.read_bytes()).hexdigest()
    return catalog.import_clinical(found, source=f"{export.name} sha256:{digest}")
