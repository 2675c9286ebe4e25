"""A test that needs something of the machine: skipped on a developer's machine that lacks it,
failed in CI (``CI=true``), where every suite must run and a skip would hide a failure."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["missing"]


def missing(what: str) -> NoReturn:
    """Skip (or, in CI, fail) because this machine lacks *what*."""
    if os.environ.get("CI"):
        pytest.fail(f"CI machine lacks {what}", pytrace=False)
    pytest.skip(f"this machine lacks {what}")
