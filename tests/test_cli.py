"""The ``painav`` command: clip verify/decrypt for data managers, and the demo."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from painav.cli import main
from protocol.envelope import EnvelopeWriter
from protocol.signing import SigningKey, sign_clip
from protocol.x25519 import X25519Identity

PLAINTEXT = b"not really a video, but bytes all the same\n" * 5000


@pytest.fixture
def clip(tmp_path: Path) -> dict[str, Path]:
    """A signed clip, its unit's public key, and the data key, as files."""
    identity = X25519Identity.generate()
    key = SigningKey.generate()
    clip_path = tmp_path / "clip.age"
    with clip_path.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as env:
        env.write(PLAINTEXT)
    signature, _ = sign_clip(key, clip_path, "cart-01-20261127T101500Z-ab12", "cart-01")
    (tmp_path / "clip.age.minisig").write_text(signature.to_text())
    pub = tmp_path / "unit.pub"
    key.public_key.save(pub)
    data_key = tmp_path / "data-key.txt"
    data_key.write_text(f"# created: test\n{identity}\n")
    return {"clip": clip_path, "pub": pub, "key": data_key, "dir": tmp_path}


def test_verify_accepts_a_good_clip(
    clip: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["clip", "verify", str(clip["clip"]), "--pubkey", str(clip["pub"])]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "cart-01" in out


def test_verify_checks_the_expected_clip_id(
    clip: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["clip", "verify", str(clip["clip"]), "--pubkey", str(clip["pub"])]
    assert main([*args, "--clip-id", "cart-01-other"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painav: error:") and err.count("\n") == 1


def test_verify_rejects_a_flipped_bit(
    clip: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(clip["clip"].read_bytes())
    data[-100] ^= 0x04
    clip["clip"].write_bytes(bytes(data))
    assert main(["clip", "verify", str(clip["clip"]), "--pubkey", str(clip["pub"])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painav: error:") and err.count("\n") == 1


def test_decrypt_writes_the_plaintext(clip: dict[str, Path]) -> None:
    out = clip["dir"] / "clip.bin"
    args = ["clip", "decrypt", str(clip["clip"]), "-i", str(clip["key"]), "-o", str(out)]
    assert main([*args, "--pubkey", str(clip["pub"])]) == 0
    assert out.read_bytes() == PLAINTEXT
    assert main(args) == 1  # refuses to overwrite
    assert main([*args, "--force"]) == 0


@pytest.mark.parametrize("cut", [1, 70_000])
def test_decrypt_of_a_truncated_clip_leaves_no_file(
    clip: dict[str, Path], cut: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = clip["clip"].read_bytes()
    clip["clip"].write_bytes(data[:-cut])
    out = clip["dir"] / "clip.bin"
    args = ["clip", "decrypt", str(clip["clip"]), "-i", str(clip["key"]), "-o", str(out)]
    assert main(args) == 1
    assert "truncated" in capsys.readouterr().err
    assert sorted(p.name for p in clip["dir"].iterdir()) == sorted(
        ["clip.age", "clip.age.minisig", "unit.pub", "data-key.txt"]
    )


def test_decrypt_with_the_wrong_key_says_so(
    clip: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    clip["key"].write_text(f"{X25519Identity.generate()}\n")
    out = clip["dir"] / "clip.bin"
    assert main(["clip", "decrypt", str(clip["clip"]), "-i", str(clip["key"]), "-o", str(out)])
    assert "no identity matches" in capsys.readouterr().err
    assert not out.exists()


def test_decrypt_with_a_malformed_identity_file(
    clip: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    clip["key"].write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    out = clip["dir"] / "clip.bin"
    assert main(["clip", "decrypt", str(clip["clip"]), "-i", str(clip["key"]), "-o", str(out)])
    err = capsys.readouterr().err
    assert str(clip["key"]) in err and err.count("\n") == 1


@pytest.fixture
def request_cleanup() -> Iterator[list[Path]]:
    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_runs_end_to_end_and_keeps_its_files(request_cleanup: list[Path]) -> None:
    """The console script, as `make demo` runs it: press to hospital store, nothing left over."""
    painav = Path(sys.executable).with_name("painav")
    # Not under tmp_path: pytest's folders are private, and Mosquitto started as root reads its
    # files as the mosquitto account (the demo says so and stops when it cannot).
    parent = Path(tempfile.mkdtemp(prefix="painav-demo-test-"))
    parent.chmod(0o755)
    request_cleanup.append(parent)
    work = parent / "work"
    result = subprocess.run(
        [str(painav), "demo", "--workdir", str(work), "--clips", "3", "--units", "2"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 clip(s) stored and receipted, 0 quarantined" in result.stdout
    assert "PAIN-0001" in result.stdout and "CTRL-0001" in result.stdout  # armed units
    assert "dataset of 2 participants, 3 clips" in result.stdout
    assert (work / "export" / "participants.tsv").read_text().count("\n") == 3
    assert "video h264" in result.stdout and "audio pcm_s16le" in result.stdout
    store = list((work / "hospital" / "store").rglob("*.age"))
    assert len(store) == 3
    for unit in ("cart-01", "cart-02"):
        assert not list((work / "units" / unit / "outbox").rglob("*.age"))
    mode = stat.S_IMODE((work / "site" / "extraction" / "data-key.txt").stat().st_mode)
    assert mode == 0o400
    # No plaintext media anywhere: Matroska's EBML magic appears in no file the demo wrote.
    for path in work.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert b"\x1a\x45\xdf\xa3" not in path.read_bytes(), path


def test_every_listed_user_error_class_exists() -> None:
    """The CLI's one-line error handling names classes by module: keep the names true."""
    import importlib

    from painav.cli import _ERRORS

    for module_name, class_name in _ERRORS:
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, Exception)


def test_verify_takes_the_units_key_from_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from provisioning.devices import add_device, revoke_device
    from provisioning.site import init_site

    site = init_site(tmp_path / "site", "ward7", broker_hosts=("127.0.0.1",))
    add_device(site, "cart-01")
    key = SigningKey.from_file(site.paths.devices_dir / "cart-01" / "keys" / "signing.key")
    clip_path = tmp_path / "clip.age"
    with clip_path.open("wb") as f, EnvelopeWriter(f, [X25519Identity.generate().recipient]) as e:
        e.write(PLAINTEXT)
    signature, _ = sign_clip(key, clip_path, "cart-01-20261127T101500Z-ab12", "cart-01")
    (tmp_path / "clip.age.minisig").write_text(signature.to_text())
    registry = str(site.paths.registry)
    assert main(["clip", "verify", str(clip_path), "--registry", registry]) == 0
    assert "from unit cart-01" in capsys.readouterr().out
    revoke_device(site, "cart-01")
    capsys.readouterr()
    assert main(["clip", "verify", str(clip_path), "--registry", registry]) == 1
    assert capsys.readouterr().err == (f"painav: error: {registry}: no active unit 'cart-01'\n")


@pytest.mark.parametrize(
    ("command", "default"),
    [
        (["receiver", "units"], "/etc/painav/receiver.toml"),
        (["receiver", "events"], "/etc/painav/receiver.toml"),
        (["device", "status"], "/etc/painav/device.toml"),
        (["device", "press"], "/etc/painav/device.toml"),
    ],
)
def test_help_names_the_config_read_without_config(
    command: list[str], default: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """IT runs 'painav receiver units' with no --config: the help says which file it reads."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert default in " ".join(capsys.readouterr().out.split())


def _media_clip(folder: Path) -> dict[str, Path]:
    """A real clip from the unit's clip writer, and the data key that opens it."""
    from daemon.hardware.sim_mic import voice_like_signal
    from tests.server.extract.clips import synthetic_clip

    made = synthetic_clip(folder / "clip.age", voice_like_signal(48_000, 1), seconds=2.0)
    key = folder / "data-key.txt"
    key.write_text(f"{made.identity}\n")
    return {"clip": made.path, "key": key, "dir": folder}


@pytest.mark.integration  # ffprobe
def test_decrypt_remuxes_a_clip_so_players_see_its_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import av

    from server.extract.media import decrypt_to_memory

    clip = _media_clip(tmp_path)
    out = tmp_path / "clip.mkv"
    args = ["clip", "decrypt", str(clip["clip"]), "-i", str(clip["key"]), "-o", str(out)]
    assert main(args) == 0
    assert "remuxed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.age", "clip.mkv", "data-key.txt"]
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert abs(float(probe.stdout) - 2.0) < 0.05

    with clip["clip"].open("rb") as f:
        live = decrypt_to_memory(f, [clip["key"].read_text().strip()])

    def packets(source: str | io.BytesIO) -> list[tuple[str, int | None, bool, bytes]]:
        with av.open(source, "r") as container:
            return [
                (p.stream.type, p.pts, p.is_keyframe, bytes(p)) for p in container.demux() if p.size
            ]

    assert packets(str(out)) == packets(io.BytesIO(live))  # copied, not re-encoded


def test_decrypt_of_broken_media_is_one_line_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = X25519Identity.generate()
    clip_path = tmp_path / "clip.age"
    with clip_path.open("wb") as f, EnvelopeWriter(f, [identity.recipient]) as env:
        env.write(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 400)  # Matroska's magic, then noise
    key = tmp_path / "data-key.txt"
    key.write_text(f"{identity}\n")
    out = tmp_path / "clip.mkv"
    assert main(["clip", "decrypt", str(clip_path), "-i", str(key), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painav: error:") and "clip media" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.age", "data-key.txt"]


@pytest.mark.parametrize("cut", [1, 70_000])
def test_decrypt_of_a_truncated_media_clip_leaves_no_file(
    tmp_path: Path, cut: int, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = _media_clip(tmp_path)
    clip["clip"].write_bytes(clip["clip"].read_bytes()[:-cut])
    out = tmp_path / "clip.mkv"
    assert main(["clip", "decrypt", str(clip["clip"]), "-i", str(clip["key"]), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painav: error:") and "fails authentication" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.age", "data-key.txt"]
