"""The OpenFace 2.x adapter against a stand-in ``FeatureExtraction`` (openface_standin.py, which
checks the flags, the memory-file input and the tmpfs output folder, and writes OpenFace's CSV):
kept frames, AU values, PSPI with AU45 for AU43, provenance, and nothing left behind: no output
folder, no process, no plaintext on disk, whether the tool succeeds, fails or hangs."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.hardware.sim_mic import voice_like_signal
from protocol.extract_config import FeaturesSection
from server.extract.face_openface import (
    FEATURE_SET_VERSION,
    OUTPUT_FLAGS,
    PSPI_COLUMN,
    OpenFaceExtractor,
    OpenFaceFailed,
    OpenFaceNotConfigured,
    OpenFaceOutputError,
    OpenFaceTimeout,
)
from server.extract.media import ClipMedia
from tests.support.environment import missing

from . import openface_standin as standin
from .clips import synthetic_clip

STANDIN = Path(standin.__file__).resolve()
SHM = Path("/dev/shm")


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A fresh folder on tmpfs for the adapter's output folders; it must be empty after a run."""
    if not SHM.is_dir():
        missing("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="painav-test-openface-", dir=SHM))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def plaintext() -> bytes:
    """A stand-in clip: Matroska's magic, then random bytes no file should ever hold."""
    return standin.MATROSKA_MAGIC + os.urandom(256 * 1024)


def extractor(runtime_dir: Path, **options: float) -> OpenFaceExtractor:
    return OpenFaceExtractor(STANDIN, runtime_dir=runtime_dir, **options)


def open_memory_files() -> list[str]:
    links = []
    for name in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue
    return [link for link in links if link.startswith("/memfd:painav-clip")]


def test_the_stand_in_is_executable_and_names_itself_one() -> None:
    assert os.access(STANDIN, os.X_OK)
    assert "STAND-IN" in (standin.__doc__ or "") and "stand-in" in standin.VERSION_LINE


@pytest.mark.integration
def test_keeps_tracked_confident_frames_with_their_aus_and_pspi(
    runtime_dir: Path, plaintext: bytes
) -> None:
    openface = extractor(runtime_dir)
    result = openface.extract(plaintext, duration_s=2.0)

    frames = result.frames
    # success 1 and confidence >= 0.8: frames 1, 4 and 5 (5 sits on the threshold)
    assert frames.total == 6 and frames.kept == 3
    assert frames.columns["frame"].tolist() == [1, 4, 5]
    assert frames.columns["timestamp"].tolist() == pytest.approx([0.0, 0.1, 0.133])
    np.testing.assert_allclose(frames.columns["AU04_r"], [2.5, 0.0, 1.0])
    np.testing.assert_allclose(frames.columns["AU45_r"], [0.5, 5.0, 0.0])
    np.testing.assert_allclose(frames.columns["AU12_r"], [0.0, 0.0, 4.0])
    assert frames.columns["AU04_c"].tolist() == [True, False, True]
    assert frames.columns["AU28_c"].tolist() == [False, False, False]
    assert "AU28_r" not in frames.columns  # OpenFace has a presence for AU28, no intensity
    assert len([c for c in frames.columns if c.endswith("_r")]) == 17
    assert len([c for c in frames.columns if c.endswith("_c")]) == 18
    np.testing.assert_allclose(frames.columns["pose_Rx"], [0.1] * 3, rtol=1e-6)
    np.testing.assert_allclose(frames.columns["gaze_angle_y"], [0.2] * 3, rtol=1e-6)
    assert not any(name.startswith("eye_lmk") for name in frames.columns)
    # AU4 + max(AU6, AU7) + max(AU9, AU10) + AU45 (for AU43)
    np.testing.assert_allclose(
        frames.columns[PSPI_COLUMN], [2.5 + 1.75 + 0.5 + 0.5, 0.0 + 3.0 + 1.5 + 5.0, 1.0]
    )

    summary = result.summary
    assert summary["frames_total"] == 6 and summary["frames_kept"] == 3
    assert summary["kept_share"] == pytest.approx(0.5)
    assert summary["AU04_r_mean"] == pytest.approx(3.5 / 3)
    assert summary["AU04_r_p90"] == pytest.approx(float(np.percentile([2.5, 0.0, 1.0], 90)))
    assert summary["AU04_c_share"] == pytest.approx(2 / 3)
    assert summary[f"{PSPI_COLUMN}_mean"] == pytest.approx((5.25 + 9.5 + 1.0) / 3)
    assert summary[f"{PSPI_COLUMN}_p90"] == pytest.approx(np.percentile([5.25, 9.5, 1.0], 90))

    assert list(runtime_dir.iterdir()) == []  # the output folder is gone
    assert open_memory_files() == []


@pytest.mark.integration
def test_provenance_and_parquet(runtime_dir: Path, plaintext: bytes) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    openface = extractor(runtime_dir)
    provenance = openface.provenance
    assert provenance.tool == "openface"
    assert provenance.tool_version == "2.2.0"  # the stand-in prints one; OpenFace does not
    assert provenance.binary_sha256 == hashlib.sha256(STANDIN.read_bytes()).hexdigest()
    assert provenance.flags == OUTPUT_FLAGS == ("-aus", "-pose", "-gaze")
    assert provenance.min_confidence == 0.8
    assert provenance.feature_set_version == FEATURE_SET_VERSION
    assert len(provenance.config_hash) == 64
    stricter = extractor(runtime_dir, min_confidence=0.95)
    assert stricter.provenance.config_hash != provenance.config_hash

    table = pq.read_table(io.BytesIO(openface.extract(plaintext, duration_s=1).frames.to_parquet()))
    assert table.num_rows == 3
    assert table.column(PSPI_COLUMN).to_pylist() == pytest.approx([5.25, 9.5, 1.0])
    assert table.schema.field("AU04_c").type == "bool"
    assert b"painav.openface" in table.schema.metadata
    assert stricter.extract(plaintext, duration_s=1).frames.columns["frame"].tolist() == [1]
    assert list(runtime_dir.iterdir()) == []


@pytest.mark.integration
def test_a_failing_tool_raises_and_leaves_nothing(
    runtime_dir: Path, plaintext: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENFACE_STANDIN_MODE", "fail")
    with pytest.raises(OpenFaceFailed, match=r"status 1.*stand-in failure"):
        extractor(runtime_dir).extract(plaintext, duration_s=1)
    assert list(runtime_dir.iterdir()) == []
    assert open_memory_files() == []


@pytest.mark.integration
def test_no_csv_is_an_output_error(
    runtime_dir: Path, plaintext: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENFACE_STANDIN_MODE", "nocsv")
    with pytest.raises(OpenFaceOutputError, match="no CSV"):
        extractor(runtime_dir).extract(plaintext, duration_s=1)
    assert list(runtime_dir.iterdir()) == []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # killed; waiting for its new parent to reap it


@pytest.mark.integration
def test_a_hanging_tool_is_killed_with_its_children_at_the_timeout(
    runtime_dir: Path, plaintext: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("OPENFACE_STANDIN_MODE", "hang")
    monkeypatch.setenv("OPENFACE_STANDIN_PIDS", str(pids_file))
    openface = extractor(runtime_dir, timeout_base_s=2.0, timeout_per_clip_s=0.5)
    assert openface.timeout_s(2.0) == pytest.approx(3.0)
    started = time.monotonic()
    with pytest.raises(OpenFaceTimeout, match="killed") as caught:
        openface.extract(plaintext, duration_s=2.0)
    assert isinstance(caught.value, TimeoutError)
    assert time.monotonic() - started < 20
    child, grandchild, out_dir = pids_file.read_text().split()
    assert Path(out_dir).parent == runtime_dir and not Path(out_dir).exists()
    assert list(runtime_dir.iterdir()) == []
    deadline = time.monotonic() + 5
    while not (_gone(int(child)) and _gone(int(grandchild))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(int(child)) and _gone(int(grandchild))
    assert open_memory_files() == []


@pytest.mark.integration
def test_no_file_on_disk_holds_the_plaintext(runtime_dir: Path, plaintext: bytes) -> None:
    since = time.time() - 1
    extractor(runtime_dir).extract(plaintext, duration_s=1)
    needle = plaintext[100_000:100_064]
    roots = {Path(tempfile.gettempdir()), Path.cwd()}
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = Path(folder, name)
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode) or info.st_mtime < since:
                        continue
                    if info.st_size < len(needle) or info.st_size > 64 << 20:
                        continue
                    assert needle not in path.read_bytes(), f"{path} holds the plaintext"
                except (PermissionError, FileNotFoundError):
                    continue


@pytest.mark.integration
def test_a_decrypted_clip_reaches_the_tool(runtime_dir: Path, tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "c.age", voice_like_signal(48_000, 1), seconds=1.0)
    with clip.path.open("rb") as f:
        media = ClipMedia.decrypt(f, [clip.identity])
    facts = media.facts()
    result = extractor(runtime_dir).extract(media.data, duration_s=facts.duration_s)
    assert result.frames.kept == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["-f", "/etc/hostname", "-out_dir", "/dev/shm", "-of", "c", *OUTPUT_FLAGS], "descriptor"),
        (["-f", "/proc/self/fd/0", "-out_dir", "/dev/shm", "-of", "c", "-aus"], "-pose"),
        (["-f", "/proc/self/fd/0", "-out_dir", "/", "-of", "c", *OUTPUT_FLAGS, "-simalign"], "no"),
    ],
)
def test_the_stand_in_refuses_what_openface_must_not_get(argv: list[str], complaint: str) -> None:
    done = subprocess.run([str(STANDIN), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "STAND-IN CHECK FAILED" in done.stderr and complaint in done.stderr


def test_not_configured_is_a_result_not_an_error(tmp_path: Path, runtime_dir: Path) -> None:
    unset = OpenFaceExtractor.from_config(FeaturesSection(dir=tmp_path))
    assert isinstance(unset, OpenFaceNotConfigured) and "not set" in unset.reason

    missing = tmp_path / "FeatureExtraction"
    absent = OpenFaceExtractor.from_config(FeaturesSection(dir=tmp_path, openface_bin=missing))
    assert isinstance(absent, OpenFaceNotConfigured) and str(missing) in absent.reason

    shutil.copyfile(STANDIN, missing)  # a copy without the executable bit
    missing.chmod(0o644)
    plain = OpenFaceExtractor.from_config(FeaturesSection(dir=tmp_path, openface_bin=missing))
    assert isinstance(plain, OpenFaceNotConfigured) and "not an executable" in plain.reason


@pytest.mark.integration
def test_configured_from_the_features_section(tmp_path: Path, runtime_dir: Path) -> None:
    features = FeaturesSection(dir=tmp_path, openface_bin=STANDIN, openface_min_confidence=0.9)
    openface = OpenFaceExtractor.from_config(features, runtime_dir=runtime_dir)
    assert isinstance(openface, OpenFaceExtractor)
    assert openface.min_confidence == 0.9 and openface.runtime_dir == runtime_dir


def test_the_default_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.extract.face_openface import default_runtime_dir

    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_runtime_dir() == SHM
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_runtime_dir() == Path("/run/user/1000")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/painav-extract-1:/run/other")
    assert default_runtime_dir() == Path("/run/painav-extract-1")


def test_an_output_folder_on_disk_is_refused(tmp_path: Path) -> None:
    from server.extract.face_openface import _filesystem_type

    folder = tmp_path
    if _filesystem_type(folder) in ("tmpfs", "ramfs"):  # then a folder beside this file
        folder = Path(tempfile.mkdtemp(prefix=".openface-disk-", dir=Path(__file__).parent))
    try:
        if _filesystem_type(folder) in ("tmpfs", "ramfs"):
            missing("a folder on a disk file system")
        with pytest.raises(ValueError, match="memory filesystem"):
            OpenFaceExtractor(STANDIN, runtime_dir=folder)
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)


def test_parse_a_face_less_clip_and_a_broken_csv(runtime_dir: Path) -> None:
    openface = extractor(runtime_dir)
    empty = openface.parse(standin.csv_text([]))  # OpenFace on Linux: the header only
    assert empty.frames.kept == 0 and empty.frames.total == 0
    assert empty.summary["kept_share"] is None and empty.summary["AU04_r_mean"] is None
    assert empty.frames.to_parquet()

    text = standin.csv_text(standin.FRAMES[:1]).rstrip("\n") + ", 1.0\n"
    with pytest.raises(OpenFaceOutputError, match="fields"):
        openface.parse(text)
    with pytest.raises(OpenFaceOutputError, match="AU45_r"):
        openface.parse("frame, timestamp, confidence, success\n1, 0.0, 0.9, 1\n")
