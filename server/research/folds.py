"""Cross-validation folds by participant, balanced by group: a model is never tested on a
person it was trained on. Deterministic: the same participants give the same folds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["assign_folds"]


def assign_folds(participants: Iterable[tuple[str, str]], k: int = 5) -> dict[str, int]:
    """Fold 0..k-1 for each ``(pseudonym, group)``.

    Within each group the participants are put in an order fixed by a hash of the pseudonym
    (not alphabetical, which follows enrolment) and dealt round the folds; each group starts
    where the previous one stopped, so fold sizes differ by at most one overall and within each
    group.
    """
    if k < 2:
        raise ValueError("at least two folds")
    by_group: dict[str, list[str]] = {}
    for pseudonym, group in participants:
        by_group.setdefault(group, []).append(pseudonym)
    folds: dict[str, int] = {}
    dealt = 0
    for group in sorted(by_group):
        order = sorted(by_group[group], key=lambda p: hashlib.sha256(p.encode()).hexdigest())
        for pseudonym in order:
            folds[pseudonym] = dealt % k
            dealt += 1
    return folds
