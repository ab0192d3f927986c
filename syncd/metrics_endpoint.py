"""The loopback endpoint of a running daemon (`metrics_address`): `/metrics` in Prometheus
text format and `/health` (200 or 503 with the reason, as JSON).

A Starlette app on uvicorn inside the daemon's own event loop, rather than prometheus_client's
threaded server: both are already dependencies (the receiver), `/health` sits beside
`/metrics`, the pending gauges are refreshed from the state at scrape time, and an endpoint
that answers proves the event loop itself is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import UserError
from .listen import listening_socket
from .metrics import CONTENT_TYPE, Metrics

log = structlog.get_logger("syncd.metrics")


def metrics_app(metrics: Metrics, refresh: Callable[[], Awaitable[object]]) -> Starlette:
    async def scrape(_request: Request) -> Response:
        await refresh()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def health(_request: Request) -> JSONResponse:
        verdict = metrics.health
        failures = verdict.consecutive_failures()
        body = {
            "status": "ok" if verdict.healthy else "unhealthy",
            "consecutive_failures": failures,
            "max_failures": verdict.max_failures,
            "period_seconds": verdict.period,
            "last_error": verdict.last_error,
            "conditions": verdict.conditions,
        }
        return JSONResponse(body, 200 if verdict.healthy else 503)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"]), Route("/health", health)])


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        # SIGTERM/SIGINT/SIGHUP belong to the daemon, which stops this server itself.
        return contextlib.nullcontext()


@contextlib.asynccontextmanager
async def serving_metrics(
    address: str, metrics: Metrics, refresh: Callable[[], Awaitable[object]]
) -> AsyncIterator[str | None]:
    """Serve the endpoint on `address` ("host:port") while the block runs; yields its url,
    or None when `address` is empty (the endpoint is off)."""
    if not address:
        yield None
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = listening_socket(host, int(port))
    except UserError as error:
        cause = error.__cause__
        reason = getattr(cause, "strerror", None) or str(cause or error)
        raise UserError(
            f"cannot listen on metrics_address {address}: {reason}; choose another address "
            'in the config file (or set metrics_address = "" to turn the endpoint off)'
        ) from None
    bound_port = sock.getsockname()[1]
    url = f"http://{address.rpartition(':')[0]}:{bound_port}"
    config = uvicorn.Config(
        metrics_app(metrics, refresh), lifespan="off", log_level="warning", access_log=False
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics endpoint")
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        log.info("metrics endpoint listening", metrics=f"{url}/metrics", health=f"{url}/health")
        yield url
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        sock.close()
