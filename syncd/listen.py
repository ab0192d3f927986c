"""Listening sockets for syncd's HTTP endpoints (the receiver, the daemon's /metrics)."""

from __future__ import annotations

import socket

from .errors import UserError


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a UserError naming the address and what to do."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "choose another serve_port (or --port)"
        ) from exc
    sock.set_inheritable(True)
    return sock
