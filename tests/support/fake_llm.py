"""A fake OpenAI-compatible chat model for driving the real opencode headless.

opencode asks three things per `opencode run`: a title (request without `tools`), the turn (with
`tools`: we answer with one `write` tool call) and, after the tool ran (a `role: "tool"` message),
the closing text. Everything is streamed as `chat.completion.chunk` server-sent events; the
closing text goes out a word at a time with a short pause, so a test can act while it streams.
opencode 1.18.33 stores that text part twice: empty when the stream starts, complete when it
ends (the deltas in between are bus events only).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

MODEL = "fake-model"


@dataclass
class Turn:
    """What the fake model answers in one `opencode run`."""

    file_name: str = "f0.txt"
    file_text: str = "".join(f"line {n}\n" for n in range(20))
    reply: str = " ".join(f"word{n}" for n in range(60))
    title: str = "Writing a file"


@dataclass
class FakeLlm:
    url: str = ""  # base url opencode's provider points at: http://127.0.0.1:PORT/v1
    turn: Turn = field(default_factory=Turn)
    chunk_delay: float = 0.02
    # Pause before a tool call: opencode snapshots the worktree when a step starts, and a tool
    # that runs before that snapshot is taken is missing from the session's file diffs.
    tool_call_delay: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # "title", "tool_call", "reply"

    def kind_of(self, body: dict) -> str:
        if not body.get("tools"):
            return "title"
        messages = body.get("messages") or []
        if messages and messages[-1].get("role") == "tool":
            return "reply"
        return "tool_call"

    async def chat_completions(self, request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        kind = self.kind_of(body)
        self.requests[kind] += 1
        turn = self.turn
        if kind == "title":
            chunks = _text_chunks(turn.title.split(" "), "stop", delay=0)
        elif kind == "tool_call":
            chunks = _tool_call_chunks(turn, delay=self.tool_call_delay)
        else:
            chunks = _text_chunks(turn.reply.split(" "), "stop", delay=self.chunk_delay)
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")


def _chunk(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> dict:
    chunk: dict = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def _text_chunks(words: list[str], finish: str, *, delay: float) -> AsyncIterator[dict]:
    yield _chunk({"role": "assistant", "content": ""})
    for n, word in enumerate(words):
        yield _chunk({"content": word if n == 0 else " " + word})
        if delay:
            await asyncio.sleep(delay)
    yield _chunk({}, finish, USAGE)


async def _tool_call_chunks(turn: Turn, *, delay: float) -> AsyncIterator[dict]:
    arguments = json.dumps({"filePath": turn.file_name, "content": turn.file_text})
    yield _chunk({"role": "assistant", "content": None})
    if delay:
        await asyncio.sleep(delay)
    call = {"index": 0, "id": "call_1", "type": "function"}
    yield _chunk({"tool_calls": [{**call, "function": {"name": "write", "arguments": ""}}]})
    # Arguments arrive in pieces, as real models send them.
    for start in range(0, len(arguments), 40):
        piece = arguments[start : start + 40]
        yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield _chunk({}, "tool_calls", USAGE)


async def _sse(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


async def _models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


@contextmanager
def running_fake_llm() -> Iterator[FakeLlm]:
    """Serve a FakeLlm on 127.0.0.1 (ephemeral port) in a thread, for sync and async tests."""
    fake = FakeLlm()
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", fake.chat_completions, methods=["POST"]),
            Route("/v1/models", _models),
        ]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake LLM server did not start")
            time.sleep(0.01)
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
