"""``painav demo``: the bedside-to-hospital path on one machine, narrated step by step.

Until the daemon and receiver exist it runs what does: a unit encrypts a generated clip while
"recording" and signs it; the hospital verifies the signature and hash, decrypts in memory and
checks the media; the reference ``age`` and ``minisign`` commands confirm both ends.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from protocol.envelope import EnvelopeReader, EnvelopeWriter
from protocol.signing import ClipSigner, PublicKey, Signature, SigningKey, verify_clip
from protocol.x25519 import X25519Identity

SITE, DEVICE = "demo-ward", "cart-01"


class _Tee:
    """Writes ciphertext to the outbox file and feeds the same bytes to the signer."""

    def __init__(self, file: io.BufferedWriter, signer: ClipSigner) -> None:
        self._file, self._signer = file, signer

    def write(self, data: bytes | memoryview) -> int:
        self._signer.update(data)
        return self._file.write(data)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@contextmanager
def _workdir(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        yield requested.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="painav-demo-") as tmp:
        yield Path(tmp)


def _step(text: str) -> float:
    print(f"  {text}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    with _workdir(args.workdir) as work:
        return _run(work, args.seconds, keep=args.workdir is not None)


def _run(work: Path, seconds: float, keep: bool) -> int:
    from .demo_media import write_demo_clip  # PyAV: imported only when the demo runs

    hospital, unit = work / "hospital", work / "unit"
    clip_id = f"{DEVICE}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.urandom(2).hex()}"
    print(f"painav demo: site {SITE}, unit {DEVICE}, workdir {work}")

    print("\n1. provisioning (hospital IT)")
    t = _step("hospital data key (age X25519): the private part stays at the hospital")
    data_key = X25519Identity.generate()
    data_key_path = hospital / "keys" / "data-key.txt"
    if data_key_path.exists():
        data_key = X25519Identity.from_string(data_key_path.read_text().split("\n")[-2])
    else:
        _write_private(data_key_path, f"# public key: {data_key.recipient}\n{data_key}\n")
    (unit / "outbox").mkdir(parents=True, exist_ok=True)
    (unit / "recipients.txt").write_text(f"{data_key.recipient}\n")
    signing_key_path = unit / "keys" / "signing.key"
    if signing_key_path.exists():
        signing_key = SigningKey.from_file(signing_key_path)
    else:
        signing_key = SigningKey.generate()
        signing_key_path.parent.mkdir(parents=True, exist_ok=True)
        signing_key.save(signing_key_path)
    pubkey_path = hospital / "units" / f"{DEVICE}.pub"
    pubkey_path.parent.mkdir(parents=True, exist_ok=True)
    pubkey_path.write_text(signing_key.public_key.to_file_text())
    _step(
        f"unit signing key (Ed25519, minisign format), key id {signing_key.public_key.key_id_hex}"
    )

    print(f"\n2. the unit records {seconds:g} s and encrypts while recording")
    clip_path = unit / "outbox" / f"{clip_id}.age"
    part = clip_path.with_suffix(".age.part")
    t = time.perf_counter()
    signer = ClipSigner(signing_key)
    with part.open("wb") as out:
        with EnvelopeWriter(_Tee(out, signer), [data_key.recipient]) as envelope:
            media = write_demo_clip(envelope, seconds)
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, clip_path)
    signature, binding = signer.finish(clip_id, DEVICE)
    sig_path = clip_path.with_name(clip_path.name + ".minisig")
    sig_path.write_text(signature.to_text())
    record_s = time.perf_counter() - t
    _step(
        f"{media.frames} frames of H.264 + {media.audio_samples} audio samples → "
        f"{media.plaintext_bytes} bytes Matroska, never on disk in the clear"
    )
    _step(f"{clip_path.name}: {clip_path.stat().st_size} bytes age v1, sha256 {binding.sha256}")
    _step(f"signed: {signature.trusted_comment}")

    print("\n3. the hospital verifies, then decrypts in memory")
    t = time.perf_counter()
    registered = PublicKey.from_file(pubkey_path)
    with clip_path.open("rb") as f:
        checked = verify_clip(
            registered, Signature.from_file(sig_path), f, clip_id=clip_id, device_id=DEVICE
        )
    verify_s = time.perf_counter() - t
    _step(f"signature by {DEVICE}'s registered key: valid; sha256 matches the file")
    t = time.perf_counter()
    with clip_path.open("rb") as f, EnvelopeReader(f, [data_key]) as reader:
        plaintext = reader.read()
    decrypt_s = time.perf_counter() - t
    streams = _probe(plaintext)
    _step(f"decrypted {len(plaintext)} bytes; streams: {streams}")

    print("\n4. the reference tools agree")
    for name, command in (
        ("minisign", ["minisign", "-Vm", str(clip_path), "-p", str(pubkey_path)]),
        ("age", ["age", "-d", "-i", str(data_key_path), "-o", os.devnull, str(clip_path)]),
    ):
        if shutil.which(command[0]) is None:
            _step(f"{name}: not installed (make demo installs it)")
            continue
        result = subprocess.run(command, capture_output=True, text=True)
        verdict = "accepts" if result.returncode == 0 else f"REJECTS: {result.stderr.strip()}"
        _step(f"{' '.join(command[:2])} … {verdict}")
        if result.returncode != 0:
            return 1

    print("\nsummary")
    print(f"  clip      {checked.clip_id} from {checked.device_id}")
    print(f"  duration  {media.seconds:g} s, {media.frames} frames")
    print(f"  size      {clip_path.stat().st_size} bytes encrypted")
    print(
        f"  timings   record+encrypt+sign {record_s:.2f} s, verify {verify_s * 1000:.0f} ms, "
        f"decrypt {decrypt_s * 1000:.0f} ms"
    )
    if keep:
        print(
            f"\nkept in {work}: unit/outbox (clip + .minisig), unit/keys, hospital/keys, "
            "hospital/units"
        )
        print(f"  try: painav clip verify {clip_path} --pubkey {pubkey_path}")
    return 0


def _probe(media: bytes) -> str:
    import av

    with av.open(io.BytesIO(media), mode="r") as container:
        parts = []
        for stream in container.streams:
            packets = [p for p in container.demux(stream) if p.size]
            container.seek(0)
            last = max((p.pts or 0) + (p.duration or 0) for p in packets)
            seconds = float(last * stream.time_base) if stream.time_base else 0.0
            parts.append(f"{stream.type} {stream.codec_context.name} {seconds:.2f} s")
        return ", ".join(parts)
