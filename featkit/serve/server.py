"""Running the app: bind the socket first (so a taken port is a one-line error, not a log), then uvicorn on it."""

from __future__ import annotations

import logging
import socket

from featkit.errors import FeatkitError
from featkit.serve.app import ServeConfig, create_app
from featkit.serve.library import Library


class ServeError(FeatkitError):
    """The server cannot start as asked."""


def bind(config: ServeConfig) -> socket.socket:
    """A listening socket at ``config.host``:``config.port`` (port 0: one the system picks).

    Raises:
        ServeError: the address cannot be listened on (taken port, address not on this machine, ...).
    """
    host = config.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, config.port), family=family, backlog=512)
    except OSError as exc:
        hint = "; choose another --port" if exc.errno in (98, 48, 10048) else ""
        raise ServeError(f"Cannot listen on {address(config.host, config.port)}: {exc.strerror or exc}{hint}.") \
            from None


def address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def serve(library: Library, config: ServeConfig, sock: socket.socket) -> None:
    """Serve ``library`` on ``sock`` until interrupted (Ctrl-C stops it cleanly)."""
    import uvicorn

    port = sock.getsockname()[1]
    if port != config.port:  # port 0: the Host check needs the port the system chose
        from dataclasses import replace

        config = replace(config, port=port)
    app = create_app(library, config)
    server = uvicorn.Server(uvicorn.Config(app, log_level=logging.WARNING, access_log=False, server_header=False,
                                           proxy_headers=False, lifespan="on", timeout_keep_alive=5))
    server.run(sockets=[sock])
