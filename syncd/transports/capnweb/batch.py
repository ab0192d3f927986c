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

from ...redact import scrub
from ...wire.capnweb.codec import CodecError, JsError, dumps
from ...wire.capnweb.protocol import PATH, Call, aborted, frame_calls, parse_answer
from ...wire.keys import KEY_HEADER
from ..base import RetryableError
from ..httpclient import MAX_ANSWER, http_client
from ..outcome import response_refusal, unreachable
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
        max_answer: int = MAX_ANSWER,
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
        self._client = client or http_client(
            timeout=timeout, verify=verify, headers=headers, max_answer=max_answer
        )

    async def round_trip(self, calls: list[Call], *, secret: str | None = None) -> list[Any]:
        what = f"POST {PATH}"
        body = "\n".join(dumps(message) for message in frame_calls(calls, first_id=1))
        content = body.encode("utf-8")
        try:
            response = await self._client.post(self.url, content=content)
        except httpx.TransportError as exc:
            raise unreachable(what, exc, [secret, self._key], sent=len(content)) from None
        if response.status_code != 200:
            if 200 <= response.status_code < 300:
                raise RetryableError(f"{what}: not acknowledged: {response.status_code}")
            raise response_refusal(what, response, secrets=[secret], key=self._key)
        answers: dict[int, Any] = {}
        for line in response.text.split("\n"):
            if not line:
                continue
            try:
                answer = parse_answer(line)
            except CodecError as exc:
                raise RetryableError(f"{what}: not acknowledged: {exc}") from None
            if answer.kind == "abort":
                said = scrub(aborted(answer.value), [secret, self._key])
                raise RetryableError(f"{what}: receiver aborted the batch: {said}")
            value = answer.value
            if answer.kind == "reject" and not isinstance(value, JsError):
                value = JsError("Error", str(value))
            answers[answer.import_id] = value  # type: ignore[index]
        missing = [calls[i].method for i in range(len(calls)) if i + 1 not in answers]
        if missing:
            raise RetryableError(f"{what}: not acknowledged: no answer to {', '.join(missing)}")
        return [answers[i + 1] for i in range(len(calls))]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
