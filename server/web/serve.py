"""Serving the dashboard: uvicorn over HTTPS with the certificate the site root issued (TLS 1.2
and newer), until SIGTERM."""

from __future__ import annotations

import logging
import ssl

import uvicorn

from protocol.registry import Registry
from protocol.web_config import WebConfig

from ..catalog import Catalog
from .app import create_app
from .context import Web

__all__ = ["serve"]

log = logging.getLogger("painav.web")


def serve(config: WebConfig) -> None:
    """Run until stopped; the catalog's schema is migrated on start, like the receiver's.
    A missing registry or TLS file stops it at once, with one line naming the file."""
    Registry.load(config.site.registry)  # read again on each fleet page, when it changes
    for path in (config.http.cert, config.http.key):
        with open(path, "rb"):
            pass
    with Catalog(config.catalog.url, actor="web") as catalog:
        app = create_app(Web(config, catalog))
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.http.listen,
                port=config.http.port,
                ssl_certfile=str(config.http.cert),
                ssl_keyfile=str(config.http.key),
                ssl_version=ssl.PROTOCOL_TLS_SERVER,
                proxy_headers=False,  # no proxy in front: the client address is the peer's
                server_header=False,
                log_level="info",
                access_log=False,
            )
        )
        log.info("dashboard on https://%s:%d/", config.http.listen, config.http.port)
        server.run()
