"""The dataset page's numbers: participants per group, and a few key features pain vs control
(no I/O: the page hands in what the catalog holds)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["KEY_FEATURES", "FeatureSummary", "summarise"]

KEY_FEATURES: Final = {
    "F0semitoneFrom27.5Hz_sma3nz_amean": "F0, mean (semitones from 27.5 Hz)",
    "loudness_sma3_amean": "Loudness, mean",
    "jitterLocal_sma3nz_amean": "Jitter, mean",
    "pspi_proxy_mp_mean": "PSPI proxy (MediaPipe), mean",
    "face_share": "Share of frames with a face",
}
"""The features shown by group: by their name in the feature sets, with a label."""


@dataclass(frozen=True)
class FeatureSummary:
    label: str
    by_group: Mapping[str, tuple[int, float | None, float | None]]  # group: (n, mean, sd)


def summarise(clips: Iterable[tuple[str, Mapping[str, object]]]) -> list[FeatureSummary]:
    """*clips* as (group, every feature value of the clip by name): each key feature's clip
    count, mean and standard deviation per group."""
    values: dict[str, dict[str, list[float]]] = {k: {} for k in KEY_FEATURES}
    for group, features in clips:
        for key in KEY_FEATURES:
            value = features.get(key)
            if isinstance(value, int | float):
                values[key].setdefault(group, []).append(float(value))
    rows = []
    for key, label in KEY_FEATURES.items():
        by_group = {}
        for group in ("pain", "control"):
            sample = values[key].get(group, [])
            mean = statistics.fmean(sample) if sample else None
            sd = statistics.stdev(sample) if len(sample) > 1 else None
            by_group[group] = (len(sample), mean, sd)
        rows.append(FeatureSummary(label, by_group))
    return rows
