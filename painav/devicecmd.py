"""``painav device …``: run the bedside daemon, press its button, show its status."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = commands.add_parser("device", help="the bedside unit's daemon and its controls")
    sub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/painav/device.toml"),
        help="the unit's config (default: %(default)s)",
    )
    run = sub.add_parser("run", parents=[common], help="run the daemon (systemd runs this)")
    run.set_defaults(handler="painav.devicecmd:run")
    press = sub.add_parser("press", parents=[common], help="press the button (simulated units)")
    press.add_argument("--long", action="store_true", help="a long press: discard the recording")
    press.set_defaults(handler="painav.devicecmd:press")
    status = sub.add_parser("status", parents=[common], help="state, queue and last error")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler="painav.devicecmd:status")


def _fail(message: str) -> int:
    print(f"painav: error: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError, load_config
    from daemon.control import ControlError
    from daemon.hardware.base import HardwareError
    from daemon.hardware.factory import make_button, make_camera, make_light, make_microphone
    from daemon.outbox import OutboxError
    from daemon.sdnotify import setup_logging
    from daemon.service import Hardware, Service

    try:
        cfg = load_config(args.config)
        setup_logging()
        hardware = Hardware(
            camera=make_camera(cfg.camera),
            microphone=make_microphone(cfg.microphone),
            button=make_button(cfg.button),
            light=make_light(cfg.light),
        )
    except (ConfigError, HardwareError) as exc:
        return _fail(str(exc))
    try:
        service = Service(cfg, hardware)
    except (ControlError, OutboxError) as exc:
        hardware.close()
        return _fail(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.run(stop)
    return 0


def _control(args: argparse.Namespace, **request: Any) -> dict[str, Any]:
    from daemon.config import load_config
    from daemon.control import ControlClient

    cfg = load_config(args.config)
    client = ControlClient(cfg.control.socket, device_id=cfg.unit.device_id)
    return client.request(**request)


def press(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError
    from daemon.control import ControlError

    try:
        _control(args, cmd="press", long=args.long)
    except (ConfigError, ControlError) as exc:
        return _fail(str(exc))
    print("long press sent" if args.long else "press sent")
    return 0


def status(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError
    from daemon.control import ControlError

    try:
        answer = _control(args, cmd="status")
    except (ConfigError, ControlError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    queue = answer["queue"]
    mb = answer["free_bytes"] / 1e6
    lines = [
        f"unit        {answer['device_id']} ({'online' if answer['connected'] else 'OFFLINE'})",
        f"state       {answer['state']}"
        + (f", clip {answer['clip_id']}" if answer["clip_id"] else ""),
        f"armed for   {answer['participant'] or '(nobody: clips are unassigned)'}",
        f"queue       {len(queue)} clip(s) waiting for the hospital",
        f"free space  {mb:,.0f} MB",
        f"camera      {'present' if answer['camera_present'] else 'MISSING'}",
        f"microphone  {'present' if answer['microphone_present'] else 'MISSING'}",
        f"clock       {_clock(answer)}",
        f"last error  {answer['last_error'] or 'none'}",
        f"refused     {_refusal(answer['last_refusal'])}",
        f"qc verdict  {_verdict(answer.get('last_verdict'), answer.get('record_again', False))}",
    ]
    if answer.get("press_to_first_frame_ms") is not None:
        lines.append(
            f"last clip   press→first frame {answer['press_to_first_frame_ms']:.0f} ms, "
            f"stop→announced {answer.get('stop_to_announced_ms') or 0:.0f} ms"
        )
    print("\n".join(lines))
    return 0


def _clock(answer: dict[str, Any]) -> str:
    if answer["clock_synced"]:
        return "synchronised"
    if answer["require_clock_sync"]:
        return "NOT SYNCHRONISED: every press is refused until NTP has set the clock"
    return "not synchronised (allowed by [recorder] require_clock_sync = false)"


def _verdict(verdict: dict[str, Any] | None, record_again: bool) -> str:
    if not verdict:
        return "none yet"
    reasons = f" ({', '.join(verdict['reasons'])})" if verdict["reasons"] else ""
    text = f"{verdict['verdict'].upper()}{reasons} for clip {verdict['clip_id']}"
    text += f", {verdict['pass']} check at {verdict['issued_at']}"
    if record_again:
        text += "; the light asks to record it again"
    return text


def _refusal(refusal: dict[str, str] | None) -> str:
    return f"{refusal['reason']} at {refusal['at']}" if refusal else "none"
