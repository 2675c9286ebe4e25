"""Voice features: openSMILE's eGeMAPSv02, per clip (88 functionals) and per 10 ms frame (25
low-level descriptors), at one analysis sample rate, with the provenance to trust them later.

openSMILE resamples the audio to the analysis rate itself (``Smile(resample=True)``): results at
48 kHz and 16 kHz differ (57 of 88 functionals by more than 10 %), so every result records the
rate it was computed at, and a study uses one. The input is float32 in [-1, 1], as openSMILE's
Python API wants (it multiplies by 32768 into int16; an int16 array overflows)::

    voice = VoiceExtractor(analysis_rate_hz=16_000)
    features = voice.extract(audio.samples, audio.sample_rate_hz, start_s=audio.start_s)
    features.functionals.values["F0semitoneFrom27.5Hz_sma3nz_amean"]
    parquet = features.lld.to_parquet()  # bytes, one row per 10 ms frame

openSMILE is imported when the first extractor is made, not with this module.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_ANALYSIS_RATE_HZ",
    "Functionals",
    "LowLevelDescriptors",
    "VoiceExtractor",
    "VoiceFeatures",
    "VoiceProvenance",
]

DEFAULT_ANALYSIS_RATE_HZ = 16_000
TOOL = "opensmile"
FEATURE_SET = "eGeMAPS"
FEATURE_SET_VERSION = "v02"
FRAME_TIME_COLUMN = "frame_time_s"
RATE_COLUMN = "analysis_rate_hz"


@dataclass(frozen=True)
class VoiceProvenance:
    """Where a voice result came from: enough to tell whether two results are comparable.

    *config_hash* is the SHA-256 of everything that changes the numbers: the tool and its
    version, the feature set, its level, the analysis rate, how the input is prepared, and the
    text of openSMILE's configuration files for the set.
    """

    feature_set: str  # "eGeMAPS"
    feature_set_version: str  # "v02"
    level: str  # "functionals" or "lld"
    tool: str  # "opensmile"
    tool_version: str
    analysis_rate_hz: int
    config_hash: str

    @property
    def feature_set_name(self) -> str:
        """openSMILE's name for the set, e.g. ``eGeMAPSv02``."""
        return f"{self.feature_set}{self.feature_set_version}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "feature_set": self.feature_set,
            "feature_set_version": self.feature_set_version,
            "level": self.level,
            "tool": self.tool,
            "tool_version": self.tool_version,
            "analysis_rate_hz": self.analysis_rate_hz,
            "config_hash": self.config_hash,
        }


@dataclass(frozen=True)
class Functionals:
    """The clip's eGeMAPSv02 functionals (88 values), by openSMILE's feature names, in its
    order."""

    provenance: VoiceProvenance
    values: Mapping[str, float]


@dataclass(frozen=True)
class LowLevelDescriptors:
    """eGeMAPSv02's 25 low-level descriptors per frame (10 ms hop), as columns.

    *frame_times_s* is each frame's start on the clip's clock (the audio's start plus
    openSMILE's frame time); *columns* maps each descriptor name to its float32 values.
    """

    provenance: VoiceProvenance
    frame_times_s: npt.NDArray[np.float64]
    columns: Mapping[str, npt.NDArray[np.float32]] = field(repr=False)

    @property
    def frame_count(self) -> int:
        return len(self.frame_times_s)

    def to_parquet(self) -> bytes:
        """The table as Parquet bytes: ``frame_time_s``, ``analysis_rate_hz`` (on every row),
        then one float32 column per descriptor; the provenance is in the schema's metadata
        (key ``painav.voice``, JSON)."""
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        arrays: dict[str, Any] = {
            FRAME_TIME_COLUMN: pa.array(self.frame_times_s, pa.float64()),
            RATE_COLUMN: pa.array(
                np.full(self.frame_count, self.provenance.analysis_rate_hz, np.int32), pa.int32()
            ),
        }
        for name, values in self.columns.items():
            arrays[name] = pa.array(values, pa.float32())
        table = pa.table(arrays).replace_schema_metadata(
            {"painav.voice": json.dumps(self.provenance.as_dict(), sort_keys=True)}
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()


@dataclass(frozen=True)
class VoiceFeatures:
    functionals: Functionals
    lld: LowLevelDescriptors


def _config_files_hash(config_path: Path) -> str:
    """SHA-256 over the feature set's configuration folder and openSMILE's shared includes."""
    digest = hashlib.sha256()
    folders = [config_path.parent, config_path.parent.parent.parent / "shared"]
    for folder in folders:
        for path in sorted(folder.glob("*.conf*")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class VoiceExtractor:
    """eGeMAPSv02 with openSMILE at one analysis rate; reusable for any number of clips.

    *analysis_rate_hz* is the rate openSMILE analyses at (it resamples the input to it);
    keyword-only, in Hz. Not thread-safe: use one extractor per thread.
    """

    def __init__(self, *, analysis_rate_hz: int = DEFAULT_ANALYSIS_RATE_HZ) -> None:
        import opensmile  # type: ignore[import-untyped]

        if analysis_rate_hz <= 0:
            raise ValueError(f"analysis_rate_hz must be positive, not {analysis_rate_hz}")
        self.analysis_rate_hz = analysis_rate_hz
        feature_set = opensmile.FeatureSet.eGeMAPSv02
        self._functionals = opensmile.Smile(
            feature_set,
            opensmile.FeatureLevel.Functionals,
            sampling_rate=analysis_rate_hz,
            resample=True,
        )
        self._lld = opensmile.Smile(
            feature_set,
            opensmile.FeatureLevel.LowLevelDescriptors,
            sampling_rate=analysis_rate_hz,
            resample=True,
        )
        files_hash = _config_files_hash(Path(self._functionals.config_path))
        self.provenance_functionals = self._provenance(
            "functionals", opensmile.__version__, files_hash
        )
        self.provenance_lld = self._provenance("lld", opensmile.__version__, files_hash)

    def _provenance(self, level: str, version: str, files_hash: str) -> VoiceProvenance:
        settings = {
            "tool": TOOL,
            "tool_version": version,
            "feature_set": FEATURE_SET,
            "feature_set_version": FEATURE_SET_VERSION,
            "level": level,
            "analysis_rate_hz": self.analysis_rate_hz,
            "resample": True,
            "input": "mono float32 in [-1, 1], channels averaged",
            "config_files_sha256": files_hash,
        }
        encoded = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
        return VoiceProvenance(
            feature_set=FEATURE_SET,
            feature_set_version=FEATURE_SET_VERSION,
            level=level,
            tool=TOOL,
            tool_version=version,
            analysis_rate_hz=self.analysis_rate_hz,
            config_hash=hashlib.sha256(encoded).hexdigest(),
        )

    @staticmethod
    def _check(samples: npt.NDArray[Any], sample_rate_hz: int) -> npt.NDArray[np.float32]:
        if samples.dtype != np.float32:
            raise TypeError(
                f"voice: audio must be float32 in [-1, 1], not {samples.dtype} "
                "(openSMILE scales by 32768 and an integer array overflows)"
            )
        if samples.ndim != 1:
            raise ValueError(f"voice: audio must be mono (one dimension), not {samples.shape}")
        if sample_rate_hz <= 0:
            raise ValueError(f"voice: sample rate must be positive, not {sample_rate_hz}")
        if not samples.size:
            raise ValueError("voice: the audio holds no samples")
        return samples

    def functionals(self, samples: npt.NDArray[np.float32], sample_rate_hz: int) -> Functionals:
        """The 88 eGeMAPSv02 functionals of mono float32 *samples* at *sample_rate_hz*."""
        signal = self._check(samples, sample_rate_hz)
        frame = self._functionals.process_signal(signal, sample_rate_hz)
        row = frame.iloc[0]
        values = {str(name): float(row[name]) for name in frame.columns}
        return Functionals(self.provenance_functionals, MappingProxyType(values))

    def lld(
        self, samples: npt.NDArray[np.float32], sample_rate_hz: int, *, start_s: float = 0.0
    ) -> LowLevelDescriptors:
        """The 25 descriptors per 10 ms frame; frame times are shifted by *start_s* (the
        audio's start on the clip's clock)."""
        signal = self._check(samples, sample_rate_hz)
        frame = self._lld.process_signal(signal, sample_rate_hz)
        starts = frame.index.get_level_values("start")
        times = np.asarray(starts.total_seconds(), dtype=np.float64) + start_s
        columns = {
            str(name): np.ascontiguousarray(frame[name].to_numpy(), dtype=np.float32)
            for name in frame.columns
        }
        return LowLevelDescriptors(self.provenance_lld, times, MappingProxyType(columns))

    def extract(
        self, samples: npt.NDArray[np.float32], sample_rate_hz: int, *, start_s: float = 0.0
    ) -> VoiceFeatures:
        """Functionals and low-level descriptors of one clip's audio."""
        return VoiceFeatures(
            self.functionals(samples, sample_rate_hz),
            self.lld(samples, sample_rate_hz, start_s=start_s),
        )
