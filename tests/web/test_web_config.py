"""``painav web run`` refuses a bad ``web.toml`` or a missing file with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from painav.cli import main
from provisioning.site import init_site
from provisioning.web import provision_web


@pytest.fixture
def config(tmp_path: Path) -> Path:
    site = init_site(tmp_path / "site", "ward7", broker_hosts=("127.0.0.1",))
    folder = provision_web(site, hosts=["127.0.0.1"], catalog_url=f"sqlite:///{tmp_path}/c.db",
                           features_dir=tmp_path / "f", registry=site.paths.registry,
                           credentials=site.dir / "web")  # fmt: skip
    return folder / "web.toml"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("port = 8443", "port = 84430"), "[http] port"),
        (("[metrics]", "[metrics]\ntokn_file = 'x'"), "tokn_file"),
        (("[features]", "[session]\nidle_timeout_s = 1\n\n[features]"), "idle_timeout_s"),
        (("registry.json", "missing.json"), "missing.json: cannot read the device registry"),
        (("tls.key", "missing.key"), "missing.key"),
    ],
)
def test_one_line_names_what_is_wrong(
    config: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], message: str
) -> None:
    text = config.read_text()
    assert edit[0] in text
    config.write_text(text.replace(edit[0], edit[1], 1))
    assert main(["web", "run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painav: error: ") and err.count("\n") == 1, err
    assert message in err
