"""Clip signatures against the reference ``minisign`` command, both ways, and every rejection."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import itertools
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import (
    BadSignatureError,
    BindingError,
    KeyFormatError,
    RelabelledError,
    SignatureFormatError,
)
from protocol.minisign import PassphraseError
from protocol.signing import (
    ClipBinding,
    ClipDigests,
    ClipHasher,
    ClipSigner,
    PublicKey,
    Signature,
    SigningKey,
    sign_clip,
    verify_clip,
    verify_clip_digests,
)

# libsodium's *_INTERACTIVE scrypt limits (N=2^14): minisign accepts them in a key file, and they
# keep our encrypted-key tests fast; the 1 GiB default is exercised once, on minisign's own key.
FAST_OPS, FAST_MEM = 524288, 16777216
CLIP = bytes(range(256)) * 300 + b"tail"
KEY = SigningKey(bytes(range(32)), bytes.fromhex("0011223344556677"))


def minisign(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["minisign", *map(str, args)], input=stdin, capture_output=True, text=True, timeout=60
    )


def minisign_ok(*args: str | Path, stdin: str = "") -> str:
    done = minisign(*args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.age"
    path.write_bytes(CLIP)
    return path


@pytest.fixture
def minisign_keys(tmp_path: Path) -> tuple[Path, Path]:
    """An unencrypted key pair made by ``minisign -G -W``: (public key file, secret key file)."""
    pk, sk = tmp_path / "ms.pub", tmp_path / "ms.key"
    minisign_ok("-G", "-W", "-p", pk, "-s", sk)
    return pk, sk


def sign_file(path: Path, key: SigningKey = KEY, clip_id: str = "clip-1") -> Path:
    """Sign *path* as a clip and write ``<path>.minisig`` where minisign looks for it."""
    signature, _ = sign_clip(key, path, clip_id, "cart-3", timestamp=1700000000)
    sig_path = path.with_name(path.name + ".minisig")
    sig_path.write_text(signature.to_text())
    return sig_path


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_text_and_verify() -> None:
    signature = KEY.sign(CLIP, "hello world", "a note")
    parsed = Signature.from_text(signature.to_text())
    assert parsed == signature and parsed.prehashed
    KEY.public_key.verify(parsed, CLIP)
    assert Signature.from_text(signature.to_text().encode()) == signature


def test_crlf_files_parse_like_minisign_reads_them() -> None:
    text = KEY.sign(CLIP, "tc").to_text()
    assert Signature.from_text(text.replace("\n", "\r\n")) == Signature.from_text(text)


@given(st.lists(st.integers(0, len(CLIP)), max_size=6))
def test_incremental_signer_equals_one_shot(cuts: list[int]) -> None:
    signer = ClipSigner(KEY)
    view, edges = memoryview(CLIP), [0, *sorted(cuts), len(CLIP)]
    for start, end in itertools.pairwise(edges):
        signer.update(view[start:end])
    signature, binding = signer.finish(
        "clip-1", "cart-3", participant="PAIN-0042", visit=None, timestamp=1700000000
    )
    assert signer.size == len(CLIP) and binding.sha256 == signer.sha256_hex
    # Ed25519 is deterministic, so streaming must give exactly the one-shot signature.
    assert signature == KEY.sign(CLIP, binding.to_comment())
    with pytest.raises(ValueError):
        signer.update(b"late")


def test_sign_and_verify_clip_stream_in_bounded_chunks() -> None:
    class Zeros:
        """32 MiB of zeros made on demand, recording the largest read asked of it."""

        def __init__(self) -> None:
            self.left, self.largest = 32 << 20, 0

        def read(self, size: int = -1) -> bytes:
            assert size > 0, "the whole file was asked for at once"
            self.largest = max(self.largest, size)
            n = min(size, self.left)
            self.left -= n
            return bytes(n)

    source = Zeros()
    signature, binding = sign_clip(KEY, source, "clip-1", "cart-3")  # type: ignore[arg-type]
    again = Zeros()
    assert verify_clip(KEY.public_key, signature, again) == binding  # type: ignore[arg-type]
    assert source.largest <= 1 << 20 and again.largest <= 1 << 20


def test_verifying_from_digests_decides_as_reading_the_clip() -> None:
    signature, binding = sign_clip(KEY, io.BytesIO(CLIP), "clip-1", "cart-3")
    hasher = ClipHasher()
    hasher.update(CLIP[:1000])
    hasher.update(memoryview(CLIP)[1000:])
    digests = hasher.digests()
    assert digests == ClipDigests(
        len(CLIP), hashlib.sha256(CLIP).hexdigest(), hashlib.blake2b(CLIP).digest()
    )
    assert verify_clip_digests(KEY.public_key, signature, digests, clip_id="clip-1") == binding
    altered = dataclasses.replace(digests, blake2b=hashlib.blake2b(CLIP + b"x").digest())
    with pytest.raises(BadSignatureError):
        verify_clip_digests(KEY.public_key, signature, altered)
    # The signature covers the BLAKE2b; a SHA-256 that disagrees with the signed one is caught.
    with pytest.raises(BindingError, match="binding names SHA-256"):
        verify_clip_digests(
            KEY.public_key, signature, dataclasses.replace(digests, sha256="0" * 64)
        )
    with pytest.raises(BindingError, match="for device"):
        verify_clip_digests(KEY.public_key, signature, digests, device_id="cart-4")


def test_binding_round_trip_and_strict_parse() -> None:
    binding = ClipBinding("clip-0042", "cart_3.ward-7", "ab" * 32, 1700000000, "PAIN-0042", "V2")
    assert ClipBinding.from_comment(binding.to_comment()) == binding
    good = binding.to_comment()
    assert good.startswith("painav-clip/2 ") and good.endswith(" participant:PAIN-0042 visit:V2")
    for bad in [
        good + " ",
        good.replace(" ", "  ", 1),
        good.replace("painav-clip/2", "painav-clip/3"),
        good.replace("painav-clip/2", "painav-clip/1"),  # form 1 has no participant or visit
        good.replace("ab" * 32, "AB" * 32),
        good.replace("timestamp:1700000000", "timestamp:01700000000"),
        good.replace("clip-0042", "clip 42"),
        good.replace("clip-0042", "c" * 65),
        good.replace("cart_3.ward-7", "cärt"),
        good.replace(" visit:V2", ""),
        good.replace(" visit:V2", " visit:"),
        good.replace(" visit:V2", " visit:V 2"),
        good.replace("PAIN-0042", "Jan Jansen"),
        good.replace("PAIN-0042", "pain-0042"),
        good.replace(" participant:PAIN-0042", " participant:"),
        good.replace(" participant:PAIN-0042 visit:V2", " visit:V2 participant:PAIN-0042"),
        "timestamp:1700000000\tfile:clip.age\thashed",
    ]:
        with pytest.raises(BindingError):
            ClipBinding.from_comment(bad)
    with pytest.raises(BindingError):
        ClipBinding("ok", "dev/../x", "ab" * 32, 0)
    with pytest.raises(BindingError, match="participant"):
        ClipBinding("ok", "cart-3", "ab" * 32, 0, participant="Jan Jansen")
    with pytest.raises(BindingError, match="visit"):
        ClipBinding("ok", "cart-3", "ab" * 32, 0, visit="-")  # '-' writes "no visit"
    with pytest.raises(BindingError, match="form 1"):
        ClipBinding("ok", "cart-3", "ab" * 32, 0, participant="PAIN-0042", version=1)


def test_unarmed_and_form_1_bindings() -> None:
    unarmed = ClipBinding("clip-1", "cart-3", "ab" * 32, 5)
    assert unarmed.to_comment().endswith(" timestamp:5 participant:- visit:-")
    assert ClipBinding.from_comment(unarmed.to_comment()) == unarmed
    assert unarmed.check_labels(None, None)
    # A unit of the previous version signs form 1: read, and it vouches for no participant.
    old = "painav-clip/1 clip:clip-1 device:cart-3 sha256:" + "ab" * 32 + " timestamp:5"
    legacy = ClipBinding.from_comment(old)
    assert (legacy.version, legacy.participant, legacy.visit) == (1, None, None)
    assert legacy.to_comment() == old
    assert legacy.check_labels("PAIN-0042", "baseline") is False


def test_a_relabelled_manifest_does_not_match_its_signature(clip: Path) -> None:
    signature, _ = sign_clip(KEY, clip, "clip-1", "cart-3", participant="PAIN-0042", visit="V1")
    binding = verify_clip(KEY.public_key, signature, clip)
    assert binding.check_labels("PAIN-0042", "V1") is True
    for participant, visit, what in [
        ("PAIN-0043", "V1", "participant"),
        (None, "V1", "participant"),
        ("PAIN-0042", "V2", "visit"),
        ("PAIN-0042", None, "visit"),
    ]:
        with pytest.raises(RelabelledError, match=f"manifest's {what} is not the one") as caught:
            binding.check_labels(participant, visit)
        assert "PAIN" not in str(caught.value)  # no pseudonym in the message
    # The label cannot be edited in the signature either: the trusted comment is signed.
    forged = signature.trusted_comment.replace("PAIN-0042", "PAIN-0043")
    with pytest.raises(BadSignatureError, match="trusted comment was altered"):
        verify_clip(KEY.public_key, dataclasses.replace(signature, trusted_comment=forged), clip)


def test_minisign_shows_the_signed_participant(clip: Path) -> None:
    signature, _ = sign_clip(KEY, clip, "clip-1", "cart-3", participant="PAIN-0042", visit=None)
    clip.with_name("clip.age.minisig").write_text(signature.to_text())
    out = minisign_ok("-V", "-H", "-m", clip, "-P", KEY.public_key.to_string())
    assert "participant:PAIN-0042 visit:-" in out


# --- against the minisign binary --------------------------------------------------------------


def test_minisign_verifies_our_signatures(clip: Path, tmp_path: Path) -> None:
    sign_file(clip)
    KEY.public_key.save(tmp_path / "unit.pub")
    # -H insists on a prehashed signature, so this also proves we write "ED".
    out = minisign_ok("-V", "-H", "-m", clip, "-P", KEY.public_key.to_string())
    assert "clip:clip-1 device:cart-3" in out
    minisign_ok("-V", "-m", clip, "-p", tmp_path / "unit.pub")
    assert PublicKey.from_file(tmp_path / "unit.pub") == KEY.public_key


def test_minisign_rejects_what_we_reject(clip: Path) -> None:
    sig_path = sign_file(clip)
    lines = sig_path.read_text().split("\n")
    sig_path.write_text("\n".join([*lines[:2], lines[2] + "0", *lines[3:]]))
    assert minisign("-V", "-m", clip, "-P", KEY.public_key.to_string()).returncode != 0
    with pytest.raises(BadSignatureError, match="trusted comment was altered"):
        verify_clip(KEY.public_key, Signature.from_file(sig_path), clip)


def test_we_verify_minisign_signatures_and_load_its_keys(
    clip: Path, minisign_keys: tuple[Path, Path]
) -> None:
    pk_path, sk_path = minisign_keys
    comment = ClipBinding("clip-9", "cart-3", hashlib.sha256(CLIP).hexdigest(), 5)
    minisign_ok("-S", "-s", sk_path, "-m", clip, "-t", comment.to_comment())
    public = PublicKey.from_file(pk_path)
    signature = Signature.from_file(clip.with_name("clip.age.minisig"))
    assert verify_clip(public, signature, clip, clip_id="clip-9", device_id="cart-3") == comment
    # The -P string alone parses too; minisign 0.11 prints the id without leading zeros.
    assert PublicKey.from_string(pk_path.read_text().split("\n")[1]) == public
    assert int(pk_path.read_text().split()[-2], 16) == int(public.key_id_hex, 16)
    # Its unencrypted secret key loads, and signs exactly as minisign did (Ed25519 is
    # deterministic), so the secret half was read right, not only the public half.
    key = SigningKey.from_file(sk_path)
    assert key.public_key == public
    assert key.sign(CLIP, comment.to_comment(), "signature from minisign secret key") == signature


def test_legacy_signatures_verify_but_not_as_clips(
    clip: Path, minisign_keys: tuple[Path, Path]
) -> None:
    pk_path, sk_path = minisign_keys
    minisign_ok("-S", "-l", "-s", sk_path, "-m", clip, "-t", "legacy")
    signature = Signature.from_file(clip.with_name("clip.age.minisig"))
    assert not signature.prehashed
    public = PublicKey.from_file(pk_path)
    public.verify(signature, CLIP)
    with pytest.raises(BadSignatureError):
        public.verify(signature, CLIP + b"x")
    with pytest.raises(SignatureFormatError, match="legacy"):
        verify_clip(public, signature, clip)


def test_minisign_signs_with_keys_we_saved(clip: Path, tmp_path: Path) -> None:
    plain, encrypted = tmp_path / "plain.key", tmp_path / "encrypted.key"
    KEY.save(plain)
    KEY.save(encrypted, passphrase=b"correct horse", kdf_opslimit=FAST_OPS, kdf_memlimit=FAST_MEM)
    for path, stdin in [(plain, ""), (encrypted, "correct horse\n")]:
        sig_path = tmp_path / f"{path.stem}.minisig"
        minisign_ok("-S", "-s", path, "-m", clip, "-x", sig_path, "-t", "by minisign", stdin=stdin)
        KEY.public_key.verify(Signature.from_file(sig_path), CLIP)
        assert SigningKey.from_file(path, b"correct horse").public_key == KEY.public_key
    bad = minisign("-S", "-s", encrypted, "-m", clip, "-x", tmp_path / "x", stdin="wrong\n")
    assert bad.returncode != 0 and "Wrong password" in bad.stderr


def test_we_load_a_key_minisign_encrypted(clip: Path, tmp_path: Path) -> None:
    # minisign 0.11 reads the passphrase from stdin when it is not a terminal; its key carries
    # the SENSITIVE scrypt limits (N=2^20, 1 GiB), so this one test costs several seconds.
    pk, sk = tmp_path / "ms.pub", tmp_path / "ms.key"
    minisign_ok("-G", "-p", pk, "-s", sk, stdin="hunter2\nhunter2\n")
    with pytest.raises(PassphraseError, match="passphrase is needed"):
        SigningKey.from_file(sk)
    key = SigningKey.from_file(sk, passphrase=b"hunter2")
    assert key.public_key == PublicKey.from_file(pk)
    sign_file(clip, key)
    minisign_ok("-V", "-m", clip, "-p", pk)


# --- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize("bit", [0, 8 * len(CLIP) // 2 + 3, 8 * len(CLIP) - 1])
def test_flipped_ciphertext_bit(clip: Path, bit: int) -> None:
    signature = Signature.from_file(sign_file(clip))
    data = bytearray(CLIP)
    data[bit // 8] ^= 1 << (bit % 8)
    clip.write_bytes(data)
    with pytest.raises(BadSignatureError, match="does not match the data"):
        verify_clip(KEY.public_key, signature, clip)
    with pytest.raises(BadSignatureError):
        KEY.public_key.verify(signature, bytes(data))


def test_edited_trusted_comment(clip: Path) -> None:
    signature = Signature.from_file(sign_file(clip))
    for forged in [
        signature.trusted_comment.replace("clip:clip-1", "clip:clip-2"),
        signature.trusted_comment + " ",
        "",
    ]:
        edited = dataclasses.replace(signature, trusted_comment=forged)
        with pytest.raises(BadSignatureError, match="trusted comment was altered"):
            verify_clip(KEY.public_key, edited, clip)


def test_signature_by_another_key(clip: Path) -> None:
    other = SigningKey.generate()
    signature = Signature.from_file(sign_file(clip, other))
    with pytest.raises(BadSignatureError, match=f"signed by key {other.public_key.key_id_hex}"):
        verify_clip(KEY.public_key, signature, clip)
    # Relabelled with the expected key id, it still fails, on the signature itself.
    relabelled = dataclasses.replace(signature, key_id=KEY.public_key.key_id)
    with pytest.raises(BadSignatureError, match="does not match the data"):
        verify_clip(KEY.public_key, relabelled, clip)


def test_binding_for_another_clip_device_or_hash(clip: Path) -> None:
    signature = Signature.from_file(sign_file(clip))
    assert verify_clip(KEY.public_key, signature, clip, clip_id="clip-1", device_id="cart-3")
    with pytest.raises(BindingError, match="clip 'clip-1', expected 'clip-2'"):
        verify_clip(KEY.public_key, signature, clip, clip_id="clip-2")
    with pytest.raises(BindingError, match="device 'cart-3', expected 'cart-4'"):
        verify_clip(KEY.public_key, signature, clip, device_id="cart-4")
    wrong_hash = ClipBinding("clip-1", "cart-3", "0" * 64, 1700000000)
    with pytest.raises(BindingError, match="SHA-256"):
        verify_clip(KEY.public_key, KEY.sign(CLIP, wrong_hash.to_comment()), clip)
    with pytest.raises(BindingError, match="not a painav clip binding"):
        verify_clip(KEY.public_key, KEY.sign(CLIP, "timestamp:1\tfile:clip.age\thashed"), clip)


def _valid_text() -> str:
    return KEY.sign(b"x", "painav-clip/1 clip:a device:b").to_text()


def _with_line(index: int, line: str) -> str:
    lines = _valid_text().split("\n")
    lines[index] = line
    return "\n".join(lines)


def _blob(alg: bytes = b"ED", size: int = 64) -> str:
    return base64.b64encode(alg + bytes(8) + bytes(size)).decode()


MALFORMED = {
    "empty": "",
    "three lines": "\n".join(_valid_text().split("\n")[:3]) + "\n",
    "five lines": _valid_text() + "extra\n",
    "blank line inside": _valid_text().replace("\n", "\n\n", 1),
    "no untrusted prefix": _with_line(0, "comment: x"),
    "no trusted prefix": _with_line(2, "trusted: x"),
    "bad base64": _with_line(1, "not base64!"),
    "base64 with spaces": _with_line(1, " " + _valid_text().split("\n")[1]),
    "non-canonical base64": _with_line(3, base64.b64encode(bytes(64)).decode()[:-3] + "B=="),
    "wrong algorithm": _with_line(1, _blob(b"Ex")),
    "key algorithm bytes": _with_line(1, _blob(b"\0\0")),
    "short signature": _with_line(1, _blob(size=63)),
    "long signature": _with_line(1, _blob(size=65)),
    "short global signature": _with_line(3, base64.b64encode(bytes(63)).decode()),
    "carriage return in comment": _with_line(2, "trusted comment: a\rb"),
    "NUL in comment": _with_line(0, "untrusted comment: a\0b"),
    "trusted comment too long": _with_line(2, "trusted comment: " + "x" * 8174),
    "public key instead": KEY.public_key.to_file_text(),
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_signature_texts(text: str, tmp_path: Path) -> None:
    with pytest.raises(SignatureFormatError):
        Signature.from_text(text)
    (tmp_path / "s.minisig").write_text(text)
    with pytest.raises(SignatureFormatError, match=r"s\.minisig"):
        Signature.from_file(tmp_path / "s.minisig")


def test_malformed_signature_bytes() -> None:
    with pytest.raises(SignatureFormatError, match="UTF-8"):
        Signature.from_text(b"\xff\xfe" + _valid_text().encode())


def _parse_or_format_error(text: str | bytes) -> None:
    with contextlib.suppress(SignatureFormatError):  # any other exception fails the test
        Signature.from_text(text)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_only_format_errors(data: bytes) -> None:
    _parse_or_format_error(data)


@given(st.text(st.characters(exclude_categories=()), max_size=400))
def test_arbitrary_text_gives_only_format_errors(text: str) -> None:
    _parse_or_format_error(text)


@given(
    st.lists(
        st.one_of(
            st.sampled_from(_valid_text().split("\n")),
            st.sampled_from(["untrusted comment: ", "trusted comment: ", "\r", ""]),
            st.text(st.characters(exclude_categories=()), max_size=90),
        ),
        max_size=6,
    ),
    st.integers(0, 500),
    st.text(max_size=3),
)
def test_near_miss_texts_give_only_format_errors(lines: list[str], at: int, insert: str) -> None:
    text = "\n".join(lines)
    _parse_or_format_error(text[:at] + insert + text[at + 1 :])


# --- key files --------------------------------------------------------------------------------


def test_key_files_are_0600_from_creation_and_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kwargs: int | None) -> int:
        if flags & os.O_CREAT:
            created.append(mode)
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    path = tmp_path / "unit.key"
    KEY.save(path)
    assert created == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        SigningKey.generate().save(path)
    with pytest.raises(FileExistsError):
        KEY.public_key.save(path)
    assert path.read_bytes() == before
    other = SigningKey.generate()
    other.save(path, overwrite=True)
    assert SigningKey.from_file(path).public_key == other.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit.key"]  # no temp files left


def test_repr_never_shows_the_secret() -> None:
    seed = bytes(range(32))
    text = repr(KEY) + str(KEY) + f"{KEY!r:>10}"
    for encoding in (seed.hex(), seed.hex().upper(), base64.b64encode(seed).decode(), str(seed)):
        assert encoding not in text
    assert KEY.public_key.key_id_hex in text


def test_encrypted_key_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "unit.key"
    KEY.save(path, passphrase=b"s3cret", kdf_opslimit=FAST_OPS, kdf_memlimit=FAST_MEM)
    assert SigningKey.from_file(path, b"s3cret").public_key == KEY.public_key
    with pytest.raises(PassphraseError, match="wrong passphrase") as caught:
        SigningKey.from_file(path, b"S3cret")
    assert isinstance(caught.value, KeyFormatError)
    with pytest.raises(PassphraseError):
        SigningKey.from_file(path)
    with pytest.raises(ValueError):
        KEY.to_file_text(passphrase=b"two\nlines")


def _secret_blob(mutate: int, value: int) -> str:
    blob = bytearray(base64.b64decode(KEY.to_file_text().split("\n")[1]))
    blob[mutate] ^= value
    return "untrusted comment: x\n" + base64.b64encode(blob).decode() + "\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_secret_blob(0, 1), "algorithm"),
        (_secret_blob(2, 1), "key derivation"),
        (_secret_blob(4, 1), "checksum"),
        (_secret_blob(157, 1), "checksum mismatch"),
        (_secret_blob(100, 1), "checksum mismatch"),
        ("untrusted comment: x\n" + KEY.public_key.to_string() + "\n", "bytes, expected 158"),
        ("just one line", "comment line"),
    ],
)
def test_malformed_secret_keys(text: str, reason: str) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        SigningKey.from_file_text(text)


def test_unencrypted_key_with_zero_checksum_must_still_be_consistent() -> None:
    # minisign -G -W writes an all-zero checksum, so the public half is the check that remains.
    blob = bytearray(base64.b64decode(KEY.to_file_text().split("\n")[1]))
    blob[126:158] = bytes(32)
    text = "untrusted comment: x\n" + base64.b64encode(blob).decode() + "\n"
    assert SigningKey.from_file_text(text).public_key == KEY.public_key
    blob[125] ^= 1
    text = "untrusted comment: x\n" + base64.b64encode(blob).decode() + "\n"
    with pytest.raises(KeyFormatError, match="public half"):
        SigningKey.from_file_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "RWQ",
        "untrusted comment: x\nRWQ=\n",
        base64.b64encode(b"Ex" + bytes(40)).decode(),
        KEY.to_file_text(),
        "a\nb\nc",
    ],
)
def test_malformed_public_keys(text: str) -> None:
    with pytest.raises(KeyFormatError):
        PublicKey.from_string(text)


def test_receipts_verify_only_from_a_certified_receiver_and_with_the_right_hash() -> None:
    from datetime import UTC, datetime

    from protocol.hospital_signature import RevokedSignerError, SignerError
    from protocol.signing import sign_receipt, verify_receipt
    from tests.support.hospital_pki import MiniSite

    site = MiniSite()
    receiver = site.signer("receiver-2")
    sha = hashlib.sha256(b"clip").hexdigest()
    now = datetime.now(UTC)
    receipt = sign_receipt(
        receiver,
        site_id="ward7",
        device_id="cart-01",
        clip_id="cart-01-20261127T101500Z-ab12",
        sha256=sha,
        stored_at=now,
    )
    assert receipt.receiver_id == "receiver-2"
    trust = site.trust()
    assert verify_receipt(trust, receipt, sha256=sha, now=now) == "receiver-2"
    with pytest.raises(BindingError):
        verify_receipt(trust, receipt, sha256=hashlib.sha256(b"other").hexdigest(), now=now)
    forged = receipt.model_copy(update={"clip_id": "cart-01-20261127T101500Z-ffff"})
    with pytest.raises(BadSignatureError):
        verify_receipt(trust, forged, sha256=sha, now=now)
    # Signed by receiver-2's key, but claiming to be from the first receiver.
    renamed = receipt.model_copy(update={"receiver_id": "receiver"})
    renamed = renamed.model_copy(
        update={"signature": base64.b64encode(receiver.sign(renamed.signed_bytes())).decode()}
    )
    with pytest.raises(BindingError, match="signed by 'receiver-2'"):
        verify_receipt(trust, renamed, sha256=sha, now=now)
    # A key no site root certified (a self-made certificate) deletes nothing.
    stranger = MiniSite().signer("receiver")
    own = sign_receipt(
        stranger, site_id="ward7", device_id="cart-01", clip_id=receipt.clip_id, sha256=sha,
        stored_at=now,
    )  # fmt: skip
    with pytest.raises(SignerError, match="not issued by the site root"):
        verify_receipt(trust, own, sha256=sha, now=now)
    site.held = site.crl(receiver.cert)
    with pytest.raises(RevokedSignerError):
        verify_receipt(trust, receipt, sha256=sha, now=now)
