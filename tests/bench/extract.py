"""Extraction benchmark: the worker's voice path against openSMILE alone, face features against
MediaPipe alone, the quick quality check, clips per minute with one and two workers, and the QC
verdict's latency at the unit.

The input is one 60 s clip as a unit records it: 1280×720 H.264 at 30 fps (libx264, ~4 Mbit/s,
a moving test pattern) and 48 kHz mono speech (espeak-ng and sox, looped to 60 s), muxed,
encrypted and signed by the unit's real ``ClipWriter`` at full speed with exact timestamps, as
``tests/server/extract/clips.py`` does. Everything is on tmpfs when there is room.

(a) Voice path. painav's time is the worker's whole voice path, in-process with a long-lived
``VoiceExtractor``: decrypt into memory, demux and decode the audio, eGeMAPSv02 functionals and
descriptors (openSMILE at the worker's default 16 kHz), the descriptors as Parquet written and
fsynced. The reference is openSMILE alone (its Python API, long-lived ``Smile`` objects with the
same settings) on the plaintext WAV of the same audio: functionals and descriptors. Interleaved
runs after one warm-up round; the ratio is painav's median time over openSMILE's.

(e) Face features. Two 20 s clips of the same kind (1280×720 H.264 at 30 fps, ~4 Mbit/s, made
by the unit's clip writer) with a real face: the public-domain astronaut portrait (scikit-image)
moving over a backdrop, the face always in view; ``far``: the whole portrait, the face about
100 px wide (a patient across a bed); ``close``: a close-up, the face about 220 px wide, which
MediaPipe's own detector finds. Each clip is decrypted and its frames decoded once, as the worker
does (``ClipMedia.frames`` at the configured ``face_fps``, full-size RGB), and kept in memory;
then, interleaved after a warm-up round, painav's pipeline (``MediaPipeFaces.analyse``,
long-lived as in the worker: cascade, crop, landmarker, tracking, the table and summary) and
MediaPipe FaceLandmarker alone (VIDEO running mode, full frames, the same model, outputs and
thresholds; made before the clock starts) on the same frames. The ratio is painav's median time
over MediaPipe's; beside each, the share of frames it found a face in (the truth is 100 %).

(b) Clips per minute through ``ExtractionWorker.extract_one`` (everything the worker does per
clip; the feature sets it recorded are named in the table), one worker process, then two worker
processes sharing one SQLite catalog and store; each clip a fresh encryption of the same
plaintext, so every clip has its own hash. Runs interleaved, after the voice runs' warm-up.

(c) Quick check, from (b)'s one-worker runs: per clip, the worker's decrypt row in the audit log
(written as it claims the clip) to its quick verdict in the catalog: decrypt and the check as
the worker runs it, alone on the machine. This is what bounds the verdict's latency.

(d) Verdict latency. A unit (``painav device run``, the replay camera playing the same 720p
stream, the file microphone playing the same speech, ``[recorder] max_seconds = 60``), the real
receiver (``painav receiver run``) and a worker process (``ExtractionWorker.run``, default
``idle_poll_s``): one press, the unit stops itself at 60 s; stop (the unit's state leaving
``recording``, polled every 50 ms) → stored (catalog) → verdict recorded (catalog) → shown in the
unit's status (polled every 50 ms).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protocol.extract_config import (
    CatalogSection,
    ExtractConfig,
    FeaturesSection,
    KeysSection,
    SiteSection,
    StoreSection,
    WorkSection,
)
from protocol.messages import ClipAnnouncement
from protocol.x25519 import X25519Identity

if TYPE_CHECKING:
    from server.extract.media import VideoSample

SECONDS = 60
FPS = 30
RATE = 48_000
WIDTH, HEIGHT = 1280, 720


FACE_SECONDS = 20
FACE_PORTRAIT_PX = {"far": 560, "close": 528}  # the moving picture's side, frame pixels
FACE_PX = {"far": 104, "close": 220}  # the face's width in it (the cascade's box: 95 of 512)


@dataclass
class FaceFigures:
    scene: str  # "far" or "close"
    fps: float  # frames analysed a second of video
    frames: int  # analysed per run
    ours_s: list[float]  # painav: MediaPipeFaces.analyse, per clip
    theirs_s: list[float]  # FaceLandmarker alone, VIDEO mode, full frames, per clip
    ours_share: float  # frames with a face
    theirs_share: float
    tracked_share: float  # painav's frames found by tracking the previous face


@dataclass
class ExtractFigures:
    voice_s: list[float]  # painav: decrypt → Parquet, per clip
    opensmile_s: list[float]  # openSMILE alone on the WAV, per clip
    faces: list[FaceFigures]
    quick_s: list[float]  # decrypt + the quick check, per clip (one worker alone)
    feature_sets: list[str]  # what the worker recorded per clip
    clip_mib: float
    one_worker: list[float]  # clips per minute
    two_workers: list[float]
    clips_per_run: int
    stop_to_stored_s: list[float]
    stored_to_claimed_s: list[float]  # receipt, then the worker's next poll
    claimed_to_recorded_s: list[float]  # the worker: decrypt and the quick check
    recorded_to_shown_s: list[float]
    verdicts: list[str]


# --- the input ------------------------------------------------------------------------------


def make_speech(work: Path) -> tuple[Path, bytes]:
    """espeak-ng's sentence at 48 kHz, looped to 60 s: the WAV and its PCM (s16le mono)."""
    from tests.server.extract.clips import speak

    spoken = speak(work, RATE)
    with wave.open(str(spoken), "rb") as w:
        once = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    pcm = np.resize(once, SECONDS * RATE).astype("<i2").tobytes()
    out = work / "speech_60s.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return out, pcm


def make_video(work: Path) -> Path:
    """60 s of 1280×720 H.264 at 30 fps (Annex B, no B-frames, a key frame a second)."""
    path = work / "video_720p.h264"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", str(SECONDS),
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M", "-maxrate", "4M",
         "-bufsize", "8M", "-bf", "0", "-g", str(FPS), "-f", "h264", str(path)],
        check=True,
    )  # fmt: skip
    return path


def face_picture(t_s: float, portrait: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """The frame at *t_s*: *portrait* (already at its size) over *backdrop*, drifting with
    periods of 5 and 3 s, always wholly in view."""
    side = portrait.shape[0]
    x = int((WIDTH - side) * (0.5 + 0.5 * np.sin(2 * np.pi * t_s / 5.0)))
    y = int((HEIGHT - side) * (0.5 + 0.5 * np.sin(2 * np.pi * t_s / 3.0)))
    picture = backdrop.copy()
    picture[y : y + side, x : x + side] = portrait
    return picture


def make_face_video(work: Path, scene: str) -> Path:
    """20 s of 1280×720 H.264 at 30 fps, encoded as :func:`make_video` encodes, of the
    astronaut moving over a backdrop: ``far`` the whole portrait (face ~104 px wide), ``close``
    a crop around the face (face ~220 px wide)."""
    from skimage import data

    astronaut = data.astronaut()  # type: ignore[no-untyped-call]  # 512×512, face at 177,66 95×95
    if scene == "close":
        astronaut = astronaut[0:228, 110:338]  # 2.4 faces wide around it
    side = FACE_PORTRAIT_PX[scene]
    index = np.arange(side) * astronaut.shape[0] // side  # nearest neighbour
    portrait = np.ascontiguousarray(astronaut[index[:, None], index[None, :]])
    rows = np.linspace(60, 160, HEIGHT, dtype=np.float32)[:, None]
    cols = np.linspace(0, 30, WIDTH, dtype=np.float32)[None, :]
    backdrop = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    backdrop[..., 0] = (rows + cols).astype(np.uint8)
    backdrop[..., 1] = (rows * 1.1).astype(np.uint8)
    backdrop[..., 2] = (rows * 1.2 - cols).clip(0, 255).astype(np.uint8)
    path = work / f"face_{scene}.h264"
    encoder = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-",
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M", "-maxrate", "4M",
         "-bufsize", "8M", "-bf", "0", "-g", str(FPS), "-pix_fmt", "yuv420p",
         "-f", "h264", str(path)],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert encoder.stdin is not None
    for i in range(FACE_SECONDS * FPS):
        encoder.stdin.write(face_picture(i / FPS, portrait, backdrop).tobytes())
    encoder.stdin.close()
    if encoder.wait():
        raise SystemExit("bench: ffmpeg could not encode the face clip")
    return path


def make_clip(path: Path, video: Path, pcm: bytes, identity: X25519Identity) -> None:
    """The unit's clip writer muxes, encrypts and signs *video* and *pcm* into *path*."""
    from daemon.annexb import split_access_units
    from daemon.clipwriter import ClipWriter
    from daemon.hardware.base import AudioBlock, VideoPacket
    from protocol.signing import SigningKey

    writer = ClipWriter(
        path,
        recipients=[identity.recipient],
        signing_key=SigningKey.generate(),
        width=WIDTH,
        height=HEIGHT,
        frame_rate_hz=FPS,
        sample_rate_hz=RATE,
        channels=1,
    )
    t0, block, sent = 1_000_000_000, RATE // 50, 0
    for i, unit in enumerate(split_access_units(video.read_bytes())):
        pts = t0 + i * 1_000_000_000 // FPS
        while t0 + sent * 1_000_000_000 // RATE <= pts and sent < len(pcm) // 2:
            chunk = pcm[sent * 2 : (sent + block) * 2]
            writer.audio(AudioBlock(chunk, len(chunk) // 2, t0 + sent * 1_000_000_000 // RATE))
            sent += block
        writer.video(VideoPacket(unit.data, pts, unit.keyframe))
    writer.finish("cart-03-20261129T120000Z-0001", "cart-03", participant=None, visit=None)


def worker_config(
    catalog_url: str, store: Path, data_key: Path, features: Path, **work: float
) -> ExtractConfig:
    return ExtractConfig(
        site=SiteSection(site_id="ward7"),
        catalog=CatalogSection(url=catalog_url),
        store=StoreSection(dir=store),
        keys=KeysSection(data_key=data_key),
        features=FeaturesSection(dir=features),
        work=WorkSection(**work),
    )


# --- (a): in-process, interleaved -----------------------------------------------------------


def voice_path(
    work: Path, clip: Path, wav: Path, key: Path, runs: int
) -> tuple[list[float], list[float]]:
    """painav's voice path and openSMILE alone, interleaved: seconds per clip, each."""
    import opensmile  # type: ignore[import-untyped]

    from server.extract.media import ClipMedia
    from server.extract.voice import VoiceExtractor
    from server.extract.worker import load_identities

    identities = load_identities(key)
    rate = FeaturesSection(dir=work).voice_rate_hz  # the worker's default analysis rate
    voice = VoiceExtractor(analysis_rate_hz=rate)  # long-lived, as in the worker
    reference = [
        opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, level, sampling_rate=rate, resample=True)
        for level in (
            opensmile.FeatureLevel.Functionals,
            opensmile.FeatureLevel.LowLevelDescriptors,
        )
    ]
    out = work / "lld.parquet"

    def ours() -> float:
        started = time.perf_counter()
        with clip.open("rb") as f:
            media = ClipMedia.decrypt(f, identities)
        audio = media.audio()
        features = voice.extract(audio.samples, audio.sample_rate_hz, start_s=audio.start_s)
        assert len(features.functionals.values) == 88
        with out.open("wb") as sink:  # as the worker writes it: the bytes, then fsync
            sink.write(features.lld.to_parquet())
            sink.flush()
            os.fsync(sink.fileno())
        return time.perf_counter() - started

    def theirs() -> float:
        started = time.perf_counter()
        functionals, lld = (smile.process_file(str(wav)) for smile in reference)
        assert functionals.shape[1] == 88 and lld.shape[1] == 25
        return time.perf_counter() - started

    voice_s, opensmile_s = [], []
    for round_ in range(runs + 1):  # interleaved; the first round warms up
        times = ours(), theirs()
        print(f"bench extract: voice {times[0]:.2f} s, openSMILE {times[1]:.2f} s", file=sys.stderr)
        if round_:
            voice_s.append(times[0])
            opensmile_s.append(times[1])
    return voice_s, opensmile_s


# --- (e): face features, in-process, interleaved ---------------------------------------------


def face_features(work: Path, pcm: bytes, identity: X25519Identity, runs: int) -> list[FaceFigures]:
    """painav's face pipeline and FaceLandmarker alone on the same decoded frames of each face
    clip, interleaved after a warm-up round."""
    from server.extract.face_mediapipe import MediaPipeFaces
    from server.extract.media import ClipMedia

    fps = FeaturesSection(dir=work).face_fps  # the worker's default
    figures = []
    with MediaPipeFaces(fps=fps) as ours:  # long-lived, as in the worker
        for scene in FACE_PORTRAIT_PX:
            clip = work / f"face_{scene}.age"
            make_clip(clip, make_face_video(work, scene), pcm[: FACE_SECONDS * RATE * 2], identity)
            with clip.open("rb") as f:
                frames = list(ClipMedia.decrypt(f, [identity]).frames(fps))
            ours_s, theirs_s = [], []
            ours_share = theirs_share = tracked = 0.0
            for round_ in range(runs + 1):  # interleaved; the first round warms up
                started = time.perf_counter()
                result = ours.analyse(frames)
                ours_t = time.perf_counter() - started
                theirs_t, theirs_share = mediapipe_alone(frames)
                ours_share = float(result.summary["face_share"] or 0.0)
                tracked = float(np.mean(result.frames.columns["tracked"]))
                print(
                    f"bench extract: faces {scene}: painav {ours_t:.2f} s ({ours_share:.0%}), "
                    f"MediaPipe alone {theirs_t:.2f} s ({theirs_share:.0%})",
                    file=sys.stderr,
                )
                if round_:
                    ours_s.append(ours_t)
                    theirs_s.append(theirs_t)
            figures.append(
                FaceFigures(
                    scene, fps, len(frames), ours_s, theirs_s, ours_share, theirs_share, tracked
                )
            )
            del frames
    return figures


def mediapipe_alone(frames: list[VideoSample]) -> tuple[float, float]:
    """FaceLandmarker alone, VIDEO running mode, on the full *frames* (``VideoSample``): the
    seconds it took and the share of frames with a face. Same model, outputs and thresholds as
    painav's; the landmarker is made before the clock starts and closed after it stops."""
    import mediapipe as mp  # type: ignore[import-untyped]
    from mediapipe.tasks.python import vision  # type: ignore[import-untyped]
    from mediapipe.tasks.python.core.base_options import (  # type: ignore[import-untyped]
        BaseOptions,
    )

    from server.extract.face_mediapipe import default_model_path

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(default_model_path())),
        running_mode=vision.RunningMode.VIDEO,
        num_faces=1,
        min_face_detection_confidence=0.5,
        min_face_presence_confidence=0.5,
        min_tracking_confidence=0.5,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    landmarker = vision.FaceLandmarker.create_from_options(options)
    try:
        found = 0
        started = time.perf_counter()
        for sample in frames:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=sample.image)
            result = landmarker.detect_for_video(image, round(sample.time_s * 1000))
            found += bool(result.face_landmarks and result.face_blendshapes)
        elapsed = time.perf_counter() - started
    finally:
        landmarker.close()
    return elapsed, found / len(frames)


# --- (c) clips per minute -------------------------------------------------------------------


def fill_catalog(
    catalog_url: str, store: Path, spool: Path, plaintext: bytes, identity: X25519Identity, n: int
) -> None:
    """*n* stored, receipted clips: each a fresh encryption of *plaintext*."""
    from protocol.envelope import EnvelopeWriter
    from server.catalog import Catalog
    from server.store import LocalStore
    from tests.protocol.message_examples import MINISIGN, manifest
    from tests.server.conftest import enrolled

    spool.mkdir(parents=True, exist_ok=True)
    local = LocalStore(store)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    with Catalog(catalog_url) as catalog:
        enrolled(catalog)  # the consent gate: only a consented participant's clips are extracted
        for i in range(n):
            clip_id = f"cart-03-{stamp}-{i:04x}"
            part = spool / f"{clip_id}.age"
            with part.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as envelope:
                envelope.write(plaintext)
            digest = hashlib.sha256(part.read_bytes()).hexdigest()
            size = part.stat().st_size
            key = local.put(digest, part, "untrusted comment: bench\n", move=True)
            now = datetime.now(UTC)
            catalog.record_announcement(
                ClipAnnouncement(
                    manifest=manifest(clip_id=clip_id, sha256=digest, size_bytes=size),
                    signature=MINISIGN,
                    url=f"https://cart-03.ward7.example:8443/clips/{clip_id}",
                ),
                received_at=now,
            )
            assert catalog.claim_next(worker="rx", now=now, lease_s=600) is not None
            catalog.mark_stored(clip_id, store_key=key, stored_at=now, worker="rx")
            catalog.mark_receipted(clip_id, at=now)


def worker_main(mode: str, spec_file: Path) -> None:
    """A worker process: ``drain`` extracts clips until none is due, after a ``go`` line on
    stdin, and prints how many; ``run`` runs the service loop until stdin closes."""
    from server.extract.worker import ExtractionWorker, load_identities

    spec = json.loads(spec_file.read_text())
    config = worker_config(
        spec["catalog"],
        Path(spec["store"]),
        Path(spec["key"]),
        Path(spec["features"]),
        **spec.get("work", {}),
    )
    worker = ExtractionWorker(
        config, worker_id=spec["worker"], identities=load_identities(Path(spec["key"]))
    )
    print("ready", flush=True)
    try:
        if mode == "run":
            stop = threading.Event()
            thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
            thread.start()
            sys.stdin.read()
            stop.set()
            thread.join(timeout=120)
            return
        sys.stdin.readline()
        count = 0
        while (outcome := worker.extract_one()) is not None:
            if outcome.result != "extracted":
                raise SystemExit(f"bench: {outcome}")
            count += 1
        print(json.dumps({"clips": count}), flush=True)
    finally:
        worker.close()  # the face landmarker and the catalog


def start_worker(mode: str, spec: dict[str, object], spec_file: Path) -> subprocess.Popen[str]:
    spec_file.write_text(json.dumps(spec))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.extract", mode, str(spec_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise SystemExit("bench: an extraction worker did not start")
    return process


def clips_per_minute(
    work: Path, plaintext: bytes, identity: X25519Identity, key: Path, workers: int, clips: int
) -> tuple[float, list[float], list[str]]:
    """Clips a minute through *workers* worker processes draining *clips* clips; the quick
    checks' seconds and the feature sets recorded (see :func:`quick_checks`)."""
    run = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=work))
    catalog = f"sqlite:///{run / 'catalog.db'}"
    fill_catalog(catalog, run / "store", run / "spool", plaintext, identity, clips)
    processes = [
        start_worker(
            "drain",
            {
                "catalog": catalog,
                "store": str(run / "store"),
                "key": str(key),
                "features": str(run / "features"),
                "worker": f"x{n}@bench",
            },
            run / f"worker{n}.json",
        )
        for n in range(workers)
    ]
    started = time.perf_counter()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    done = 0
    for process in processes:
        assert process.stdout is not None
        done += json.loads(process.stdout.readline())["clips"]
        process.stdin.close()  # type: ignore[union-attr]
        if process.wait(timeout=60):
            raise SystemExit("bench: an extraction worker failed")
    elapsed = time.perf_counter() - started
    if done != clips:
        raise SystemExit(f"bench: {done} of {clips} clips extracted")
    quick, feature_sets = quick_checks(catalog)
    shutil.rmtree(run)
    return clips / elapsed * 60, quick, feature_sets


def quick_checks(catalog_url: str) -> tuple[list[float], list[str]]:
    """Per clip, the worker's decrypt (its audit row, written as it claims the clip) to its
    quick verdict in the catalog; and the feature sets the worker recorded."""
    from server.catalog import Catalog

    seconds, sets = [], set()
    with Catalog(catalog_url) as catalog:
        for clip in catalog.clips():
            decrypted = next(
                e.at for e in catalog.audit.entries(clip_id=clip.clip_id) if e.action == "decrypt"
            )
            quick = next(q for q in catalog.qc(clip.clip_id) if q.qc_pass.value == "quick")
            seconds.append((quick.created_at - decrypted).total_seconds())
            sets |= {f.feature_set for f in catalog.features(clip.clip_id)}
    return seconds, sorted(sets)


# --- (d) the verdict's latency at the unit --------------------------------------------------


def verdict_latency(
    work: Path, video: Path, wav: Path, runs: int
) -> tuple[list[float], list[float], list[float], list[float], list[str]]:
    from provisioning.broker import write_broker_config
    from provisioning.devices import add_device
    from provisioning.site import init_site
    from server.catalog import Catalog
    from tests.support.mosquitto import HOST, Broker, broker_user, free_port
    from tests.support.unit import edit_config, make_unit, receiver_process, use_replay_camera

    site = init_site(work / "site", "bench", broker_hosts=(HOST, "localhost"))
    add_device(site, "cart-01")
    port = free_port()
    broker_dir = work / "broker"
    write_broker_config(site, broker_dir, port=port, bind=HOST, user=broker_user())
    broker = Broker(site, broker_dir, port, broker_dir / "mosquitto.log")
    broker.start()
    rdir = work / "receiver"
    receiver = receiver_process(site, broker, rdir)
    unit = make_unit(
        site,
        broker,
        work / "unit",
        width=WIDTH,
        height=HEIGHT,
        frame_rate_hz=float(FPS),
        max_seconds=float(SECONDS),
    )
    use_replay_camera(unit, video)
    edit_config(
        unit,
        '[microphone]\nbackend = "simulated"',
        f'[microphone]\nbackend = "simulated"\nwav_file = "{wav}"',
    )
    stored, claimed, recorded, shown, verdicts = [], [], [], [], []
    worker = None
    catalog = None
    try:
        receiver.start()
        unit.start()
        worker = start_worker(
            "run",
            {
                "catalog": f"sqlite:///{rdir / 'catalog.db'}",
                "store": str(rdir / "store"),
                "key": str(site.paths.data_key),
                "features": str(work / "features"),
                "worker": "x1@bench",
            },
            work / "worker.json",
        )
        catalog = Catalog(f"sqlite:///{rdir / 'catalog.db'}")
        for _ in range(runs):
            unit.press()
            status = unit.wait_state("recording")
            clip_id = status["clip_id"]
            deadline = time.monotonic() + SECONDS + 30
            while unit.status()["state"] == "recording":
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: the unit did not stop by itself\n{unit.log()}")
                time.sleep(0.05)
            stopped = datetime.now(UTC)
            deadline = time.monotonic() + 180
            while True:
                verdict = unit.status()["last_verdict"]
                if verdict and verdict["clip_id"] == clip_id:
                    at_unit = datetime.now(UTC)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: no verdict at the unit\n{receiver.log()[-3000:]}")
                time.sleep(0.05)
            clip = catalog.clip(clip_id)
            quick = next(q for q in catalog.qc(clip_id) if q.qc_pass.value == "quick")
            decrypted = next(
                e.at for e in catalog.audit.entries(clip_id=clip_id) if e.action == "decrypt"
            )  # the worker writes the decrypt to the audit log as it claims the clip
            assert clip.stored_at is not None
            stored.append((clip.stored_at - stopped).total_seconds())
            claimed.append((decrypted - clip.stored_at).total_seconds())
            recorded.append((quick.created_at - decrypted).total_seconds())
            shown.append((at_unit - quick.created_at).total_seconds())
            verdicts.append(f"{verdict['verdict']} ({', '.join(verdict['reasons']) or '-'})")
            print(
                f"bench extract: stop → stored {stored[-1]:.2f} s, → claimed "
                f"{claimed[-1]:.2f} s, → recorded {recorded[-1]:.2f} s, → at the unit "
                f"{shown[-1]:.2f} s: {verdicts[-1]}",
                file=sys.stderr,
            )
    finally:
        if catalog is not None:
            catalog.close()
        if worker is not None:
            worker.stdin.close()  # type: ignore[union-attr]
            worker.wait(timeout=120)
        unit.stop()
        receiver.stop()
        broker.stop()
    return stored, claimed, recorded, shown, verdicts


# --- all of it ------------------------------------------------------------------------------


def measure(runs: int = 3, clips: int = 4, latency_runs: int = 2) -> ExtractFigures:
    from server.extract.media import decrypt_to_memory

    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30 else None
    with tempfile.TemporaryDirectory(prefix="painav-bench-extract-", dir=where) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the broker drops to its own account and must reach its config
        wav, pcm = make_speech(work)
        video = make_video(work)
        identity = X25519Identity.generate()
        key = work / "data-key.txt"
        key.write_text(f"# bench\n{identity}\n")
        clip = work / "clip.age"
        make_clip(clip, video, pcm, identity)
        with clip.open("rb") as f:
            plaintext = decrypt_to_memory(f, [identity])

        voice_s, opensmile_s = voice_path(work, clip, wav, key, runs)
        faces = face_features(work, pcm, identity, runs)
        one: list[float] = []
        two: list[float] = []
        quick_s: list[float] = []
        feature_sets: list[str] = []
        for _ in range(max(1, runs - 1)):  # interleaved
            rate, quick, feature_sets = clips_per_minute(work, plaintext, identity, key, 1, clips)
            one.append(rate)
            quick_s += quick
            two.append(clips_per_minute(work, plaintext, identity, key, 2, clips)[0])
            print(f"bench extract: {one[-1]:.1f} / {two[-1]:.1f} clips a minute", file=sys.stderr)
        latency: tuple[list[float], list[float], list[float], list[float], list[str]]
        latency = ([], [], [], [], [])
        if latency_runs:
            (work / "latency").mkdir()
            latency = verdict_latency(work / "latency", video, wav, latency_runs)
    clip_mib = len(plaintext) / (1 << 20)
    return ExtractFigures(
        voice_s, opensmile_s, faces, quick_s, feature_sets, clip_mib, one, two, clips, *latency
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(fig: ExtractFigures) -> str:
    ours, theirs = _median(fig.voice_s), _median(fig.opensmile_s)
    one, two = _median(fig.one_worker), _median(fig.two_workers)
    parts = (
        fig.stop_to_stored_s,
        fig.stored_to_claimed_s,
        fig.claimed_to_recorded_s,
        fig.recorded_to_shown_s,
    )
    totals = [sum(run) for run in zip(*parts, strict=True)]
    middle = [a + b for a, b in zip(parts[1], parts[2], strict=True)]
    stored, claimed, recorded, shown = (_median(p) for p in parts)
    idle_poll_s = WorkSection().idle_poll_s
    return "\n".join(
        [
            f"Extraction, one 60 s clip ({WIDTH}×{HEIGHT} H.264 at {FPS} fps, ~4 Mbit/s, and "
            f"48 kHz speech; {fig.clip_mib:.0f} MiB) made by the unit's clip writer; medians of "
            f"{len(fig.voice_s)} interleaved runs after one warm-up, on tmpfs, "
            f"{os.cpu_count()} cores. The voice path against openSMILE alone (its Python API, "
            "same settings: eGeMAPSv02 at 16 kHz) on the plaintext WAV of the same clip, in the "
            f"same run. Face features: two {FACE_SECONDS} s clips of the same kind with the "
            "astronaut portrait (scikit-image) moving over a backdrop, the face in every frame; "
            "painav's `MediaPipeFaces.analyse` against MediaPipe FaceLandmarker alone on the "
            "same decoded frames, interleaved, after a warm-up. "
            f"Clips per minute: {fig.clips_per_run} clips, median of "
            f"{len(fig.one_worker)} runs. Verdict latency: a unit (replay camera, file "
            f"microphone, `max_seconds` = 60), `painav receiver run` and one worker "
            f"(`idle_poll_s` = {idle_poll_s:g}), median of {len(totals)} clips.",
            "",
            "| measure | painav | reference | ratio | target |",
            "| --- | --- | --- | --- | --- |",
            f"| voice path per clip: decrypt, demux, eGeMAPS functionals + descriptors, Parquet "
            f"| {ours:.2f} s | {theirs:.2f} s | **{ours / theirs:.2f}×** | ≤ 1.3× |",
            f"| quick quality check per clip, one worker: decrypt + check (every frame decoded, "
            f"2 a second searched for a face; median of {len(fig.quick_s)} clips) "
            f"| {_median(fig.quick_s):.2f} s | | | |",
            f"| clips per minute, one worker process (`extract_one`: quick check, "
            f"{', '.join(f'`{name}`' for name in fig.feature_sets)}) | {one:.1f} | | | |",
            f"| clips per minute, two worker processes, one SQLite catalog | {two:.1f} "
            f"| {one:.1f} (one worker) | **{two / one:.2f}×** | |",
            f"| QC verdict at the unit: its stop → shown in `painav device status` "
            f"| {_median(totals):.1f} s | | | ≤ 30 s |",
            f"| … stop → stored (announce, pull, verify, store) | {stored:.1f} s | | | |",
            f"| … stored → verdict recorded | {_median(middle):.1f} s | | | |",
            f"| … … stored → claimed (receipt, the worker's next poll) | {claimed:.1f} s | | | |",
            f"| … … claimed → recorded (decrypt, quick check) | {recorded:.1f} s | | | |",
            f"| … recorded → at the unit (the receiver's 1 s tick, MQTT) | {shown:.1f} s | | | |",
            *(face_row(face) for face in fig.faces),
        ]
    )


def face_row(face: FaceFigures) -> str:
    """One scene's row: seconds per second of video, and in brackets the share of frames each
    found the face in (it is in all of them)."""
    ours, theirs = _median(face.ours_s), _median(face.theirs_s)
    fair = face.theirs_share >= 0.9 * face.ours_share
    if face.scene == "far":
        what = (
            f"face features per second of video, face ~{FACE_PX['far']} px wide in "
            f"{WIDTH}×{HEIGHT} ({face.fps:g} frames a second analysed, {face.frames} a run): "
            "painav (cascade, crop, landmarker, tracking) against FaceLandmarker alone (VIDEO "
            "mode, full frames) on the same decoded frames; in brackets, frames with a face"
        )
    else:
        what = f"… the same, a close-up: face ~{FACE_PX['close']} px wide"
    if not fair:
        what += " (not like-for-like: FaceLandmarker alone misses the face)"
    return (
        f"| {what} | {ours / FACE_SECONDS:.3f} s ({face.ours_share * 100:.0f} %) "
        f"| {theirs / FACE_SECONDS:.3f} s ({face.theirs_share * 100:.0f} %) "
        f"| **{ours / theirs:.2f}×** | {'≤ 1.2×' if fair else ''} |"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("drain", "run"):
        worker_main(sys.argv[1], Path(sys.argv[2]))
    else:
        figures = measure(*(int(a) for a in sys.argv[1:]))
        print(figures)
        print(table(figures))
