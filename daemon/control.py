"""The unit's local control socket: ``painav device press`` and ``painav device status``.

A Unix stream socket in the service's runtime directory; one JSON request line, one JSON reply
line. It drives the simulated button (development, the demo, tests) and reports status to IT.

Each socket belongs to one unit. Several daemons on one host (a test machine, a bench) must each
have their own: a daemon holds a lock beside its socket for as long as it runs and refuses to
start on a socket another live daemon holds, and every request names the unit it is meant for,
so a press can never reach another unit's recorder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ControlClient", "ControlError", "ControlServer"]

_MAX_REQUEST = 4096

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(RuntimeError):
    """The daemon's control socket is unreachable or answered with an error."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    handle_request_json: Handler
    owner: str


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(_MAX_REQUEST)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            meant_for = request.get("device_id", self.server.owner)
            if meant_for != self.server.owner:
                raise ValueError(
                    f"this control socket belongs to unit {self.server.owner}, not {meant_for}"
                )
            reply = self.server.handle_request_json(request)
        except (ValueError, KeyError) as exc:
            reply = {"ok": False, "error": str(exc)}
        reply["device_id"] = self.server.owner
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer:
    """Serves *handler* for unit *owner* on *path* (mode 0660) in a background thread.

    Raises :class:`ControlError` if another live daemon holds *path*.
    """

    def __init__(self, path: Path, handler: Handler, *, owner: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _hold_lock(path)
        path.unlink(missing_ok=True)  # a socket left by a killed daemon: the lock was free
        old = os.umask(0o117)
        try:
            self._server = _Server(str(path), _RequestHandler)
        except OSError as exc:
            self._lock.close()
            raise ControlError(f"{path}: cannot listen: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        self._server.handle_request_json = handler
        self._server.owner = owner
        self._path = path
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._path.unlink(missing_ok=True)
        self._lock.close()  # released last: nobody takes the path while we still serve it


def _hold_lock(path: Path) -> Any:
    """An open, exclusively locked ``<socket>.lock``; the kernel frees it when we die."""
    lock = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 held for the run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        holder = "another painav daemon"
        with contextlib.suppress(ControlError, KeyError):
            answer = ControlClient(path, timeout_s=2.0).request(cmd="status")
            holder = f"unit {answer['device_id']} (pid {answer.get('pid', '?')})"
        raise ControlError(
            f"{path}: control socket in use by {holder}; give each unit on this host "
            "a [control] socket of its own"
        ) from None
    return lock


class ControlClient:
    """Talks to the daemon of unit *device_id* (if given, requests reach no other unit)."""

    def __init__(self, path: Path, timeout_s: float = 5.0, *, device_id: str | None = None) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._device_id = device_id

    def request(self, **request: Any) -> dict[str, Any]:
        if self._device_id is not None:
            request["device_id"] = self._device_id
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(str(self._path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                reply = sock.makefile("rb").readline(1 << 20)
        except FileNotFoundError:
            raise ControlError(f"{self._path}: no daemon running (no control socket)") from None
        except OSError as exc:
            raise ControlError(f"{self._path}: {exc.strerror or exc}") from None
        try:
            answer = json.loads(reply)
        except ValueError:
            raise ControlError(f"{self._path}: the daemon sent no valid answer") from None
        if not isinstance(answer, dict):
            raise ControlError(f"{self._path}: the daemon sent no valid answer")
        if not answer.get("ok", False):
            raise ControlError(f"daemon: {answer.get('error', 'request failed')}")
        if self._device_id is not None and answer.get("device_id") != self._device_id:
            raise ControlError(
                f"{self._path}: answered by unit {answer.get('device_id')}, not {self._device_id}"
            )
        return answer
