"""The hospital side on several processes: two receivers and two extraction workers, each a
``painav`` process, on one PostgreSQL catalog and a real SeaweedFS S3 store. One receiver is
SIGKILLed mid-fetch and one worker mid-extraction, and started again as systemd would; every
clip still ends stored once and extracted once."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from daemon.outbox import Outbox
from painav.scaleout import ServiceProcess
from protocol.envelope import EnvelopeReader
from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
    WorkSection,
)
from provisioning.broker import sync_revocation
from provisioning.config_files import toml_text
from provisioning.receivers import add_receiver, receiver_config
from provisioning.site import Site
from server.audit import verify
from server.catalog import Catalog, ClipState
from server.catalog.records import ClipRecord
from tests.server.conftest import enrolled
from tests.server.extract.clips import speak, synthetic_clip, wav_samples
from tests.server.test_receiver_faults import (
    SLOW_HOST,
    MakeClient,
    ThrottledProxy,
    kick,
    unit_clip_server,
    wait_for,
)
from tests.support.mosquitto import HOST, Broker
from tests.support.seaweedfs import Bucket
from tests.support.unit import announcement_of, seal_synthetic_clip

UNITS = ("cart-01", "cart-02")
CLIPS_PER_UNIT = 3
RATE = 100_000  # bytes a second through each unit's proxy: a ~300 kB clip takes seconds
PARTICIPANT = "PAIN-0042"


def media(tmp_path: Path) -> bytes:
    """The plaintext of a 3 s clip the unit's clip writer made: H.264 and speech."""
    pcm = wav_samples(speak(tmp_path, 48_000)).tobytes()
    made = synthetic_clip(tmp_path / "made.age", pcm, seconds=3.0)
    with made.path.open("rb") as src, EnvelopeReader(src, [made.identity]) as reader:
        plaintext: bytes = reader.read()
    made.path.unlink()
    return plaintext


def held(catalog: Catalog, state: ClipState) -> Callable[[], ClipRecord | None]:
    """A clip in *state* under someone's lease, if there is one now."""

    def find() -> ClipRecord | None:
        return next((c for c in catalog.clips(state=state) if c.lease_owner), None)

    return find


def owner(clip: ClipRecord) -> str:
    """Whose lease: a receiver's or a worker's id, without the host."""
    assert clip.lease_owner is not None
    return clip.lease_owner.split("@")[0]


def receiver_toml(
    site: Site, broker: Broker, work: Path, rid: str, url: str, bucket: Bucket
) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    text = receiver_config(
        site,
        catalog_url=url,
        store_dir=bucket.location(),
        spool_dir=work / "spool",
        broker_host=HOST,
        broker_port=broker.port,
        receiver_id=rid,
    )
    # A killed receiver's lease lapses in 5 s: then either receiver takes its clip over.
    config = work / "receiver.toml"
    config.write_text(text.replace("[pull]\n", "[pull]\nlease_s = 5.0\nretry_max_s = 2.0\n", 1))
    return config


def test_a_receiver_and_a_worker_killed_mid_work_change_nothing(
    broker_site: Site,
    broker: Broker,
    make_client: MakeClient,
    postgres_url: str,
    seaweedfs: Bucket,
    tmp_path: Path,
) -> None:
    site = broker_site
    second = add_receiver(site, "2")
    sync_revocation(site, broker.out)  # the broker's ACL gains the second receiver
    broker.reload()
    with Catalog(postgres_url) as catalog:
        enrolled(catalog, PARTICIPANT)  # the consent gate: only then are clips extracted
    plaintext = media(tmp_path)
    servers, proxies, announcements = [], [], []
    outboxes = []
    for unit in UNITS:
        outbox = Outbox(tmp_path / unit / "outbox", quota_bytes=1 << 30, min_free_bytes=0)
        outboxes.append(outbox)
        entries = [
            seal_synthetic_clip(
                outbox, site, unit, f"{unit}-20261129T120000Z-{n:04x}", 0,
                plaintext=plaintext, participant=PARTICIPANT, visit="baseline",
            )
            for n in range(CLIPS_PER_UNIT)
        ]  # fmt: skip
        server = unit_clip_server(site, unit, outbox)
        servers.append(server)
        proxies.append(ThrottledProxy((SLOW_HOST, server.port), (HOST, server.port), RATE))
        announcements.append([announcement_of(e, SLOW_HOST, server.port) for e in entries])
    total = len(UNITS) * CLIPS_PER_UNIT
    receivers = {
        rid: ServiceProcess.receiver(
            receiver_toml(site, broker, tmp_path / rid, rid, postgres_url, seaweedfs),
            tmp_path / rid / "receiver.log",
        )
        for rid in (site.receiver_id, second)
    }
    extract_toml = tmp_path / "extract.toml"
    extract_toml.write_text(
        toml_text(
            ExtractConfig(
                site=SiteSection(site_id=site.name),
                catalog=CatalogSection(url=postgres_url),
                store=StoreSection(**seaweedfs.location().model_dump(exclude_unset=True)),
                keys=KeysSection(data_key=site.paths.data_key),
                features=FeaturesSection(dir=tmp_path / "features"),
                # A killed worker's lease lapses in 10 s: then either worker takes its clip.
                work=WorkSection(lease_s=10, idle_poll_s=0.2, retry_s=1),
            )
        )
    )
    workers = [
        ServiceProcess.worker(extract_toml, n, tmp_path / f"extract-{n}.log") for n in (1, 2)
    ]
    catalog = Catalog(postgres_url)
    try:
        for process in [*receivers.values(), *workers]:
            process.start()
        for unit, published in zip(UNITS, announcements, strict=True):
            kick(make_client, site, unit, *published)

        # A receiver killed while it downloads a clip (its partial file in its spool).
        fetching = wait_for(held(catalog, ClipState.FETCHING), "a fetch", 30)
        victim = owner(fetching)
        wait_for(lambda: any((tmp_path / victim / "spool").rglob("*.part")), "a partial file")
        receivers[victim].kill()
        left = catalog.clip(fetching.clip_id)
        assert left.state is ClipState.FETCHING and left.lease_owner == fetching.lease_owner
        # systemd starts it again (Restart=on-failure): Mosquitto keeps what was sent to its
        # session (announcements it had not acknowledged) for it alone, not for the group.
        time.sleep(2)
        receivers[victim].start()

        # A worker killed while it extracts a clip (its decrypt audited, its lease held). A
        # kill that lands just after the clip was done is no test: then again, restarted.
        for _ in range(5):
            extracting = wait_for(held(catalog, ClipState.EXTRACTING), "an extraction", 90)
            killed = 0 if owner(extracting) == "extract-1" else 1
            workers[killed].kill()
            left = catalog.clip(extracting.clip_id)
            workers[killed].start()  # as systemd does
            if left.state is ClipState.EXTRACTING and left.lease_owner == extracting.lease_owner:
                break
        else:
            raise AssertionError("never killed a worker mid-extraction")

        def all_extracted() -> bool:
            clips = catalog.clips()
            return len(clips) == total and all(c.state is ClipState.EXTRACTED for c in clips)

        wait_for(all_extracted, "every clip extracted", 150)
    finally:
        for process in [*receivers.values(), *workers]:
            process.stop()
        for proxy in proxies:
            proxy.close()
        for server in servers:
            server.stop()
        for outbox in outboxes:
            outbox.close()
        for c in catalog.clips():  # shown if the test fails
            print(c.clip_id, c.state, c.lease_owner, c.lease_expires_at, c.attempts, c.last_error)
        for process in [*receivers.values(), *workers]:
            print(f"--- {process.log} ---\n{process.text()[-3000:]}")

    clips = catalog.clips()
    announced = {a.manifest.clip_id: a.manifest.sha256 for unit in announcements for a in unit}
    assert {c.clip_id: c.sha256 for c in clips} == announced
    # Stored once: one "stored" audit row a clip, the killed fetch's included.
    for clip in clips:
        rows = [e for e in catalog.audit.entries(clip_id=clip.clip_id) if e.action == "stored"]
        assert len(rows) == 1, (clip.clip_id, rows)
    # Extracted once: one "extracted" row and each feature set recorded once a clip.
    for clip in clips:
        rows = [e for e in catalog.audit.entries(clip_id=clip.clip_id) if e.action == "extracted"]
        assert len(rows) == 1, (clip.clip_id, rows)
        sets = [f.feature_set for f in catalog.features(clip.clip_id)]
        assert sets and len(sets) == len(set(sets)), (clip.clip_id, sets)
    # The store: each clip once under its hash, whole, with its signature; no upload left over.
    store = seaweedfs.store()
    assert len(seaweedfs.object_keys()) == 2 * total
    for sha256 in announced.values():
        with store.open(sha256) as stored:
            assert hashlib.sha256(stored.read()).hexdigest() == sha256
        assert store.signature(sha256).startswith("untrusted comment:")
    assert not store.client.list_multipart_uploads(Bucket=seaweedfs.name).get("Uploads")
    assert verify(postgres_url).ok  # the audit chain is whole
    catalog.close()
