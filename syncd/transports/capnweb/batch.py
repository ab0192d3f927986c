"""Transport `capnweb-batch`: Cap'n Web over HTTP batch, one POST per round trip.

The POST body is newline-delimited messages (import ids start at 1 in every POST); the answer
body holds a `resolve`/`reject` for every pulled call. Redirects are never followed, so a
share secret in a body never travels to another address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import httpx

from syncd import __version__

from ..base import RejectedError, RetryableError
from ..http import parse_retry_after
from ..tls import verify_setting
from .codec import CodecError, JsError, dumps
from .protocol import (
    KEY_HEADER,
    PATH,
    Call,
    aborted,
    excerpt,
    frame_calls,
    key_refused,
    parse_answer,
    scrub,
)
from .share import CapnwebTransport


class CapnwebBatchTransport(CapnwebTransport):
    name: ClassVar[str] = "capnweb-batch"

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None,
        timeout: float,
        verify: bool | str | Path,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + PATH
        self._key = key
        self._owns_client = client is None
        headers = {
            "user-agent": f"syncd/{__version__}",
            "content-type": "text/plain; charset=utf-8",
        }
        if key is not None:
            headers[KEY_HEADER] = key
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            verify=verify_setting(verify),
            follow_redirects=False,
            headers=headers,
        )

    async def round_trip(self, calls: list[Call], *, secret: str | None = None) -> list[Any]:
        what = f"POST {PATH}"
        body = "\n".join(dumps(message) for message in frame_calls(calls, first_id=1))
        try:
            response = await self._client.post(self.url, content=body.encode("utf-8"))
        except httpx.TransportError as exc:
            raise RetryableError(scrub(f"{what}: {type(exc).__name__}: {exc}", secret)) from None
        status = response.status_code
        if status != 200:
            raise self._refusal(what, response, secret)
        answers: dict[int, Any] = {}
        for line in response.text.split("\n"):
            if not line:
                continue
            try:
                answer = parse_answer(line)
            except CodecError as exc:
                raise RetryableError(f"{what}: not acknowledged: {exc}") from None
            if answer.kind == "abort":
                said = scrub(aborted(answer.value), secret)
                raise RetryableError(f"{what}: receiver aborted the batch: {said}")
            value = answer.value
            if answer.kind == "reject" and not isinstance(value, JsError):
                value = JsError("Error", str(value))
            answers[answer.import_id] = value  # type: ignore[index]
        missing = [calls[i].method for i in range(len(calls)) if i + 1 not in answers]
        if missing:
            raise RetryableError(f"{what}: not acknowledged: no answer to {', '.join(missing)}")
        return [answers[i + 1] for i in range(len(calls))]

    def _refusal(self, what: str, response: httpx.Response, secret: str | None) -> Exception:
        status = response.status_code
        server_says = scrub(excerpt(response.text), secret)
        if status == 401:
            return key_refused(what, self._key, server_says)
        if 300 <= status < 400:
            location = scrub(response.headers.get("location", "nowhere"), secret)
            # Not followed, and not the batch's fault: retried until url is fixed.
            return RetryableError(
                f"{what}: receiver redirects ({status}) to {location}; "
                "set url to the final address (redirects are not followed)"
            )
        if status == 429 or status >= 500:
            return RetryableError(
                f"{what}: {status}: {server_says}", retry_after=parse_retry_after(response)
            )
        if 200 <= status < 300:
            return RetryableError(f"{what}: not acknowledged: {status} {server_says}")
        return RejectedError(f"{what}: {status}: {server_says}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
