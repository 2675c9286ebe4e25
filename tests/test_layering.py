"""The README's layout table, enforced: import-linter checks the contracts in pyproject.toml.

Run by hand with ``.venv/bin/lint-imports``; here the same check runs in-process (about a
second), so ``make check`` and ``make test`` both fail when a layer imports what it must not.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import importlinter.cli
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def _config() -> dict[str, object]:
    config: dict[str, object] = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return config


def _root_packages() -> list[str]:
    packages = _config()["root_packages"]
    assert isinstance(packages, list)
    return [str(p) for p in packages]


def _lint(project: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """import-linter's exit status for *project*'s pyproject.toml, run from *project*."""
    # lint_imports puts the working directory first on sys.path: give it a copy to change.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(project)
    # Its logging set-up is a dictConfig that disables every logger that exists already, which
    # would silence the loggers later tests capture: leave logging as it is.
    monkeypatch.setattr(importlinter.cli, "_configure_logging", lambda verbose: None)
    return lint_imports(
        config_filename=str(project / "pyproject.toml"), no_cache=True, no_logo=True
    )


def test_the_layout_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lint(ROOT, monkeypatch) == 0, "a layering contract is broken: see the output above"


def test_every_top_level_package_is_under_contract() -> None:
    # A new package (the MQTT link, the extraction worker) gets its row in the layout table
    # and its contract, or this fails.
    packages = {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name != "tests" and not p.parent.name.startswith(".")
    }
    assert packages == set(_root_packages())


@pytest.mark.parametrize(
    ("importer", "statement"),
    [
        ("protocol/envelope.py", "import daemon.outbox"),
        ("daemon/outbox.py", "from server import store"),
        ("server/store.py", "import daemon"),
        ("provisioning/pki.py", "import painav.cli"),
        ("provisioning/broker.py", "from link import tls"),
        ("link/tls.py", "import server.store"),
        ("daemon/recorder.py", "from daemon import announcer"),
    ],
)
def test_a_forbidden_import_is_caught(
    importer: str, statement: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of the packages with one forbidden import added, inside a function as they hide."""
    for package in _root_packages():
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    # grimp finds each package by its import spec: the copy, not the installed tree.
    for package in _root_packages():
        monkeypatch.delitem(sys.modules, package, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _lint(tmp_path, monkeypatch) == 0, "the unchanged copy should pass"
    with (tmp_path / importer).open("a") as f:
        f.write(f"\n\ndef _forbidden() -> None:\n    {statement}  # noqa\n")
    assert _lint(tmp_path, monkeypatch) == 1
