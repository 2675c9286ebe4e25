"""The unit's local control socket: ``painav device press`` and ``painav device status``.

A Unix stream socket in the service's runtime directory; one JSON request line, one JSON reply
line. It drives the simulated button (development, the demo, tests) and reports status to IT.
"""

from __future__ import annotations

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


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(_MAX_REQUEST)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            reply = self.server.handle_request_json(request)
        except (ValueError, KeyError) as exc:
            reply = {"ok": False, "error": str(exc)}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer:
    """Serves *handler* on *path* (mode 0660) in a background thread."""

    def __init__(self, path: Path, handler: Handler) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a socket left by a killed daemon
        old = os.umask(0o117)
        try:
            self._server = _Server(str(path), _RequestHandler)
        finally:
            os.umask(old)
        self._server.handle_request_json = handler
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


class ControlClient:
    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self._path = path
        self._timeout_s = timeout_s

    def request(self, **request: Any) -> dict[str, Any]:
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
        return answer
