"""The research export (SQLite and PostgreSQL): loads in pandas, folds never split a person
and balance the groups, only consented participants, the same bytes twice, media only when
asked (and audited), superseded by a withdrawal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from server.catalog import Catalog, StudyError
from server.research.export import export_dataset
from server.research.folds import assign_folds
from server.research.withdrawal import withdraw

from .study_data import StudySite


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[StudySite]:
    with Catalog(db_url, actor="datamanager") as catalog:
        study = StudySite(catalog, tmp_path)
        study.enrol("PAIN-0042", "pain", visits=2)
        study.enrol("PAIN-0043", "pain")
        study.enrol("PAIN-0044", "pain")
        study.enrol("CTRL-0001", "control")
        study.enrol("CTRL-0002", "control")
        study.enrol("PAIN-0099", "pain")
        for n, (who, visit) in enumerate(
            [
                ("PAIN-0042", "V1"),
                ("PAIN-0042", "V2"),
                ("PAIN-0042", "V2"),
                ("PAIN-0043", "V1"),
                ("CTRL-0001", "V1"),
                ("PAIN-0099", "V1"),
            ]
        ):
            study.extracted_clip(
                f"cart-03-20261129T09000{n}Z-ab1{n}", who, f"m{n}_{who[:4].lower()}", visit=visit
            )
        study.extracted_clip("cart-03-20261129T090009Z-ab19", None, "unarmed", visit=None)
        catalog.begin_withdrawal("PAIN-0099")  # the consent gate closes before the erasure
        yield study


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_export_loads_in_pandas_and_holds_only_consented_participants(
    site: StudySite, tmp_path: Path
) -> None:
    result = export_dataset(site.catalog, site.features, tmp_path / "export", folds=2)
    out = result.out
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert list(participants["pseudonym"]) == [
        "CTRL-0001", "CTRL-0002", "PAIN-0042", "PAIN-0043", "PAIN-0044"
    ]  # fmt: skip
    assert list(participants["participant_id"])[2] == "sub-PAIN0042"
    functionals = pd.read_csv(out / "sub-PAIN0042/ses-V2/egemaps_functionals.tsv", sep="\t")
    assert len(functionals) == 2 and "loudness" in functionals.columns
    lld = pq.read_table(
        out / "sub-PAIN0042/ses-V1/cart-03-20261129T090000Z-ab10_egemaps_lld.parquet"
    )
    assert lld.num_rows == 2
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert len(qc) == 5 and set(qc["verdict"]) == {"usable"}
    text = "\n".join(data.decode(errors="replace") for data in _files(out).values())
    assert "PAIN-0099" not in text and "PAIN0099" not in text and "unarmed" not in text
    assert not (out / "sub-PAIN0042/ses-V1/media").exists()  # features only by default
    assert result.clips == 5 and result.participants == 5
    [record] = site.catalog.exports()
    assert record.out == str(out) and record.superseded_at is None and not record.media
    assert "PAIN-0042" in record.participants


def test_folds_never_split_a_participant_and_balance_the_groups(
    site: StudySite, tmp_path: Path
) -> None:
    out = export_dataset(site.catalog, site.features, tmp_path / "export", folds=2).out
    folds = pd.read_csv(out / "folds.tsv", sep="\t")
    assert folds["participant_id"].is_unique and len(folds) == 5
    counts = folds.groupby(["group", "fold"]).size().unstack(fill_value=0)
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1  # each group spread evenly
    assert abs(int((folds["fold"] == 0).sum()) - int((folds["fold"] == 1).sum())) <= 1
    many = [(f"PAIN-{n:04d}", "pain") for n in range(37)] + [
        (f"CTRL-{n:04d}", "control") for n in range(23)
    ]
    dealt = assign_folds(many, k=5)
    assert dealt == assign_folds(reversed(many), k=5)  # the order given changes nothing
    sizes = [list(dealt.values()).count(k) for k in range(5)]
    assert max(sizes) - min(sizes) <= 1


def test_the_same_catalog_exports_the_same_bytes_and_never_overwrites(
    site: StudySite, tmp_path: Path
) -> None:
    first = _files(export_dataset(site.catalog, site.features, tmp_path / "a").out)
    second = _files(export_dataset(site.catalog, site.features, tmp_path / "b").out)
    description = "dataset_description.json"
    assert first.keys() == second.keys()
    assert {k: v for k, v in first.items() if k != description} == {
        k: v for k, v in second.items() if k != description
    }
    differing = [
        (a, b)
        for a, b in zip(
            first[description].splitlines(), second[description].splitlines(), strict=True
        )
        if a != b
    ]
    assert all(b"created_at" in a for a, _ in differing)
    with pytest.raises(StudyError, match="exists already"):
        export_dataset(site.catalog, site.features, tmp_path / "a")


def test_media_only_when_asked_and_each_decrypt_audited(site: StudySite, tmp_path: Path) -> None:
    result = export_dataset(
        site.catalog, site.features, tmp_path / "export", media=(site.store, [site.identity])
    )
    media = result.out / "sub-PAIN0043/ses-V1/media/cart-03-20261129T090003Z-ab13.mkv"
    assert media.read_bytes() == b"m3_pain" * 100
    decrypts = [e for e in site.catalog.audit.entries() if e.action == "decrypt"]
    assert len(decrypts) == 5 and all(e.detail["purpose"] == "export" for e in decrypts)
    assert site.catalog.exports()[0].media


def test_a_withdrawal_supersedes_the_exports_that_hold_the_participant(
    site: StudySite, tmp_path: Path
) -> None:
    export_dataset(site.catalog, site.features, tmp_path / "export")
    withdraw(site.catalog, site.store, site.features, "PAIN-0043")
    [record] = site.catalog.exports()
    assert record.superseded_at is not None
    later = export_dataset(site.catalog, site.features, tmp_path / "later")
    assert "PAIN-0043" not in site.catalog.exports()[-1].participants
    assert not (later.out / "sub-PAIN0043").exists()
