"""Transport `a2a`: syncd as an A2A 1.0 client (a2a-sdk, an optional extra).

Mapping: a session is an A2A `contextId`. create is one `SendMessage` asking for a new share of
the context; the receiver answers its id, secret and url, kept in syncd's state like any
share. Each batch is one `SendMessage` carrying that share's id and secret in its metadata,
whose `messageId` is `Batch.key` (a batch re-sent after a crash carries the same id, and the
receiver applies a `messageId` once), with one part per SyncData item.

How SyncData travels in parts (and how create and delete are said) is `syncd.wire.a2a`.
Requests go only to the configured origin: redirects are not followed, and an agent card
naming another origin is refused.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import UserError
from ..model import Batch, Created, Share
from ..redact import scrub
from ..urls import origin_of
from ..wire.a2a import (
    CREATE_OPERATION,
    DELETE_OPERATION,
    OPERATION_FIELD,
    SECRET_FIELD,
    SHARE_ID_FIELD,
    item_part,
    silence_sdk_debug,
)
from ..wire.keys import KEY_HEADER
from ..wire.text import excerpt
from .base import (
    KeyRefusedError,
    RejectedError,
    RetryableError,
    ShareNotFoundError,
    Transport,
    UnsendableError,
)
from .httpclient import http_client
from .outcome import created_share, response_refusal, share_refusal

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
        raise UserError(
            "transport 'a2a' needs the A2A SDK: install syncd with scripts/install --extras a2a"
        ) from exc


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
        silence_sdk_debug()
        self._base_url = base_url.rstrip("/")
        self._binding = BINDINGS[binding]
        self._key = key
        self._http = http_client(
            timeout=timeout, verify=verify, headers={KEY_HEADER: key} if key else {}
        )
        self._client: Client | None = None
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"A2aTransport({self._base_url!r}, binding={self._binding!r})"

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        """A new share of the context; its first batch follows with sync()."""
        from a2a.helpers.proto_helpers import new_text_part

        answer = await self._send(
            "create",
            session_id,
            f"create-{uuid.uuid4()}",  # never deduplicated: each create makes a share
            [new_text_part("create a share of this session")],
            {OPERATION_FIELD: CREATE_OPERATION},
            secret=None,
        )
        fields = {"id": answer.get("shareId"), "secret": answer.get("secret")}
        share = created_share("A2A create", {**fields, "url": answer.get("shareUrl")})
        return Created(share, synced=False)

    async def sync(self, share: Share, batch: Batch) -> None:
        try:
            parts = [item_part(item) for item in batch.items]
        except ValueError as exc:
            raise UnsendableError(f"A2A cannot carry this batch: an item {exc}") from None
        await self._send(
            "sync", batch.session_id, batch.key, parts, _credentials(share), secret=share.secret
        )

    async def delete(self, share: Share) -> None:
        from a2a.helpers.proto_helpers import new_text_part

        metadata = {OPERATION_FIELD: DELETE_OPERATION, **_credentials(share)}
        try:
            await self._send(
                "delete",
                "",
                f"delete-{share.id}",
                [new_text_part("delete this share")],
                metadata,
                secret=share.secret,
            )
        except ShareNotFoundError:
            return  # already gone: what delete was asked to achieve

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
                card = await self._call("agent card", resolver.get_agent_card(), secret=None)
                self._require_own_origin(card)
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
        self,
        what: str,
        context_id: str,
        message_id: str,
        parts: list[Part],
        metadata: dict[str, str],
        *,
        secret: str | None,
    ) -> dict[str, Any]:
        """One SendMessage; the receiver's answer (a data message) once acknowledged."""
        from a2a.types.a2a_pb2 import Message, Role, SendMessageRequest

        client = await self._connect()
        message = Message(
            message_id=message_id, context_id=context_id, role=Role.ROLE_USER, parts=parts
        )
        message.metadata.update(metadata)
        request = SendMessageRequest(message=message)
        responses = await self._call(what, _collect(client, request), secret=secret)
        return _acknowledgement(f"A2A {what}", responses, context_id, [secret, self._key])

    def _require_own_origin(self, card: Any) -> None:
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

    async def _call(self, what: str, call: Any, *, secret: str | None) -> Any:
        """Await an SDK call, turning its failures into the delivery loop's errors."""
        from a2a.client import A2AClientError, A2AClientTimeoutError, AgentCardResolutionError
        from a2a.utils.errors import A2AError, InternalError

        secrets = [secret, self._key]
        try:
            return await call
        except A2AClientTimeoutError as exc:
            raise RetryableError(f"A2A {what} to {self._base_url} timed out") from exc
        except A2AError as exc:
            response = _http_error_response(exc)
            if response is not None:
                raise response_refusal(
                    f"A2A {what}", response, secrets=secrets, key=self._key
                ) from exc
            said = scrub(str(exc.message), secrets)
            if isinstance(exc, InternalError):
                raise RetryableError(f"A2A {what}: receiver failed: {said}") from exc
            if isinstance(exc, AgentCardResolutionError) or (
                isinstance(exc, A2AClientError)
                and isinstance(exc.__cause__, httpx.HTTPError | json.JSONDecodeError)
            ):
                # No usable answer: connection refused or dropped, an unreadable body.
                reason = scrub(str(exc), secrets)
                raise RetryableError(f"A2A {what} to {self._base_url} failed: {reason}") from exc
            raise RejectedError(f"A2A {what}: receiver refused the call: {said}") from exc


def _credentials(share: Share) -> dict[str, str]:
    return {SHARE_ID_FIELD: share.id, SECRET_FIELD: share.secret}


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


def _acknowledgement(
    what: str, responses: list[Any], context_id: str, secrets: list[str | None]
) -> dict[str, Any]:
    """The receiver's answer, when it acknowledges the call: a reply message about this very
    context (its data part is the answer) or a completed task. No answer, or one about
    another context, is not one; a failed task is a refusal."""
    from google.protobuf import json_format

    answer: dict[str, Any] | None = None
    for response in responses:
        if response.HasField("task"):
            _check_task(what, response.task, secrets)
            answered, parts = response.task.context_id, []
        elif response.HasField("message"):
            answered, parts = response.message.context_id, response.message.parts
        else:
            continue
        if context_id and answered != context_id:
            raise RetryableError(
                f"{what}: answer is about context {answered!r}, not {context_id!r}: "
                "not acknowledged"
            )
        answer = {}
        for part in parts:
            if part.WhichOneof("content") == "data":
                data = json_format.MessageToDict(part.data)
                answer.update(data if isinstance(data, dict) else {})
    if answer is None:
        raise RetryableError(
            f"{what}: receiver answered without a task or message: not acknowledged"
        )
    return answer


def _check_task(what: str, task: Any, secrets: list[str | None]) -> None:
    """A task answer: completed is an acknowledgement, failed/rejected a refusal (of the
    share's credentials or of the batch, by the reason the receiver gives)."""
    from a2a.helpers.proto_helpers import get_message_text
    from a2a.types.a2a_pb2 import TaskState

    state = task.status.state
    if state == TaskState.TASK_STATE_COMPLETED:
        return
    reason = get_message_text(task.status.message) if task.status.HasField("message") else ""
    name = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
    if state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING):
        # Not acknowledged yet; re-sending is safe, the receiver applies a messageId once.
        raise RetryableError(f"{what}: task still {name}")
    reason = reason or "no reason given"
    if state == TaskState.TASK_STATE_AUTH_REQUIRED:
        # The receiver wants credentials syncd did not give: its key, as a 401 says. The batch
        # is not at fault, so it stays pending (dead-lettered, every batch would follow it).
        raise KeyRefusedError(
            f"{what}: task {name}: {excerpt(scrub(reason, secrets))}: set the receiver's key "
            "(key in the config file) to one it accepts"
        )
    refused = share_refusal(what, reason, secrets)
    raise refused or RejectedError(f"{what}: task {name}: {excerpt(scrub(reason, secrets))}")
