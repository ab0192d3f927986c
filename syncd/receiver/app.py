"""The receiver as one ASGI app (`syncd serve`), and the command that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware

from ..archive import ArchiveStore, StoreUnavailable, open_archive
from ..config import Config
from ..errors import UserError
from ..listen import listening_socket
from ..redact import scrub
from ..systemd import notify
from ..urls import is_loopback_host
from .a2a import a2a_routes
from .body_limit import DEFAULT_MAX_BODY, BodyLimit
from .pages import SecurityHeaders, page_routes
from .rest import rest_routes
from .rpc import rpc_routes
from .slow_clients import deadline_protocol
from .unavailable import store_unavailable

log = structlog.get_logger("syncd.receiver")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Once asked to stop, how long answers under way may take to be sent: uvicorn would wait for
# every connection to close, and one whose client reads none of its answer never does.
STOP_GRACE_SECONDS = 10


def build_app(
    store: ArchiveStore,
    *,
    base_url: str | None = None,
    key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_live_streams: int | None = None,
    a2a_expected: bool = False,
) -> Starlette:
    """The receiver's routes over `store`. `base_url` prefixes share urls (None: the request's
    own scheme and host); `key`, when set, is required to create shares, to see the list of
    sessions and for every A2A call; `max_live_streams`: share pages' live streams open at
    once (None: no limit); `a2a_expected`: the config asks for A2A, so a missing A2A SDK is
    worth a warning."""
    routes = [
        *rest_routes(store, base_url=base_url, key=key),
        *a2a_routes(store, base_url=base_url, key=key, expected=a2a_expected),
        *rpc_routes(store, base_url=base_url, key=key),
        *page_routes(store, key=key, max_live_streams=max_live_streams),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(BodyLimit, max_body=max_body)],
        exception_handlers={StoreUnavailable: store_unavailable},
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would catch SIGINT/SIGTERM itself and raise it again once shut down, so the
        # process died of it (exit 130, 143). serve() hands them to handle_exit instead: a
        # clean stop exits 0, as `syncd run` does.
        yield


async def serve(config: Config) -> int:
    """Run the receiver on config.serve_host:config.serve_port over config.store (default:
    the archive file) until SIGINT or SIGTERM; 0 once stopped."""
    app_server: list[_Server] = []  # once there is one
    stopping = asyncio.Event()

    def stop(signum: int) -> None:
        stopping.set()
        for server in app_server:
            server.handle_exit(signum, None)

    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        await _serve(config, app_server, stopping)
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return 0


async def _serve(config: Config, app_server: list[_Server], stopping: asyncio.Event) -> None:
    store_name = config.store or config.archive
    public = not is_loopback_host(config.serve_host)
    if public and config.key is None and not config.serve_public:
        raise UserError(
            f"not listening on {config.serve_host} without a key: anyone who reaches it could "
            "create shares and list every archived session; set key in the config file, or "
            "serve_public = true (--public) to allow it on a trusted network"
        )
    sock = listening_socket(config.serve_host, config.serve_port)
    try:
        store = await open_archive(store_name, pool_size=config.store_pool_size)
    except BaseException:
        sock.close()
        raise
    try:
        app = build_app(
            store,
            key=config.key,
            max_live_streams=config.live_streams,
            a2a_expected=config.transport == "a2a",
        )
        shares = await store.list_shares()
        host, port = sock.getsockname()[:2]
        log.info(
            "serving",
            url=f"http://{host}:{port}",
            store=scrub(str(store_name)),
            shares=len(shares),
            pages=f"http://{host}:{port}/",
            listing=f"http://{host}:{port}/api/share",
        )
        for share in shares:
            log.info("archived share", **share)
        if public and config.key is None:
            log.warning(
                "listening beyond loopback without a key (serve_public): anyone who can reach "
                "this port can create shares and list every archived session",
                host=config.serve_host,
            )
        server = _Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                http=deadline_protocol(config.serve_header_timeout, config.serve_body_timeout),
                limit_concurrency=config.serve_max_connections,
                timeout_graceful_shutdown=STOP_GRACE_SECONDS,
                # One size limit for a request, whether it comes as a body or a message.
                ws_max_size=DEFAULT_MAX_BODY,
            )
        )
        app_server.append(server)
        if stopping.is_set():
            return
        notify("READY=1")  # the archive is open and migrated, the socket bound
        await server.serve(sockets=[sock])
        notify("STOPPING=1")
    finally:
        sock.close()
        await store.close()
