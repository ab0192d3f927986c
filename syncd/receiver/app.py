"""The receiver as one ASGI app (`syncd serve`), and the command that runs it."""

from __future__ import annotations

import ipaddress
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware

from ..archive import ArchiveStore, StoreUnavailable, open_archive, redact
from ..listen import listening_socket
from ..systemd import notify
from .a2a import a2a_routes
from .body_limit import DEFAULT_MAX_BODY, BodyLimit
from .pages import SecurityHeaders, page_routes
from .rest import rest_routes
from .rpc import rpc_routes
from .unavailable import store_unavailable

log = structlog.get_logger("syncd.receiver")


def build_app(
    store: ArchiveStore,
    *,
    base_url: str | None = None,
    key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> Starlette:
    """The receiver's routes over `store`. `base_url` prefixes share urls (None: the request's
    own scheme and host); `key`, when set, is required to create shares and to see the list
    of sessions."""
    routes = [
        *rest_routes(store, base_url=base_url, key=key),
        *a2a_routes(store, base_url=base_url, key=key),
        *rpc_routes(store, base_url=base_url, key=key),
        *page_routes(store, key=key),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(BodyLimit, max_body=max_body)],
        exception_handlers={StoreUnavailable: store_unavailable},
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(config: Any) -> int:
    """Run the receiver on config.serve_host:config.serve_port over config.store (default:
    the archive file) until interrupted."""
    store_name = config.store or config.archive
    sock = listening_socket(config.serve_host, config.serve_port)
    try:
        store = await open_archive(store_name, pool_size=config.store_pool_size)
    except BaseException:
        sock.close()
        raise
    try:
        app = build_app(store, key=config.key)
        shares = await store.list_shares()
        host, port = sock.getsockname()[:2]
        log.info(
            "serving",
            url=f"http://{host}:{port}",
            store=redact(store_name),
            shares=len(shares),
            pages=f"http://{host}:{port}/",
            listing=f"http://{host}:{port}/api/share",
        )
        for share in shares:
            log.info("archived share", **share)
        if not _is_loopback(config.serve_host) and config.key is None:
            log.warning(
                "listening beyond loopback without a key: anyone who can reach this port can "
                "create shares; set key in the config file",
                host=config.serve_host,
            )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                # One size limit for a request, whether it comes as a body or a message.
                ws_max_size=DEFAULT_MAX_BODY,
            )
        )
        notify("READY=1")  # the archive is open and migrated, the socket bound
        await server.serve(sockets=[sock])
        notify("STOPPING=1")
    finally:
        sock.close()
        await store.close()
    return 0
