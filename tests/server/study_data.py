"""Study data for the research tests: participants' clips stored, extracted (feature values, a
per-frame Parquet table, a quality check) in a real catalog, store and feature folder."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from protocol.envelope import EnvelopeWriter
from protocol.messages import ClipAnnouncement
from protocol.x25519 import X25519Identity
from server.catalog import Catalog, FrameFile, Provenance
from server.store import LocalStore
from tests.protocol.message_examples import MINISIGN, manifest

NOW = datetime.now(UTC)
PROVENANCE = Provenance(
    tool="opensmile", tool_version="2.6.0", config_hash="c" * 64, painav_version="0.3.0"
)


class StudySite:
    """A catalog with its store and feature folder, and a data key the clips are sealed to."""

    def __init__(self, catalog: Catalog, root: Path) -> None:
        self.catalog = catalog
        self.store = LocalStore(root / "store")
        self.features = root / "features"
        self.spool = root / "spool"
        self.spool.mkdir(exist_ok=True)
        self.identity = X25519Identity.generate()

    def enrol(self, pseudonym: str, group: str, *, visits: int = 1) -> None:
        day = NOW.date()
        self.catalog.enrol(pseudonym, group=group, language="nl", enrolled_on=day,
                           consented_on=day, form_version="v1")  # fmt: skip
        for number in range(1, visits + 1):
            self.catalog.open_visit(pseudonym, on=day)
            self.catalog.close_visit(pseudonym, number)

    def extracted_clip(
        self, clip_id: str, participant: str | None, marker: str, *, visit: str | None = "V1"
    ) -> str:
        """A clip of *participant* stored and extracted, with *marker* in its feature and
        metric names; its media is *marker*'s bytes, sealed. Returns the ciphertext's hash."""
        part = self.spool / clip_id
        with part.open("wb") as f, EnvelopeWriter(f, [self.identity.recipient]) as sealed:
            sealed.write(marker.encode() * 100)
        digest = hashlib.sha256(part.read_bytes()).hexdigest()
        size = part.stat().st_size
        key = self.store.put(digest, part, "untrusted comment: test\n", move=True)
        c = self.catalog
        c.record_announcement(
            ClipAnnouncement(
                manifest=manifest(
                    clip_id=clip_id,
                    participant=participant,
                    visit=visit,
                    sha256=digest,
                    size_bytes=size,
                ),
                signature=MINISIGN,
                url=f"https://cart-03.ward7.example:8443/v1/clips/{clip_id}.age",
            ),
            received_at=NOW,
        )
        assert c.claim_next(worker="rx", now=NOW, lease_s=60) is not None
        c.mark_stored(clip_id, store_key=key, stored_at=NOW, worker="rx")
        c.mark_receipted(clip_id, at=NOW)
        if participant is None:
            return digest
        assert c.claim_for_extraction(worker="x1", now=NOW, lease_s=60, max_attempts=3)
        table = pa.table({"t_s": [0.0, 0.01], f"{marker}_lld": [1.5, 2.5]})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        relative = f"{clip_id}/egemaps_lld.parquet"
        (self.features / clip_id).mkdir(parents=True)
        (self.features / relative).write_bytes(buffer.getvalue())
        frames = FrameFile(relative, hashlib.sha256(buffer.getvalue()).hexdigest(), 2)
        c.record_features(clip_id, worker="x1", feature_set="egemaps_lld", version="v02",
                          provenance=PROVENANCE, frames=frames, now=NOW)  # fmt: skip
        c.record_features(clip_id, worker="x1", feature_set="egemaps_functionals",
                          version="v02", provenance=PROVENANCE,
                          values={f"{marker}_F0": 1.25, "loudness": 0.5}, now=NOW)  # fmt: skip
        c.record_qc(clip_id, worker="x1", qc_pass="full", verdict="usable", reasons=(),
                    metrics={marker: 2.5}, config_hash="d" * 64, painav_version="0.3.0",
                    now=NOW)  # fmt: skip
        c.mark_extracted(clip_id, worker="x1", now=NOW)
        return digest
