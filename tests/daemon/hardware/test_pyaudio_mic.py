"""The PyAudio microphone against real PortAudio and ALSA, fed by ALSA's ``file`` plugin.

What the file plugin does (alsa-lib 1.2.8, PortAudio 19.6): over the ``null`` slave it is not
paced: PortAudio reads it as fast as it can, about 14 M frames/s, and ``infile`` is read once,
not looped; after its end the plugin hands out stale buffer contents, not silence. For a
real-time device the infile here is a FIFO that a writer thread fills one block each 20 ms:
the plugin's read() blocks until a block is there. Its ``input_buffer_adc_time`` is non-zero
and on CLOCK_MONOTONIC but carries no latency (the null slave reports no delay).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyaudio
import pytest

from daemon.hardware import alsa_messages
from daemon.hardware.base import AudioBlock, HardwareError
from daemon.hardware.pyaudio_mic import CaptureClock, PyAudioMicrophone
from tests.support.environment import missing

from .conftest import SPEECH_RATE_HZ

BLOCK = 320  # 20 ms at 16 kHz
BLOCK_NS = 20_000_000


def file_pcm(name: str, infile: Path) -> str:
    """An ALSA capture PCM that reads raw s16le from *infile* (and writes to /dev/null)."""
    options = f'slave.pcm "null"; file "/dev/null"; infile "{infile}"; format "raw"'
    return f"pcm.{name} {{ type file; {options} }}\n"


@pytest.fixture
def alsa_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.asoundrc PortAudio reads when PyAudio() initialises."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


class PacedWriter:
    """Feeds a FIFO one 20 ms block at a time, on the monotonic clock, like a sound card."""

    def __init__(self, fifo: Path, pcm: bytes) -> None:
        os.mkfifo(fifo)
        self.fd = os.open(fifo, os.O_RDWR)  # a reader may open it without blocking
        self.pcm = pcm
        self.written_ns: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic_ns()
        for k in range(len(self.pcm) // (2 * BLOCK)):
            delay_s = (start + k * BLOCK_NS - time.monotonic_ns()) / 1e9
            if self.stop.wait(max(0.0, delay_s)):
                return
            self.written_ns.append(time.monotonic_ns())
            os.write(self.fd, self.pcm[2 * BLOCK * k : 2 * BLOCK * (k + 1)])  # atomic: < PIPE_BUF

    def close(self) -> None:
        self.stop.set()
        if self.thread.ident is not None:
            self.thread.join()
        os.close(self.fd)


@pytest.fixture
def paced(alsa_home: Path, speech_raw: Path) -> Iterator[PacedWriter]:
    writer = PacedWriter(alsa_home / "mic.fifo", speech_raw.read_bytes())
    (alsa_home / ".asoundrc").write_text(
        file_pcm("painav_mic", alsa_home / "mic.fifo") + file_pcm("speech", speech_raw)
    )
    yield writer
    writer.close()


@pytest.fixture
def open_mic() -> Iterator[Callable[..., PyAudioMicrophone]]:
    """Makes microphones and closes them after the test, passed or failed: PortAudio counts
    initialisations, and one left open would keep the next test on the previous device list."""
    made: list[PyAudioMicrophone] = []

    def make(**options: Any) -> PyAudioMicrophone:
        made.append(PyAudioMicrophone(sample_rate_hz=SPEECH_RATE_HZ, **options))
        return made[-1]

    yield make
    for mic in made:
        mic.close()


def collect(mic: PyAudioMicrophone) -> tuple[list[AudioBlock], threading.Lock]:
    blocks: list[AudioBlock] = []
    lock = threading.Lock()

    def sink(block: AudioBlock) -> None:
        with lock:
            blocks.append(block)

    mic.start(sink)
    return blocks, lock


def test_captures_the_files_samples_through_portaudio(
    alsa_home: Path, speech_raw: Path, open_mic: Callable[..., PyAudioMicrophone]
):
    (alsa_home / ".asoundrc").write_text(file_pcm("speech", speech_raw))
    mic = open_mic(device="speech", channels=1)
    assert mic.present
    expected = speech_raw.read_bytes()
    blocks, lock = collect(mic)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with lock:
            if sum(len(b.pcm) for b in blocks) > len(expected):
                break
        time.sleep(0.01)
    mic.stop()
    captured = b"".join(b.pcm for b in blocks)
    assert len(captured) > len(expected)
    assert captured[: len(expected)] == expected  # every sample, in order
    assert {b.frames for b in blocks} == {BLOCK}
    mic.close()


def test_paced_capture_is_timestamped_by_sample_count_on_the_monotonic_clock(
    paced: PacedWriter, speech_raw: Path, open_mic: Callable[..., PyAudioMicrophone]
):
    mic = open_mic(device="painav")  # a substring of painav_mic
    blocks, lock = collect(mic)
    paced.thread.start()
    time.sleep(1.2)
    mic.stop()
    mic.stop()  # idempotent
    with lock:
        got = list(blocks)
    assert len(got) == pytest.approx(60, abs=6)  # 1.2 s of 20 ms blocks, paced
    assert b"".join(b.pcm for b in got) == speech_raw.read_bytes()[: 2 * BLOCK * len(got)]
    pts = [b.pts_ns for b in got]
    assert all(b > a for a, b in itertools.pairwise(pts))
    # The count, not the callback's jitter, spaces the blocks ...
    gaps = [b - a for a, b in itertools.pairwise(pts)]
    assert sum(abs(g - BLOCK_NS) > 2_000_000 for g in gaps) <= 2
    span_s = (pts[-1] - pts[0]) / 1e9
    assert span_s == pytest.approx((len(got) - 1) * 0.02, rel=0.02)
    # ... and each block's pts is when its first sample was "captured": a block's duration
    # before the sound card (the writer) completed it, within scheduling latency.
    late = sorted(p - (w - BLOCK_NS) for p, w in zip(pts, paced.written_ns, strict=False))
    assert -5_000_000 <= late[len(late) // 2] <= 30_000_000, late
    assert mic.overruns == 0
    mic.close()


def test_an_unknown_device_names_the_inputs_there_are(
    alsa_home: Path, speech_raw: Path, open_mic: Callable[..., PyAudioMicrophone]
):
    (alsa_home / ".asoundrc").write_text(file_pcm("speech", speech_raw))
    mic = open_mic(device="painav_mic")
    assert not mic.present
    with pytest.raises(HardwareError) as error:
        mic.start(lambda block: None)
    message = str(error.value)
    assert message.startswith("microphone: no input device matching 'painav_mic'")
    assert "available input devices: " in message and "'speech' (" in message
    mic.close()
    with pytest.raises(HardwareError, match="closed"):
        mic.start(lambda block: None)


def test_input_overflow_flags_count_as_overruns_and_restart_the_timeline(
    alsa_home: Path, speech_raw: Path, open_mic: Callable[..., PyAudioMicrophone]
):
    (alsa_home / ".asoundrc").write_text(file_pcm("speech", speech_raw))
    mic = open_mic(device="speech")
    blocks: list[AudioBlock] = []
    mic._sink = blocks.append  # as start() does, without PortAudio racing the calls below
    base = time.monotonic() - 0.6
    info = {"input_buffer_adc_time": base, "current_time": base, "output_buffer_dac_time": 0.0}
    mic._on_audio(b"\0" * 640, BLOCK, info, 0)
    info = dict(info, input_buffer_adc_time=base + 0.5)  # 480 ms of audio went missing
    mic._on_audio(b"\0" * 640, BLOCK, info, pyaudio.paInputOverflow)
    assert mic.overruns == 1
    assert blocks[1].pts_ns - blocks[0].pts_ns == pytest.approx(500_000_000, abs=1_000)
    mic.close()


def test_capture_clock_takes_the_earliest_observation_and_resyncs_on_loss():
    clock = CaptureClock(16_000, resync_s=0.1)
    # Observations late by 0-8 ms of jitter; the pts follow the sample count from the earliest.
    jitter_ms = [5, 1, 8, 0, 3, 2, 7, 0]
    pts = [clock.block_pts_ns(k * BLOCK_NS + j * 1_000_000, BLOCK) for k, j in enumerate(jitter_ms)]
    assert pts[3:] == [k * BLOCK_NS for k in range(3, 8)]
    assert all(b > a for a, b in itertools.pairwise(pts))
    # Samples lost without a flag: an observation far later than the count moves the origin.
    assert clock.block_pts_ns(8 * BLOCK_NS + 300_000_000, BLOCK) == 8 * BLOCK_NS + 300_000_000
    assert clock.resyncs == 1
    # A burst of blocks delivered at once (buffered at start) never goes backwards.
    burst = CaptureClock(16_000)
    stamps = [burst.block_pts_ns(1_000_000_000, BLOCK) for _ in range(4)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4


def write_asoundrc(home: Path, text: str) -> None:
    """Replace ~/.asoundrc by a new file (a new inode: alsa-lib notices the change at once)."""
    fresh = home / ".asoundrc.new"
    fresh.write_text(text)
    os.replace(fresh, home / ".asoundrc")


def test_a_microphone_plugged_in_after_start_up_is_found_by_present(
    alsa_home: Path, speech_raw: Path, open_mic: Callable[..., PyAudioMicrophone]
):
    write_asoundrc(alsa_home, file_pcm("speech", speech_raw))
    mic = open_mic(device="painav_mic", rescan_interval_s=0.5)
    assert not mic.present
    write_asoundrc(alsa_home, file_pcm("speech", speech_raw) + file_pcm("painav_mic", speech_raw))
    began = time.monotonic()
    assert not mic.present  # asked again within rescan_interval_s: the answer it had
    assert time.monotonic() - began < 0.01  # so a press stays fast
    time.sleep(0.5)
    assert mic.present  # PortAudio asked again, and the device is there
    blocks, lock = collect(mic)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with lock:
            if blocks:
                break
        time.sleep(0.01)
    mic.stop()
    assert blocks and blocks[0].pcm == speech_raw.read_bytes()[: len(blocks[0].pcm)]


def test_probing_for_devices_writes_nothing_to_stderr(
    alsa_home: Path,
    speech_raw: Path,
    open_mic: Callable[..., PyAudioMicrophone],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    write_asoundrc(alsa_home, file_pcm("speech", speech_raw))
    with caplog.at_level(logging.DEBUG, logger="daemon.hardware.alsa"):
        mic = open_mic(device="speech")
        assert mic.present
    assert capfd.readouterr().err == ""  # PortAudio probed every PCM ALSA knows, quietly
    probed = [r for r in caplog.records if r.name == "daemon.hardware.alsa"]
    assert probed and {r.levelno for r in probed} == {logging.DEBUG}  # in the log, not lost


def test_an_alsa_error_outside_a_probe_is_logged_as_a_warning(
    alsa_home: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
):
    alsa_messages.route()
    asound = ctypes.CDLL("libasound.so.2")
    pcm = ctypes.c_void_p()
    with caplog.at_level(logging.DEBUG, logger="daemon.hardware.alsa"):
        assert asound.snd_pcm_open(ctypes.byref(pcm), b"no_such_pcm", 1, 0) < 0
        with alsa_messages.probing():
            assert asound.snd_pcm_open(ctypes.byref(pcm), b"no_such_pcm", 1, 0) < 0
    assert capfd.readouterr().err == ""
    unknown = [r for r in caplog.records if "Unknown PCM" in r.getMessage()]
    assert [r.levelno for r in unknown] == [logging.WARNING, logging.DEBUG]


def test_messages_are_routed_under_memory_deny_write_execute(tmp_path: Path):
    """painav-device.service sets MemoryDenyWriteExecute=yes; the kernel's PR_SET_MDWE is the
    same rule, so the ctypes callbacks must not need writable and executable memory."""
    script = """
import ctypes, sys
if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
from daemon.hardware import alsa_messages
router = alsa_messages.route()
asound = ctypes.CDLL("libasound.so.2")
asound.snd_pcm_open(ctypes.byref(ctypes.c_void_p()), b"no_such_pcm", 1, 0)
sys.exit(0 if router.alsa else 1)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[3],
        timeout=60,
    )
    if done.returncode == 77:
        missing("PR_SET_MDWE (Linux 6.3+)")
    assert done.returncode == 0, done.stderr
    assert "Unknown PCM" in done.stderr and "ALSA lib" not in done.stderr  # the log's, not ALSA's
