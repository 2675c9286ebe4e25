"""Recorder benchmark: what the running daemon spends to record, against ffmpeg piped to age.

The daemon records one clip from a replayed 1080p30 H.264 stream (~8 Mbit/s, no encoding cost)
and 48 kHz audio: its CPU time from the press to the clip's announcement (start-up excluded:
the daemon is long-lived) is compared with ``ffmpeg -c copy … | age -r …`` doing the same
mux-and-encrypt to the same input, twice: paced like a camera (``ffmpeg -re``: it reads the
input at its frame rate, as the daemon receives it) and as fast as it can read the file. The
paced one is the fair reference; the other is the floor for the work alone. Also measured:
press → first frame in the clip, stop → announcement published, and the daemon's peak memory
(VmHWM).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from provisioning.broker import write_broker_config
from provisioning.devices import add_device
from provisioning.site import init_site
from tests.support.mosquitto import HOST, Broker, broker_user, free_port
from tests.support.unit import make_unit

SECONDS = 20.0
RATE = 48_000


@dataclass
class RecorderFigures:
    pipeline_cpu_s: list[float]
    ours_cpu_s: list[float]
    theirs_cpu_s: list[float]  # ffmpeg | age as fast as it reads the file
    paced_cpu_s: list[float]  # ffmpeg -re | age, at the camera's pace
    idle_cpu_s: float  # the daemon, not recording, over the same span
    first_frame_ms: list[float]
    announced_ms: list[float]
    peak_rss_mib: float
    seconds: float


def make_inputs(work: Path) -> tuple[Path, Path]:
    video, audio = work / "in.h264", work / "in.wav"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30,noise=alls=12:allf=t",
            "-t",
            str(SECONDS),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
            "-maxrate",
            "8M",
            "-bufsize",
            "16M",
            "-bf",
            "0",
            "-g",
            "30",
            "-f",
            "h264",
            str(video),
        ],
        check=True,
    )
    t = np.arange(int(SECONDS * RATE)) / RATE
    pcm = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return video, audio


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pipeline_cpu_s(video: Path, audio: Path, recipient: str, out: Path) -> float:
    """CPU seconds of the recording pipeline alone (the daemon's ClipWriter: mux, encrypt, sign,
    write, fsync) fed the same input as fast as it takes it, without the real-time pacing."""
    from daemon.annexb import split_access_units
    from daemon.clipwriter import ClipWriter
    from daemon.hardware.base import AudioBlock, VideoPacket
    from protocol.minisign import SigningKey
    from protocol.x25519 import X25519Recipient

    units = split_access_units(video.read_bytes())
    with wave.open(str(audio)) as w:
        pcm = w.readframes(w.getnframes())
    block = RATE // 50
    out.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    writer = ClipWriter(
        out,
        recipients=[X25519Recipient.from_string(recipient)],
        signing_key=SigningKey.generate(),
        width=1920,
        height=1080,
        frame_rate_hz=30.0,
        sample_rate_hz=RATE,
        channels=1,
    )
    sample = 0
    for i, unit in enumerate(units):
        pts = i * 1_000_000_000 // 30
        while sample * 1_000_000_000 // RATE < pts and sample < len(pcm) // 2:
            chunk = pcm[sample * 2 : (sample + block) * 2]
            writer.audio(AudioBlock(chunk, len(chunk) // 2, sample * 1_000_000_000 // RATE))
            sample += block
        writer.video(VideoPacket(unit.data, pts, unit.keyframe))
    writer.finish("bench-clip", "cart-01", participant=None, visit=None)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def baseline_cpu_s(
    video: Path, audio: Path, recipient: str, out: Path, *, paced: bool = False
) -> float:
    """CPU seconds of ``ffmpeg -c copy | age -r`` (both processes) on the same input; with
    *paced*, ``ffmpeg -re`` reads each input at its native rate, as a camera delivers it."""
    re = ["-re"] if paced else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with out.open("wb") as sink:
        ffmpeg = subprocess.Popen(
            [
                "ffmpeg",
                "-v",
                "error",
                *re,
                "-f",
                "h264",
                "-framerate",
                "30",
                "-i",
                str(video),
                *re,
                "-i",
                str(audio),
                "-c",
                "copy",
                "-f",
                "matroska",
                "-",
            ],
            stdout=subprocess.PIPE,
        )
        age = subprocess.Popen(["age", "-r", recipient], stdin=ffmpeg.stdout, stdout=sink)
        assert ffmpeg.stdout is not None
        ffmpeg.stdout.close()
        if age.wait() or ffmpeg.wait():
            raise SystemExit("bench: ffmpeg | age failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(runs: int = 3) -> RecorderFigures:
    with tempfile.TemporaryDirectory(prefix="painav-bench-rec-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the broker drops to its own account and must reach its config
        video, audio = make_inputs(work)
        site = init_site(work / "site", "bench", broker_hosts=(HOST, "localhost"))
        add_device(site, "cart-01")
        port = free_port()
        out = work / "broker"
        write_broker_config(site, out, port=port, bind=HOST, user=broker_user())
        broker = Broker(site, out, port, out / "mosquitto.log")
        broker.start()
        recipient = next(
            line
            for line in site.paths.recipients.read_text().splitlines()
            if line.startswith("age1")
        )
        unit = make_unit(
            site,
            broker,
            work / "unit",
            width=1920,
            height=1080,
            frame_rate_hz=30.0,
            max_seconds=SECONDS + 5,
        )
        text = unit.config.read_text()
        # Replayed camera and the file microphone instead of the simulated generators.
        text = text.replace(
            '[camera]\nbackend = "simulated"',
            f'[camera]\nbackend = "replay"\nreplay_file = "{video}"',
        )
        text = text.replace(
            '[microphone]\nbackend = "simulated"',
            f'[microphone]\nbackend = "simulated"\nwav_file = "{audio}"',
        )
        unit.config.write_text(text)
        ours, theirs, paced, first, announced, pipeline = [], [], [], [], [], []
        try:
            unit.start()
            assert unit.process is not None
            pid = unit.process.pid
            time.sleep(2.0)  # settle after start-up
            cpu0 = process_cpu_s(pid)
            time.sleep(SECONDS)
            idle = process_cpu_s(pid) - cpu0
            for _ in range(runs):
                queue_before = len(unit.status()["queue"])
                announced_before = unit.status()["stop_to_announced_ms"]
                cpu0 = process_cpu_s(pid)
                unit.press()
                unit.wait_state("recording")
                time.sleep(SECONDS)
                unit.press()
                deadline = time.monotonic() + 30
                while len(unit.status()["queue"]) == queue_before:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench: no clip sealed\n{unit.log()}")
                    time.sleep(0.02)
                status = unit.status()
                # Until this clip is announced (the figure stays the last clip's until then).
                while status["stop_to_announced_ms"] in (None, announced_before) or (
                    status["state"] != "idle"
                ):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench: clip not announced\n{unit.log()}")
                    time.sleep(0.02)
                    status = unit.status()
                ours.append(process_cpu_s(pid) - cpu0)
                first.append(status["press_to_first_frame_ms"])
                announced.append(status["stop_to_announced_ms"])
                theirs.append(baseline_cpu_s(video, audio, recipient, work / "baseline.age"))
                paced.append(
                    baseline_cpu_s(video, audio, recipient, work / "paced.age", paced=True)
                )
                pipeline.append(pipeline_cpu_s(video, audio, recipient, work / "pipeline.age"))
            peak = peak_rss_mib(pid)
        finally:
            unit.stop()
            broker.stop()
    return RecorderFigures(pipeline, ours, theirs, paced, idle, first, announced, peak, SECONDS)


def table(fig: RecorderFigures) -> str:
    per_min = 60 / fig.seconds
    ours = statistics.median(fig.ours_cpu_s) * per_min
    pipeline = statistics.median(fig.pipeline_cpu_s) * per_min
    theirs = statistics.median(fig.theirs_cpu_s) * per_min
    paced = statistics.median(fig.paced_cpu_s) * per_min
    return "\n".join(
        [
            f"Recorder, median of {len(fig.ours_cpu_s)} clips of {fig.seconds:.0f} s of replayed "
            "1080p30 H.264 (~8 Mbit/s) + 48 kHz PCM; CPU seconds per minute of recording, "
            "against `ffmpeg -c copy -f matroska - \\| age -r …` on the same input in the same "
            "run: paced like a camera (`ffmpeg -re`) and reading the file as fast as it can.",
            "",
            "| measure | painav | paced ref. | ratio | unpaced ref. | ratio | target |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| daemon process CPU, press → announced (real-time capture included) | {ours:.2f} s "
            f"| {paced:.2f} s | **{ours / paced:.2f}×** | {theirs:.2f} s | {ours / theirs:.2f}× "
            "| ≤ 1.25× paced |",
            f"| daemon process CPU while idle (not recording), for comparison "
            f"| {fig.idle_cpu_s * per_min:.2f} s | | | | | |",
            f"| recording pipeline alone (mux, encrypt, sign, write, fsync; unpaced) "
            f"| {pipeline:.2f} s | | | {theirs:.2f} s | **{pipeline / theirs:.2f}×** | |",
            f"| press → first frame in the clip | {statistics.median(fig.first_frame_ms):.0f} ms "
            "| | | | | ≤ 150 ms |",
            f"| stop → announcement published | {statistics.median(fig.announced_ms):.0f} ms "
            "| | | | | ≤ 500 ms |",
            f"| daemon peak memory (VmHWM) | {fig.peak_rss_mib:.0f} MiB | | | | | ≤ 150 MiB |",
        ]
    )


if __name__ == "__main__":
    figures = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(figures)
    print(table(figures))
