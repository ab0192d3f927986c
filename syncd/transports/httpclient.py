"""The HTTP client every HTTP transport talks through (REST, capnweb batch, A2A).

Redirects are never followed: a share secret in a body must not travel to another address.
Answers are read only up to MAX_ANSWER bytes: a receiver's answers to create and sync are a
few hundred bytes, and a hostile or broken one (a huge Content-Length, an endless body) must
not grow syncd. Past the limit the call fails with AnswerTooLarge, an httpx transport error,
so that every transport handles it as the call going wrong, to be tried again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from .tls import verify_setting

MAX_ANSWER = 1024 * 1024


class AnswerTooLarge(httpx.TransportError):
    """The receiver's answer is larger than MAX_ANSWER: not read, not acknowledged."""


def http_client(
    *,
    timeout: float,
    verify: bool | str | Path,
    headers: dict[str, str],
    max_answer: int = MAX_ANSWER,
) -> httpx.AsyncClient:
    async def bound_answer(response: httpx.Response) -> None:
        """Refuse a declared length past `max_answer` before reading anything, and stop
        reading an undeclared one there."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_answer:
            raise AnswerTooLarge(
                f"answer of {int(declared)} bytes is larger than the {max_answer} syncd reads",
                request=response.request,
            )
        assert isinstance(response.stream, httpx.AsyncByteStream)  # an AsyncClient's answer
        response.stream = _Bounded(response.stream, response.request, max_answer)

    return httpx.AsyncClient(
        timeout=timeout,
        verify=verify_setting(verify),
        follow_redirects=False,
        headers=headers,
        event_hooks={"response": [bound_answer]},
    )


class _Bounded(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, request: httpx.Request, limit: int) -> None:
        self._stream = stream
        self._request = request
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._stream:
            read += len(chunk)
            if read > self._limit:
                raise AnswerTooLarge(
                    f"answer is larger than the {self._limit} bytes syncd reads",
                    request=self._request,
                )
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
