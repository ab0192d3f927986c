"""Transport `a2a`: syncd as an A2A 1.0 client (a2a-sdk, an optional extra).

Mapping: a session is an A2A `contextId`; each batch is one `SendMessage` whose `messageId` is
`Batch.key` (a batch re-sent after a crash carries the same id, and the receiver applies a
`messageId` once), carrying one part per SyncData item.

How SyncData travels in parts (and how a delete is said) is `syncd.wire.a2a`.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import UserError
from ..model import Batch, Created, Share
from ..urls import origin_of
from ..wire.a2a import DELETE_OPERATION, OPERATION_FIELD, item_part
from ..wire.keys import KEY_HEADER
from ..wire.text import excerpt
from .base import RejectedError, RetryableError, Transport, UnsendableError
from .httpclient import http_client
from .outcome import key_refused, retry_after

if TYPE_CHECKING:
    from a2a.client import Client
    from a2a.types.a2a_pb2 import Part, SendMessageRequest

# config.a2a_binding -> the binding name A2A agent cards use (spec section 5.3).
BINDINGS = {"jsonrpc": "JSONRPC", "http+json": "HTTP+JSON"}


def require_sdk() -> None:
    """UserError (one line) when the optional a2a-sdk is not installed."""
    try:
        import a2a.client  # noqa: F401
    except ImportError as exc:
        raise UserError("transport 'a2a' needs the A2A SDK: pip install 'syncd[a2a]'") from exc


# -- the transport --------------------------------------------------------------------------


class A2aTransport(Transport):
    name = "a2a"
    # The receiver keys shares by context (session) id; opencode's own shares live elsewhere.
    reuses_opencode_shares = False

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        binding: str = "jsonrpc",
        timeout: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        require_sdk()
        if binding not in BINDINGS:
            raise UserError(
                f"a2a_binding {binding!r} is not one of {', '.join(BINDINGS)}: fix the config"
            )
        self._base_url = base_url.rstrip("/")
        self._binding = BINDINGS[binding]
        self._has_key = bool(key)
        self._http = http_client(
            timeout=timeout, verify=verify, headers={KEY_HEADER: key} if key else {}
        )
        self._client: Client | None = None
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"A2aTransport({self._base_url!r}, binding={self._binding!r})"

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        """No call: the receiver creates the share with the context's first message. The URL
        is where `syncd serve` shows it (like opencode, it names a share by the session id's
        last 8 characters)."""
        url = f"{self._base_url}/share/{session_id[-8:]}"
        return Created(Share(id=session_id, secret="", url=url), synced=False)

    async def sync(self, share: Share, batch: Batch) -> None:
        try:
            parts = [item_part(item) for item in batch.items]
        except ValueError as exc:
            raise UnsendableError(f"A2A cannot carry this batch: an item {exc}") from None
        await self._send(share.id, batch.key, parts, {})

    async def delete(self, share: Share) -> None:
        from a2a.helpers.proto_helpers import new_text_part

        await self._send(
            share.id,
            f"delete-{share.id}",
            [new_text_part("delete this share")],
            {OPERATION_FIELD: DELETE_OPERATION},
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        await self._http.aclose()

    async def _connect(self) -> Client:
        """Resolve the agent card once and pick the configured binding's interface."""
        from a2a.client import A2ACardResolver, ClientConfig, ClientFactory

        async with self._connecting:
            if self._client is None:
                resolver = A2ACardResolver(self._http, self._base_url)
                card = await self._call(resolver.get_agent_card())
                self._require_ownorigin_of(card)
                factory = ClientFactory(
                    ClientConfig(
                        streaming=False,
                        httpx_client=self._http,
                        supported_protocol_bindings=[self._binding],
                    )
                )
                try:
                    self._client = factory.create(card)
                except ValueError as exc:
                    offered = ", ".join(i.protocol_binding for i in card.supported_interfaces)
                    raise RejectedError(
                        f"{self._base_url} offers no A2A {self._binding} interface (it offers: "
                        f"{offered or 'none'}): set a2a_binding to one it offers"
                    ) from exc
            return self._client

    async def _send(
        self, context_id: str, message_id: str, parts: list[Part], metadata: dict[str, str]
    ) -> None:
        from a2a.types.a2a_pb2 import Message, Role, SendMessageRequest

        client = await self._connect()
        message = Message(
            message_id=message_id, context_id=context_id, role=Role.ROLE_USER, parts=parts
        )
        message.metadata.update(metadata)
        responses = await self._call(_collect(client, SendMessageRequest(message=message)))
        _require_acknowledgement(responses, context_id)

    def _require_ownorigin_of(self, card: Any) -> None:
        """The card says where to send; syncd sends (with its key) only to the configured
        origin, whatever a card served there claims."""
        own = origin_of(self._base_url)
        for interface in card.supported_interfaces:
            if interface.protocol_binding == self._binding and origin_of(interface.url) != own:
                raise RejectedError(
                    f"the agent card at {self._base_url} sends {self._binding} requests to "
                    f"another origin ({origin_of(interface.url)}); syncd talks only to {own}: "
                    "set url to the receiver itself"
                )

    async def _call(self, call: Any) -> Any:
        """Await an SDK call, turning its failures into the delivery loop's errors."""
        from a2a.client import A2AClientError, A2AClientTimeoutError, AgentCardResolutionError
        from a2a.utils.errors import A2AError, InternalError

        try:
            return await call
        except A2AClientTimeoutError as exc:
            raise RetryableError(f"A2A request to {self._base_url} timed out") from exc
        except A2AError as exc:
            response = _http_error_response(exc)
            if response is not None:
                raise self._status_error(response, exc.message) from exc
            if isinstance(exc, InternalError):
                raise RetryableError(f"A2A receiver failed: {exc.message}") from exc
            if isinstance(exc, AgentCardResolutionError) or (
                isinstance(exc, A2AClientError)
                and isinstance(exc.__cause__, httpx.HTTPError | json.JSONDecodeError)
            ):
                # No usable answer: connection refused or dropped, an unreadable body.
                raise RetryableError(f"A2A request to {self._base_url} failed: {exc}") from exc
            raise RejectedError(f"A2A receiver refused the batch: {exc.message}") from exc

    def _status_error(self, response: httpx.Response, message: str) -> Exception:
        status = response.status_code
        if status in (401, 403):
            return key_refused(
                f"A2A receiver {self._base_url}", self._has_key, status, excerpt(message)
            )
        if status == 429 or status >= 500:
            return RetryableError(
                f"A2A receiver {self._base_url} answered HTTP {status}",
                retry_after=retry_after(response.headers),
            )
        return RejectedError(f"A2A receiver answered HTTP {status}: {message}")


async def _collect(client: Client, request: SendMessageRequest) -> list[Any]:
    return [response async for response in client.send_message(request)]


def _http_error_response(error: BaseException) -> httpx.Response | None:
    """The HTTP answer behind an SDK error (the SDK chains httpx's error as the cause)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, httpx.HTTPStatusError):
            return cause.response
        cause = cause.__cause__
    return None


def _require_acknowledgement(responses: list[Any], context_id: str) -> None:
    """Only an answer about this very context acknowledges the batch: a completed task or the
    receiver's reply message. No answer, or one about another context, is not one."""
    acknowledged = False
    for response in responses:
        if response.HasField("task"):
            _check_task(response.task)
            answered = response.task.context_id
        elif response.HasField("message"):
            answered = response.message.context_id
        else:
            continue
        if answered != context_id:
            raise RetryableError(
                f"A2A answer is about context {answered!r}, not {context_id!r}: not acknowledged"
            )
        acknowledged = True
    if not acknowledged:
        raise RetryableError("A2A receiver answered without a task or message: not acknowledged")


def _check_task(task: Any) -> None:
    """A task answer: completed is an acknowledgement, failed/rejected a refusal."""
    from a2a.helpers.proto_helpers import get_message_text
    from a2a.types.a2a_pb2 import TaskState

    state = task.status.state
    if state == TaskState.TASK_STATE_COMPLETED:
        return
    reason = get_message_text(task.status.message) if task.status.HasField("message") else ""
    name = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
    if state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING):
        # Not acknowledged yet; re-sending is safe, the receiver applies a messageId once.
        raise RetryableError(f"A2A task still {name}")
    raise RejectedError(f"A2A task {name}: {reason or 'no reason given'}")
