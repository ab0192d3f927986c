"""The receiver's A2A agent: `syncd serve` takes SyncData over A2A 1.0 (JSONRPC and HTTP+JSON).

The mapping is the one `syncd.transports.a2a` sends (`syncd.wire.a2a`): the `contextId` is the
session id, a create message makes a new share of it and answers its credentials, and every
other message is one batch (or a delete) of the share its metadata names, applied only with
that share's secret, as over REST. A `messageId` is applied once per share (it is the store's
dedup key). Batches land in the same ArchiveStore, under the same merge rules, as batches sent
over REST. A batch that cannot be stored, or whose credentials are refused, is answered by a
failed task naming the problem (`Share not found`, `Invalid secret`, the bad item), and
nothing of it is applied.

Paths: the agent card at /.well-known/agent-card.json (public: it is how clients discover the
interfaces), JSONRPC at /a2a/jsonrpc, HTTP+JSON under /a2a/rest; every call there (SendMessage,
GetTask, ListTasks...) requires the share key when the receiver has one. a2a-sdk is an optional
extra: without it `syncd serve` runs without these routes.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import structlog
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__, jsontext
from ..archive import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound, StoreUnavailable
from ..wire.a2a import (
    CREATE_OPERATION,
    DELETE_OPERATION,
    OPERATION_FIELD,
    SECRET_FIELD,
    SHARE_ID_FIELD,
    metadata_text,
    part_item,
    silence_sdk_debug,
)
from .body_limit import replaying
from .share_key import KEY_HEADER, key_problem

if TYPE_CHECKING:
    from a2a.server.agent_execution import RequestContext
    from a2a.server.context import ServerCallContext
    from a2a.server.events import EventQueue
    from a2a.types.a2a_pb2 import AgentCard, Message, Part, Task

log = structlog.get_logger("syncd.receiver.a2a")

CARD_PATH = "/.well-known/agent-card.json"
PREFIX = "/a2a"
JSONRPC_PATH = "/jsonrpc"
REST_PATH = "/rest"
KEY_SCHEME = "shareKey"
BASE_URL_STATE = "syncd.base_url"
# Failed tasks kept for GetTask/ListTasks; older ones are forgotten, so that clients sending
# bad batches cannot grow the receiver's memory without bound.
FAILED_TASKS_KEPT = 1000


def agent_card(base_url: str, key_required: bool) -> AgentCard:
    """The card `syncd serve` at `base_url` publishes."""
    from a2a.types.a2a_pb2 import (
        AgentCapabilities,
        AgentCard,
        AgentInterface,
        AgentSkill,
        APIKeySecurityScheme,
        SecurityScheme,
    )

    card = AgentCard(
        name="syncd receiver",
        description=(
            "Archive of opencode sessions. contextId is the session id. Create a share with "
            "metadata syncd.operation = create (answered: shareId, secret, shareUrl); then "
            "send one message per batch with metadata syncd.shareId and syncd.secret, each "
            "part one SyncData item (a data part, whole numbers read as integers, or an "
            "application/json text part); a messageId is applied once."
        ),
        version=__version__,
        supported_interfaces=[
            AgentInterface(
                url=f"{base_url}{PREFIX}{JSONRPC_PATH}",
                protocol_binding="JSONRPC",
                protocol_version="1.0",
            ),
            AgentInterface(
                url=f"{base_url}{PREFIX}{REST_PATH}",
                protocol_binding="HTTP+JSON",
                protocol_version="1.0",
            ),
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[
            AgentSkill(
                id="share-sync",
                name="Share sync",
                description="Upserts opencode SyncData items into the session's share.",
                tags=["opencode", "share", "sync"],
            )
        ],
    )
    if key_required:
        card.security_schemes[KEY_SCHEME].CopyFrom(
            SecurityScheme(
                api_key_security_scheme=APIKeySecurityScheme(
                    location="header", name=KEY_HEADER, description="the receiver's share key"
                )
            )
        )
        card.security_requirements.add().schemes[KEY_SCHEME].SetInParent()
    return card


class ShareSyncExecutor:
    """The AgentExecutor (a2a-sdk's interface, duck-typed so this module imports without the
    SDK): applies one message to the share of its context."""

    def __init__(self, store: ArchiveStore, base_url: str | None) -> None:
        self._store = store
        self._base_url = base_url

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        from a2a.helpers.proto_helpers import new_data_message

        context_id = context.context_id or ""
        try:
            if context.message is None:
                raise BadSyncData("no message: send one part per SyncData item")
            answer = await self._apply(context.message, context_id, context)
        except (BadSyncData, ShareNotFound, InvalidSecret) as exc:
            await event_queue.enqueue_event(_failed_task(context, str(exc)))
            return
        except StoreUnavailable as exc:
            # A2A's own "try again" (senders retry an internal error, keeping the batch); the
            # reason stays in this log: it names the database's address.
            from a2a.utils.errors import InternalError

            log.warning("archive unavailable, answered an internal error", error=str(exc))
            raise InternalError(f"archive unavailable; retry in {exc.retry_after} s") from None
        await event_queue.enqueue_event(new_data_message(answer, context_id=context_id))

    async def _apply(
        self, message: Message, context_id: str, context: RequestContext
    ) -> dict[str, Any]:
        operation = metadata_text(message, OPERATION_FIELD)
        if operation == CREATE_OPERATION:
            base_url = self._base_url or context.call_context.state[BASE_URL_STATE]
            share = await self._store.create_share(context_id, base_url)
            return {"shareId": share.id, "secret": share.secret, "shareUrl": share.url}
        share_id, secret = _credentials(message)
        if operation == DELETE_OPERATION:
            await self._store.delete_share(share_id, secret)
            return {"deleted": share_id}
        if operation is not None:
            raise BadSyncData(
                f"{OPERATION_FIELD} {operation!r} is not one of "
                f"{CREATE_OPERATION}, {DELETE_OPERATION} (or absent, for a batch)"
            )
        if not message.parts:
            raise BadSyncData("the message has no parts: send one part per SyncData item")
        items = [_item(index, part) for index, part in enumerate(message.parts)]
        count = await self._store.sync(share_id, secret, items, dedup_key=message.message_id)
        return {"syncCount": count}

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        from a2a.utils.errors import TaskNotCancelableError

        raise TaskNotCancelableError("a sync is applied at once; there is nothing to cancel")


def _credentials(message: Message) -> tuple[str, str]:
    """The share a message writes to and its secret: a contextId alone authorizes nothing."""
    share_id = metadata_text(message, SHARE_ID_FIELD)
    secret = metadata_text(message, SECRET_FIELD)
    if not share_id or secret is None:
        raise BadSyncData(
            f"the message names no share: put {SHARE_ID_FIELD} and {SECRET_FIELD} in its "
            f"metadata (create the share first, with {OPERATION_FIELD} = {CREATE_OPERATION})"
        )
    return share_id, secret


def _item(index: int, part: Part) -> Any:
    try:
        return part_item(part)
    except ValueError as exc:
        raise BadSyncData(f"part {index}: {exc}") from exc


def _failed_task(context: RequestContext, reason: str) -> Task:
    from a2a.helpers.proto_helpers import new_task, new_text_message
    from a2a.types.a2a_pb2 import TaskState

    task = new_task(
        task_id=context.task_id or "",
        context_id=context.context_id or "",
        state=TaskState.TASK_STATE_FAILED,
    )
    task.status.message.CopyFrom(
        new_text_message(reason, context_id=task.context_id, task_id=task.id)
    )
    return task


class _ReadableJson:
    """400 naming the problem for a body syncd cannot read as JSON (nested past MAX_DEPTH, an
    integer past Python's digit limit, ...), before the SDK would fail on it internally."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            body = await Request(scope, receive).body()
            try:
                jsontext.loads(body, jsontext.MAX_DEPTH + jsontext.ENVELOPE_DEPTH)
            except jsontext.JsonTextError as exc:
                answer = {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                    "message": f"request body {exc}"}}  # fmt: skip
                await JSONResponse(answer, status_code=400)(scope, receive, send)
                return
            receive = replaying(body, receive)
        await self._app(scope, receive, send)


class _RequireKey:
    """401 for A2A calls without the receiver's key (the card itself stays public)."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self._app = app
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = key_problem(Request(scope).headers, self._key)
            if problem is not None:
                body = {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": problem}}
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _bounded_task_store(kept: int) -> Any:
    """a2a-sdk's in-memory task store, forgetting the oldest tasks beyond `kept`."""
    from a2a.server.tasks import InMemoryTaskStore

    class BoundedTaskStore(InMemoryTaskStore):
        def __init__(self) -> None:
            super().__init__()
            self._order: OrderedDict[str, ServerCallContext] = OrderedDict()

        async def save(self, task: Task, context: ServerCallContext) -> None:
            await super().save(task, context)
            self._order[task.id] = context
            self._order.move_to_end(task.id)
            while len(self._order) > kept:
                task_id, owner = self._order.popitem(last=False)
                await super().delete(task_id, owner)

        async def delete(self, task_id: str, context: ServerCallContext) -> None:
            self._order.pop(task_id, None)
            await super().delete(task_id, context)

    return BoundedTaskStore()


def a2a_routes(
    store: ArchiveStore, *, base_url: str | None, key: str | None, expected: bool = False
) -> list[BaseRoute]:
    """The agent card, JSONRPC and HTTP+JSON routes. `base_url` prefixes the card's interface
    urls and share urls; None takes the request's own scheme and host. Without the A2A SDK
    there are none: a warning when A2A is `expected` (configured), a debug line otherwise."""
    try:
        from a2a.server.request_handlers import DefaultRequestHandler
        from a2a.server.routes import (
            DefaultServerCallContextBuilder,
            create_agent_card_routes,
            create_jsonrpc_routes,
            create_rest_routes,
        )
    except ImportError:
        say = log.warning if expected else log.debug
        say("A2A disabled: the A2A SDK is missing (scripts/install --extras a2a)")
        return []
    silence_sdk_debug()

    def request_base(request: Request) -> str:
        return base_url or str(request.base_url).rstrip("/")

    class CallContextBuilder(DefaultServerCallContextBuilder):
        """Hands the executor the base url share urls start with, and keeps the key out of
        the call context (the SDK logs that at debug level)."""

        def build(self, request: Request):
            context = super().build(request)
            context.state["headers"].pop(KEY_HEADER, None)
            context.state[BASE_URL_STATE] = request_base(request)
            return context

    # The card names absolute urls, so it is built per base url (one when base_url is set,
    # else one per host the receiver is reached by; bounded against made-up Host headers).
    @functools.lru_cache(maxsize=16)
    def card_endpoint(base: str) -> Route:
        route = create_agent_card_routes(agent_card(base, key is not None), card_url=CARD_PATH)
        return route[0]

    async def serve_card(request: Request) -> Response:
        return await card_endpoint(request_base(request)).endpoint(request)

    # Failed batches leave a task in this store; answered ones (messages) leave nothing.
    # The handler reads only the card's capabilities, the same for every base url.
    handler = DefaultRequestHandler(
        agent_executor=ShareSyncExecutor(store, base_url),  # type: ignore[arg-type]
        task_store=_bounded_task_store(FAILED_TASKS_KEPT),
        agent_card=agent_card(base_url or "http://localhost", key is not None),
    )
    builder = CallContextBuilder()
    return [
        Route(CARD_PATH, serve_card, methods=["GET"]),
        Mount(
            PREFIX,
            routes=[
                *create_jsonrpc_routes(handler, JSONRPC_PATH, context_builder=builder),
                Mount(REST_PATH, routes=create_rest_routes(handler, context_builder=builder)),
            ],
            middleware=[Middleware(_RequireKey, key=key), Middleware(_ReadableJson)],
        ),
    ]
