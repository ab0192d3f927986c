"""Transport `http`: opencode's share REST API (`/api/share`), as opencode's own share and
its server speak it.

Every answer is checked: only a 2xx carrying the expected JSON counts as acknowledged. Redirects
are never followed, so the share secret in a request body never travels to another address.
"""

from __future__ import annotations

import email.utils
import math
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from syncd import __version__
from syncd.transports.base import (
    Batch,
    Created,
    RejectedError,
    RetryableError,
    Share,
    ShareNotFoundError,
    Transport,
)
from syncd.transports.tls import verify_setting

MESSAGE_LIMIT = 300


class HttpTransport(Transport):
    name: ClassVar[str] = "http"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        verify: bool | str | Path,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            verify=verify_setting(verify),
            follow_redirects=False,
            headers={"user-agent": f"syncd/{__version__}"},
        )

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        # The REST API cannot carry data with the create call: the batch goes with sync().
        answer = await self._call("POST", "/api/share", {"sessionID": session_id}, secret=None)
        fields = {
            name: answer.get(name) if isinstance(answer, dict) else None
            for name in ("id", "secret", "url")
        }
        if not all(isinstance(value, str) and value for value in fields.values()):
            raise RetryableError(
                "POST /api/share: not acknowledged: answer lacks id, secret or url"
            )
        return Created(share=Share(**fields), synced=False)

    async def sync(self, share: Share, batch: Batch) -> None:
        path = f"/api/share/{quote(share.id, safe='')}/sync"
        body = {"secret": share.secret, "data": batch.items}
        # A receiver that knows the header applies a batch re-sent after a crash only once.
        answer = await self._call(
            "POST",
            path,
            body,
            secret=share.secret,
            not_found=True,
            headers={"Idempotency-Key": batch.key},
        )
        _require_success(answer, path)

    async def delete(self, share: Share) -> None:
        path = f"/api/share/{quote(share.id, safe='')}"
        try:
            answer = await self._call(
                "DELETE", path, {"secret": share.secret}, secret=share.secret, not_found=True
            )
        except ShareNotFoundError:
            return  # already gone: what delete was asked to achieve
        _require_success(answer, path)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        *,
        secret: str | None,
        not_found: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; returns the decoded JSON of a 2xx answer or raises the error the
        answer means. `not_found`: a 404 means the share is gone, not a wrong url."""
        what = f"{method} {path}"
        try:
            response = await self._client.request(
                method, self._base_url + path, json=body, headers=headers
            )
        except httpx.TransportError as e:
            raise RetryableError(_scrub(f"{what}: {type(e).__name__}: {e}", secret)) from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError:
                raise RetryableError(
                    f"{what}: not acknowledged: {status} answer is not JSON "
                    f"({response.headers.get('content-type', 'no content-type')})"
                ) from None
        server_says = _excerpt(_scrub(response.text, secret))
        if 300 <= status < 400:
            # Not followed (the secret would go along), and not the batch's fault: retried,
            # so the items wait in the state until url names the final address.
            location = response.headers.get("location", "nowhere")
            raise RetryableError(
                f"{what}: receiver redirects ({status}) to {_scrub(location, secret)}; "
                "set url to the final address (redirects are not followed)"
            )
        if status == 404 and not_found:
            raise ShareNotFoundError(f"{what}: share not found (404): {server_says}")
        if status == 429 or status >= 500:
            raise RetryableError(
                f"{what}: {status}: {server_says}", retry_after=parse_retry_after(response)
            )
        raise RejectedError(f"{what}: {status}: {server_says}")


def parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _require_success(answer: Any, path: str) -> None:
    if not (isinstance(answer, dict) and answer.get("success") is True):
        raise RetryableError(f"{path}: not acknowledged: answer lacks success=true")


def _excerpt(text: str) -> str:
    """The server's message on one line, short enough for a log line and a dead letter."""
    line = " ".join(text.split())
    if not line:
        return "(empty answer)"
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."


def _scrub(text: str, secret: str | None) -> str:
    # A server may echo the request body (and so the secret) in its error message.
    return text.replace(secret, "***") if secret else text
