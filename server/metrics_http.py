"""The monitoring endpoint of a hospital service: Prometheus ``/metrics`` and ``/healthz``.

Built from prometheus-client's parts (its WSGI app for the exposition, its threading WSGI
server) with one route added: ``/healthz`` answers 200 ``ok`` while the service's health check
passes and 503 with one line saying why when it does not. prometheus-client's own
``start_http_server`` cannot add a route (it serves the metrics at every path), hence the
composition. Beyond loopback it speaks TLS 1.2+ and asks every client for a certificate the
site root issued itself (Prometheus's ``tls_config``; not a unit's, which the device CA issued);
the handshake happens on the request's thread, so a client that stalls in it holds no one up.

>>> endpoint = MetricsEndpoint(config.metrics, registry, health, client_ca=config.tls.ca)
>>> endpoint.start()   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from protocol.metrics_config import MetricsSection

__all__ = ["Health", "MetricsEndpoint", "MetricsEndpointError", "new_registry"]

log = logging.getLogger("painav.metrics")

Health = Callable[[], str | None]
"""A health check: None while healthy, else one short line saying what is wrong."""

_REQUEST_TIMEOUT_S = 10.0  # a client that stops talking is dropped after this


class MetricsEndpointError(OSError):
    """The endpoint cannot start (port taken, TLS files unreadable); the message is one line."""


def new_registry() -> CollectorRegistry:
    """A registry of its own (so that two services in one process, as in the tests, never
    share one) with the standard process, platform and garbage-collector metrics."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's request handler, logging to the debug log instead of stderr, with a timeout;
    over TLS, it admits only client certificates the client CA issued itself."""

    timeout = _REQUEST_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        issuers: list[x509.Name] | None = getattr(self.server, "client_issuers", None)
        if issuers is None or not isinstance(self.connection, ssl.SSLSocket):
            return
        self.connection.do_handshake()  # here, on the request's thread, within the timeout
        der = self.connection.getpeercert(binary_form=True)
        # The CA's own certificates only: a unit's certificate chains to the same root through
        # the device CA, and a unit has no business reading the hospital's metrics.
        if der is None or x509.load_der_x509_certificate(der).issuer not in issuers:
            raise ssl.SSLError("client certificate not issued by the client CA itself")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: " + format, *args)


def _app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path != "/healthz":
            return _text(start_response, "404 Not Found", "not found: /metrics or /healthz")
        if environ.get("REQUEST_METHOD") != "GET":
            return _text(start_response, "405 Method Not Allowed", "GET only")
        try:
            problem = health()
        except Exception as exc:  # a check that breaks says so, rather than 500 and a trace
            problem = f"health check failed: {type(exc).__name__}: {exc}"
        if problem is None:
            return _text(start_response, "200 OK", "ok")
        return _text(start_response, "503 Service Unavailable", " ".join(problem.split()))

    return app


def _text(start_response: Callable[..., Any], status: str, line: str) -> list[bytes]:
    body = line.encode() + b"\n"
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    start_response(status, headers)
    return [body]


def _tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED  # only clients with a certificate from the site CA
    context.load_cert_chain(certfile=cert, keyfile=key)
    context.load_verify_locations(cafile=client_ca)
    return context


class MetricsEndpoint:
    """``/metrics`` from *registry* and ``/healthz`` from *health*, where *section* says, on a
    daemon thread from :meth:`start` to :meth:`stop`. With TLS, clients must present a
    certificate from the section's ``client_ca``, else from *client_ca*."""

    def __init__(
        self,
        section: MetricsSection,
        registry: CollectorRegistry,
        health: Health,
        *,
        client_ca: Path | None = None,
    ) -> None:
        self.section = section
        self._app = _app(registry, health)
        self._tls = (
            (section.cert, section.key, section.client_ca or client_ca)
            if section.uses_tls
            else None
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the endpoint is, e.g. ``https://10.1.2.3:9464``."""
        host = self.section.listen
        shown = f"[{host}]" if host.version == 6 else str(host)
        return f"{'https' if self._tls else 'http'}://{shown}:{self.section.port}"

    def start(self) -> None:
        """Listen and serve; :class:`MetricsEndpointError` if it cannot."""
        if self._server is not None:
            return
        where = f"metrics endpoint {self.url}"
        context, issuers = None, None
        if self._tls is not None:
            cert, key, ca = self._tls
            if cert is None or key is None or ca is None:
                raise MetricsEndpointError(f"{where}: TLS needs [metrics] cert, key and client_ca")
            try:
                context = _tls_context(cert, key, ca)
                issuers = [c.subject for c in x509.load_pem_x509_certificates(ca.read_bytes())]
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise MetricsEndpointError(
                    f"{where}: cannot load {cert}, {key} or {ca}: {exc}"
                ) from exc
        family = socket.AF_INET6 if self.section.listen.version == 6 else socket.AF_INET

        class Server(ThreadingWSGIServer):
            address_family = family
            client_issuers = issuers

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client refused in the handshake (no certificate from the site CA) or gone
                # mid-request: one debug line, not socketserver's trace on stderr.
                log.debug("metrics endpoint: request from %s failed", client_address, exc_info=True)

        try:
            server = make_server(
                str(self.section.listen),
                self.section.port,
                self._app,
                server_class=Server,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise MetricsEndpointError(f"{where}: cannot listen: {exc.strerror or exc}") from exc
        if context is not None:
            # Handshake on first read, in the request's thread: never in the accepting one.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics", kwargs={"poll_interval": 0.5}, daemon=True
        )
        self._thread.start()
        log.info("%s serving /metrics and /healthz", where)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
