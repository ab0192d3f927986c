"""Transport `http`: opencode's share REST API (`/api/share`), as opencode's own share and
its server speak it.

A 2xx answer to sync or delete with an empty or JSON body is an acknowledgement: opencode's
server answers `{}`, older share workers `{"success": true, "syncCount": N}`; a `success`
that is there but not true, or a body that is not JSON (a proxy's HTML page), is not one.
create must answer the share's id, secret and url. Redirects are never followed, so the share
secret in a request body never travels to another address. The key, when configured, goes
with every call, as `syncd serve` asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from syncd import __version__

from .. import jsontext
from ..model import Batch, Created, Share
from ..wire.keys import KEY_HEADER
from .base import ReceiverProbe, RetryableError, ShareNotFoundError, Transport, UnsendableError
from .httpclient import http_client
from .outcome import created_share, response_refusal, unreachable

# A share id no server holds: reading it shows whether the receiver answers at all.
PROBE_SHARE_ID = "syncd-probe"


class HttpTransport(Transport):
    name: ClassVar[str] = "http"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        verify: bool | str | Path,
        key: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._key = key
        self._owns_client = client is None
        headers = {"user-agent": f"syncd/{__version__}"}
        if key is not None:
            headers[KEY_HEADER] = key
        self._client = client or http_client(timeout=timeout, verify=verify, headers=headers)

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        # The REST API cannot carry data with the create call: the batch goes with sync().
        response = await self._call("POST", "/api/share", {"sessionID": session_id}, secret=None)
        return Created(share=created_share("POST /api/share", _json(response)), synced=False)

    async def sync(self, share: Share, batch: Batch) -> None:
        path = f"/api/share/{quote(share.id, safe='')}/sync"
        body = {"secret": share.secret, "data": batch.items}
        # A receiver that knows the header applies a batch re-sent after a crash only once.
        response = await self._call(
            "POST",
            path,
            body,
            secret=share.secret,
            share_call=True,
            headers={"Idempotency-Key": batch.key},
            content=None if batch.texts is None else _sync_body(share.secret, batch, batch.texts),
        )
        _require_acknowledgement(response)

    async def delete(self, share: Share) -> None:
        path = f"/api/share/{quote(share.id, safe='')}"
        try:
            response = await self._call(
                "DELETE", path, {"secret": share.secret}, secret=share.secret, share_call=True
            )
        except ShareNotFoundError:
            return  # already gone: what delete was asked to achieve
        _require_acknowledgement(response)

    async def probe(self) -> ReceiverProbe:
        try:
            response = await self._client.get(f"{self._base_url}/api/share/{PROBE_SHARE_ID}/data")
        except httpx.TransportError:
            return ReceiverProbe.DOWN
        if response.status_code >= 500:
            return ReceiverProbe.DOWN
        # opencode's server answers [] for a share it does not have; a richer one says 404.
        return ReceiverProbe.AMBIGUOUS if response.status_code == 200 else ReceiverProbe.EXPLICIT

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
        share_call: bool = False,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request; returns a 2xx answer or raises the error the answer means. `content`:
        `body` already encoded."""
        what = f"{method} {path}"
        try:
            content = jsontext.encode(body) if content is None else content
        except jsontext.JsonTextError as error:
            raise UnsendableError(f"{what}: the batch {error}") from None
        try:
            response = await self._client.request(
                method,
                self._base_url + path,
                content=content,
                headers={"content-type": "application/json", **(headers or {})},
            )
        except httpx.TransportError as error:
            raise unreachable(what, error, [secret, self._key], sent=len(content)) from None
        if 200 <= response.status_code < 300:
            return response
        raise response_refusal(
            what, response, secrets=[secret], key=self._key, share_call=share_call
        )


def _sync_body(secret: str, batch: Batch, texts: list[str]) -> bytes:
    """`{"secret": ..., "data": batch.items}` as jsontext.encode writes it, built from the texts
    the planner encoded the items' data into: no item is encoded twice."""
    items = ",".join(
        f'{{"type":{jsontext.dumps(item["type"])},"data":{text}}}'
        for item, text in zip(batch.items, texts, strict=True)
    )
    return f'{{"secret":{jsontext.dumps(secret)},"data":[{items}]}}'.encode()


def _json(response: httpx.Response) -> Any:
    try:
        return jsontext.loads(response.content)
    except jsontext.JsonTextError:
        raise RetryableError(
            f"{response.request.method} {response.request.url.path}: not acknowledged: "
            f"{response.status_code} answer is not JSON "
            f"({response.headers.get('content-type', 'no content-type')})"
        ) from None


def _require_acknowledgement(response: httpx.Response) -> None:
    if not response.content.strip():
        return
    answer = _json(response)
    if isinstance(answer, dict) and "success" in answer and answer["success"] is not True:
        raise RetryableError(
            f"{response.request.method} {response.request.url.path}: not acknowledged: "
            f"success is {answer['success']!r}"
        )
