"""Clip verification on real clips of a provisioned site: each refusal from a real bad file."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.envelope import EnvelopeReader, EnvelopeWriter
from protocol.errors import NoIdentityMatchError
from protocol.format import INTRO, Stanza, b64encode, parse_header
from protocol.minisign import SigningKey
from protocol.registry import Registry
from protocol.signing import sign_clip
from protocol.x25519 import X25519Identity
from provisioning.devices import add_device, revoke_device
from provisioning.site import Site, init_site
from server.verify import Reason, Verdict, verify_clip_file

UNIT = "cart-01"
OTHER = "cart-02"
RETIRED = "cart-09"
CHUNK = 64 * 1024
SEALED_CHUNK = CHUNK + 16


@dataclass(frozen=True)
class Ward:
    """A provisioned site with two active units and a revoked one, and its data key."""

    site: Site
    data_key: str
    data_identity: X25519Identity

    def signing_key(self, device_id: str) -> SigningKey:
        return SigningKey.from_file(
            self.site.paths.devices_dir / device_id / "keys" / "signing.key"
        )

    def registry(self) -> Registry:
        return Registry.load(self.site.paths.registry)


def make_ward(base: Path) -> Ward:
    site = init_site(base / "site", "ward7")
    for device in (UNIT, OTHER, RETIRED):
        add_device(site, device)
    revoke_device(site, RETIRED)
    secret = [
        line
        for line in site.paths.data_key.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    identity = X25519Identity.from_string(secret[0])
    return Ward(site, str(identity.recipient), identity)


def write_clip(path: Path, recipients: list[str], plaintext_bytes: int = 200_000) -> None:
    """A real clip: random media bytes encrypted by the unit's envelope writer."""
    with open(path, "wb") as file, EnvelopeWriter(file, recipients) as writer:
        writer.write(os.urandom(plaintext_bytes))


def sign(ward: Ward, path: Path, clip_id: str, device_id: str = UNIT, *, key_of: str = UNIT) -> str:
    signature, _ = sign_clip(ward.signing_key(key_of), path, clip_id, device_id)
    return signature.to_text()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Ward:
    return make_ward(tmp_path_factory.mktemp("ward"))


@dataclass
class Clip:
    """A clip as announced: the file, its signature and what the announcement says."""

    path: Path
    clip_id: str
    signature: str
    sha256: str
    recipients: list[str]

    def verify(self, ward: Ward, **changes: object) -> Verdict:
        arguments: dict[str, object] = {
            "device_id": UNIT,
            "clip_id": self.clip_id,
            "announced_sha256": self.sha256,
            "signature_text": self.signature,
            "clip_file": self.path,
            "data_key_recipient": ward.data_key,
            "manifest_recipients": self.recipients,
            "participant": None,
            "visit": None,
        }
        arguments.update(changes)
        return verify_clip_file(ward.registry(), **arguments)  # type: ignore[arg-type]


def make_clip(
    ward: Ward, folder: Path, clip_id: str = "cart-01-20250301T093000Z-0001", **options: int
) -> Clip:
    path = folder / f"{clip_id}.age"
    write_clip(path, [ward.data_key], **options)
    return Clip(path, clip_id, sign(ward, path, clip_id), sha256_of(path), [ward.data_key])


def resign(ward: Ward, clip: Clip) -> None:
    """After an edit, the unit signs and announces the edited file: only the content is bad."""
    clip.signature = sign(ward, clip.path, clip.clip_id)
    clip.sha256 = sha256_of(clip.path)


def header_length(path: Path) -> int:
    with open(path, "rb") as file:
        parse_header(file.readline)
        return file.tell()


def replace_header(path: Path, stanzas: list[Stanza]) -> None:
    """Rewrite the clip's header with *stanzas* (its MAC goes stale, which no one here sees)."""
    data = path.read_bytes()
    with open(path, "rb") as file:
        header = parse_header(file.readline)
        rest = data[file.tell() :]
    header.stanzas = stanzas
    path.write_bytes(header.encode() + rest)


def test_a_genuine_clip_is_accepted(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    verdict = clip.verify(ward)
    assert verdict.ok and verdict.reason is None
    assert verdict.binding is not None
    assert (verdict.binding.clip_id, verdict.binding.device_id) == (clip.clip_id, UNIT)
    assert verdict.binding.sha256 == clip.sha256
    # The data key given with spaces around it, as read from a file, is the same key.
    assert clip.verify(ward, data_key_recipient=f" {ward.data_key}\n").ok


def test_unknown_and_revoked_units(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    unknown = clip.verify(ward, device_id="cart-77")
    assert (unknown.ok, unknown.reason) == (False, Reason.UNKNOWN_UNIT)
    assert "cart-77" in unknown.detail
    # A revoked unit's clip is refused before its signature is even looked at.
    signature = sign(ward, clip.path, clip.clip_id, RETIRED, key_of=UNIT)
    revoked = clip.verify(ward, device_id=RETIRED, signature_text=signature)
    assert (revoked.ok, revoked.reason) == (False, Reason.REVOKED_UNIT)
    assert "revoked" in revoked.detail


def flip_bit(offset: int):
    def tamper(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))

    return tamper


def truncate_to(size_of: str):
    def tamper(path: Path) -> None:
        start = header_length(path) + 16  # the 16-byte payload nonce follows the header
        size = {
            "at a sealed-chunk boundary": start + 2 * SEALED_CHUNK,
            "at a 64 KiB file offset": 2 * CHUNK,
            "one byte off a boundary": start + 2 * SEALED_CHUNK - 1,
            "by the last byte": path.stat().st_size - 1,
        }[size_of]
        with open(path, "r+b") as file:
            file.truncate(size)

    return tamper


@pytest.mark.parametrize(
    "tamper",
    [
        flip_bit(30),  # in the header's stanza line
        flip_bit(150_000),  # inside the payload
        flip_bit(-1),  # the last chunk's tag
        truncate_to("at a sealed-chunk boundary"),
        truncate_to("at a 64 KiB file offset"),
        truncate_to("one byte off a boundary"),
        truncate_to("by the last byte"),
    ],
    ids=[
        "flip-header",
        "flip-payload",
        "flip-last-byte",
        "truncate-chunk-boundary",
        "truncate-64k",
        "truncate-off-boundary",
        "truncate-last-byte",
    ],
)
def test_any_change_to_the_file_fails_the_signature(ward: Ward, tmp_path: Path, tamper) -> None:
    clip = make_clip(ward, tmp_path)
    tamper(clip.path)
    verdict = clip.verify(ward)
    assert (verdict.ok, verdict.reason) == (False, Reason.BAD_SIGNATURE)
    assert "\n" not in verdict.detail


def test_signatures_that_are_not_this_units(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    # cart-02's key, claiming to be cart-01's clip: the key id names cart-02.
    forged = sign(ward, clip.path, clip.clip_id, UNIT, key_of=OTHER)
    verdict = clip.verify(ward, signature_text=forged)
    assert (verdict.ok, verdict.reason) == (False, Reason.BAD_SIGNATURE)
    garbage = clip.verify(ward, signature_text="not a minisign signature\n")
    assert (garbage.ok, garbage.reason) == (False, Reason.BAD_SIGNATURE)
    # An altered trusted comment breaks the global signature.
    altered = clip.signature.replace(f"clip:{clip.clip_id}", "clip:cart-01-20250301T093000Z-0002")
    verdict = clip.verify(ward, signature_text=altered, clip_id="cart-01-20250301T093000Z-0002")
    assert (verdict.ok, verdict.reason) == (False, Reason.BAD_SIGNATURE)


def test_a_valid_signature_for_another_clip_or_unit(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    # cart-01 really signed these bytes, but as another clip: announcing it as this one fails.
    other_clip = sign(ward, clip.path, "cart-01-20250301T093000Z-0002")
    verdict = clip.verify(ward, signature_text=other_clip)
    assert (verdict.ok, verdict.reason) == (False, Reason.WRONG_BINDING)
    assert "cart-01-20250301T093000Z-0002" in verdict.detail
    # cart-01's key, but the comment says cart-02 made it.
    other_unit = sign(ward, clip.path, clip.clip_id, OTHER, key_of=UNIT)
    verdict = clip.verify(ward, signature_text=other_unit)
    assert (verdict.ok, verdict.reason) == (False, Reason.WRONG_BINDING)


def test_a_manifest_relabelled_after_signing(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    signed, _ = sign_clip(
        ward.signing_key(UNIT), clip.path, clip.clip_id, UNIT, participant="PAIN-0042", visit="V1"
    )
    text = signed.to_text()
    assert clip.verify(ward, signature_text=text, participant="PAIN-0042", visit="V1").ok
    for participant, visit in [("PAIN-0043", "V1"), (None, "V1"), ("PAIN-0042", "V2")]:
        verdict = clip.verify(ward, signature_text=text, participant=participant, visit=visit)
        assert (verdict.ok, verdict.reason) == (False, Reason.RELABELLED)
        assert "not the one the unit signed" in verdict.detail and "PAIN" not in verdict.detail
    # Signed unarmed, announced as a participant's: relabelled too.
    verdict = clip.verify(ward, participant="PAIN-0042")
    assert (verdict.ok, verdict.reason) == (False, Reason.RELABELLED)


def test_a_form_1_signature_of_a_unit_not_yet_upgraded_is_accepted_with_a_warning(
    ward: Ward, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = make_clip(ward, tmp_path)
    form_1 = f"painav-clip/1 clip:{clip.clip_id} device:{UNIT} sha256:{clip.sha256} timestamp:7"
    legacy = ward.signing_key(UNIT).sign(clip.path.read_bytes(), form_1).to_text()
    with caplog.at_level(logging.WARNING, logger="server.verify"):
        verdict = clip.verify(ward, signature_text=legacy, participant="PAIN-0042", visit="V1")
    assert verdict.ok and verdict.binding is not None and verdict.binding.version == 1
    assert f"clip {clip.clip_id} from {UNIT}: signed in the painav-clip/1 form" in caplog.text
    caplog.clear()
    assert clip.verify(ward).ok and caplog.text == ""  # form 2: nothing to warn about


def test_a_reannounced_different_hash(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    second = make_clip(ward, tmp_path, "cart-01-20250301T093000Z-0002")
    # The signature and file agree; the announcement names another clip's hash.
    verdict = clip.verify(ward, announced_sha256=second.sha256)
    assert (verdict.ok, verdict.reason) == (False, Reason.HASH_MISMATCH)
    assert second.sha256 in verdict.detail and clip.sha256 in verdict.detail


def test_a_signed_file_with_a_bad_header(ward: Ward, tmp_path: Path) -> None:
    clip = make_clip(ward, tmp_path)
    data = clip.path.read_bytes()
    clip.path.write_bytes(b"age-encryption.org/v2\n" + data[len(INTRO) :])
    resign(ward, clip)
    verdict = clip.verify(ward)
    assert (verdict.ok, verdict.reason) == (False, Reason.BAD_HEADER)
    assert "v2" in verdict.detail

    clip = make_clip(ward, tmp_path, "cart-01-20250301T093000Z-0002")
    with open(clip.path, "rb") as file:
        stanza = parse_header(file.readline).stanzas[0]
    short_share = Stanza("X25519", [b64encode(bytes(16))], stanza.body)
    replace_header(clip.path, [short_share])
    resign(ward, clip)
    verdict = clip.verify(ward)
    assert (verdict.ok, verdict.reason) == (False, Reason.BAD_HEADER)


def test_a_clip_whose_manifest_omits_the_data_key(ward: Ward, tmp_path: Path) -> None:
    stranger = str(X25519Identity.generate().recipient)
    path = tmp_path / "cart-01-20250301T093000Z-0001.age"
    write_clip(path, [stranger])
    clip = Clip(
        path,
        "cart-01-20250301T093000Z-0001",
        sign(ward, path, "cart-01-20250301T093000Z-0001"),
        sha256_of(path),
        [stranger],
    )
    verdict = clip.verify(ward)
    assert (verdict.ok, verdict.reason) == (False, Reason.NOT_FOR_DATA_KEY)
    assert ward.data_key in verdict.detail


def test_stanzas_that_disagree_with_the_manifest(ward: Ward, tmp_path: Path) -> None:
    escrow = str(X25519Identity.generate().recipient)
    path = tmp_path / "cart-01-20250301T093000Z-0001.age"
    write_clip(path, [ward.data_key, escrow])
    # Two stanzas, a manifest listing one recipient: a hidden way in.
    clip = Clip(
        path,
        "cart-01-20250301T093000Z-0001",
        sign(ward, path, "cart-01-20250301T093000Z-0001"),
        sha256_of(path),
        [ward.data_key],
    )
    verdict = clip.verify(ward)
    assert (verdict.ok, verdict.reason) == (False, Reason.NOT_FOR_DATA_KEY)
    assert "2 X25519 stanzas" in verdict.detail
    clip.recipients = [ward.data_key, escrow]
    assert clip.verify(ward).ok

    # A passphrase stanza beside the data key's: not X25519, refused whatever the manifest says.
    clip = make_clip(ward, tmp_path, "cart-01-20250301T093000Z-0002")
    with open(clip.path, "rb") as file:
        ours = parse_header(file.readline).stanzas
    replace_header(clip.path, [*ours, Stanza("scrypt", [b64encode(bytes(16)), "18"], bytes(32))])
    resign(ward, clip)
    verdict = clip.verify(ward, manifest_recipients=[ward.data_key, escrow])
    assert (verdict.ok, verdict.reason) == (False, Reason.NOT_FOR_DATA_KEY)
    assert "scrypt" in verdict.detail


def test_a_clip_for_another_key_posing_as_the_data_keys_is_not_detectable(
    ward: Ward, tmp_path: Path
) -> None:
    """The documented limit: a stanza does not name its recipient, so only decryption tells."""
    stranger = X25519Identity.generate()
    path = tmp_path / "cart-01-20250301T093000Z-0001.age"
    write_clip(path, [str(stranger.recipient)])
    clip = Clip(
        path,
        "cart-01-20250301T093000Z-0001",
        sign(ward, path, "cart-01-20250301T093000Z-0001"),
        sha256_of(path),
        [ward.data_key],
    )
    assert clip.verify(ward).ok  # the receiver, holding no private key, cannot tell
    with open(path, "rb") as file, pytest.raises(NoIdentityMatchError):
        EnvelopeReader(file, [ward.data_identity])  # the extraction host can, at decrypt time
