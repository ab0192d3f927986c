"""The receiver's answer when the archive cannot be reached: 503 with Retry-After, so senders
keep their batches and try again later instead of dead-lettering them."""

from __future__ import annotations

import structlog
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from ..archive import StoreUnavailable

log = structlog.get_logger("syncd.receiver")


def unavailable_response(exc: StoreUnavailable) -> Response:
    # The reason stays in the log: it names the database's address.
    log.warning("archive unavailable, answered 503", error=str(exc))
    return JSONResponse(
        {"error": f"archive unavailable; retry in {exc.retry_after} s"},
        status_code=503,
        headers={"retry-after": str(exc.retry_after)},
    )


async def store_unavailable(_connection: HTTPConnection, exc: Exception) -> Response:
    """Starlette's exception handler for StoreUnavailable raised by any HTTP route."""
    assert isinstance(exc, StoreUnavailable)
    return unavailable_response(exc)
