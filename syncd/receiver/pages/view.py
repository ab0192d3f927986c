"""What a page shows of a share, read defensively from the merged SyncData items.

Items are whatever a sender stored (opencode's SDK objects, or anything else of the right
outline), so every field is checked for its type here and the templates only see these views.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .markup import FileDiff, file_diff, file_diffs

# Output longer than this is folded, with its length in the summary.
FOLD_LINES = 20
FOLD_CHARS = 2_000
# Output beyond this is cut on the page (the whole of it stays in /api/share/{id}/data).
SHOW_CHARS = 100_000
# Parts that only mark where a model step began, or record snapshots: nothing to read.
UNSHOWN_PARTS = frozenset({"step-start", "step-finish", "snapshot"})


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def int_of(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def number_of(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def dict_of(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def list_of(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def time_of(value: Any) -> int | None:
    """A millisecond stamp, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass
class Tokens:
    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @classmethod
    def of(cls, value: Any) -> Tokens:
        tokens = dict_of(value)
        cache = dict_of(tokens.get("cache"))
        return cls(
            input=int_of(tokens.get("input")),
            output=int_of(tokens.get("output")),
            reasoning=int_of(tokens.get("reasoning")),
            cache_read=int_of(cache.get("read")),
            cache_write=int_of(cache.get("write")),
        )

    @property
    def total(self) -> int:
        return self.input + self.output + self.reasoning + self.cache_read + self.cache_write

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input,
            self.output + other.output,
            self.reasoning + other.reasoning,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
        )


@dataclass
class Block:
    """A block of text a page shows (a tool's input or output, a written file): folded when
    long, with its length in the fold's summary, and cut when huge."""

    text: str
    lines: int
    chars: int

    @classmethod
    def of(cls, value: Any) -> Block | None:
        if not isinstance(value, str) or not value:
            return None
        lines = value.count("\n") + (not value.endswith("\n"))
        return cls(text=value[:SHOW_CHARS], lines=lines, chars=len(value))

    @property
    def folded(self) -> bool:
        return self.lines > FOLD_LINES or self.chars > FOLD_CHARS

    @property
    def cut(self) -> bool:
        return self.chars > len(self.text)


@dataclass
class ToolView:
    name: str
    status: str
    title: str
    input: Block | None  # pretty JSON
    output: Block | None
    error: str
    diff: FileDiff | None
    written: Block | None  # the content of the file a `write` call wrote
    path: str
    started: int | None
    ended: int | None


@dataclass
class PartView:
    id: str
    type: str
    text: str = ""
    synthetic: bool = False
    tool: ToolView | None = None
    files: list[str] = field(default_factory=list)


@dataclass
class MessageView:
    id: str
    role: str
    agent: str = ""
    model: str = ""
    created: int | None = None
    completed: int | None = None
    cost: float = 0.0
    tokens: Tokens = field(default_factory=Tokens)
    error: str = ""
    diffs: list[FileDiff] = field(default_factory=list)
    parts: list[PartView] = field(default_factory=list)


@dataclass
class SessionView:
    share_id: str
    title: str = ""
    directory: str = ""
    version: str = ""
    created: int | None = None
    updated: int | None = None
    messages: list[MessageView] = field(default_factory=list)
    diffs: list[FileDiff] = field(default_factory=list)
    seq: int = 0  # the newest change the view includes


def _pretty(value: Any) -> str:
    if value in (None, {}, []):
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _error_text(value: Any) -> str:
    """opencode's error objects are `{name, data: {message}}`; a string is taken as it is."""
    if isinstance(value, str):
        return value
    error = dict_of(value)
    message = text_of(dict_of(error.get("data")).get("message")) or text_of(error.get("message"))
    name = text_of(error.get("name"))
    return f"{name}: {message}" if name and message else name or message


def tool_view(data: dict[str, Any]) -> ToolView:
    state = dict_of(data.get("state"))
    tool_input = state.get("input")
    metadata = dict_of(state.get("metadata"))
    arguments = dict_of(tool_input)
    name = text_of(data.get("tool")) or "tool"
    diff = file_diff(metadata.get("filediff") or metadata.get("diff"))
    if diff is not None and not diff.lines:
        diff = None
    path = text_of(arguments.get("filePath"))
    written = Block.of(arguments.get("content")) if name == "write" else None
    timing = dict_of(state.get("time"))
    return ToolView(
        name=name,
        status=text_of(state.get("status")) or "pending",
        title=text_of(state.get("title")) or text_of(arguments.get("description")),
        input=None if written else Block.of(_pretty(tool_input)),
        output=Block.of(state.get("output")),
        error=_error_text(state.get("error")),
        diff=diff,
        written=written,
        path=path,
        started=time_of(timing.get("start")),
        ended=time_of(timing.get("end")),
    )


def part_view(data: dict[str, Any]) -> PartView | None:
    """A part as the page shows it; None for parts with nothing to read."""
    kind = text_of(data.get("type"))
    if kind in UNSHOWN_PARTS:
        return None
    part = PartView(id=text_of(data.get("id")), type=kind or "unknown")
    if kind in ("text", "reasoning"):
        part.text = text_of(data.get("text"))
        part.synthetic = data.get("synthetic") is True
    elif kind == "tool":
        part.tool = tool_view(data)
    elif kind == "file":
        part.text = text_of(data.get("filename")) or text_of(data.get("url"))[:200]
        part.files = [text_of(data.get("mime"))]
    elif kind == "patch":
        part.files = [name for name in list_of(data.get("files")) if isinstance(name, str)]
    elif kind == "retry":
        part.text = _error_text(data.get("error"))
    elif kind in ("agent", "subtask"):
        part.text = text_of(data.get("name")) or text_of(data.get("description"))
    return part


def message_view(data: dict[str, Any]) -> MessageView:
    provider, model = text_of(data.get("providerID")), text_of(data.get("modelID"))
    if not model:  # user messages name the model they asked for
        chosen = dict_of(data.get("model"))
        provider, model = text_of(chosen.get("providerID")), text_of(chosen.get("modelID"))
    timing = dict_of(data.get("time"))
    return MessageView(
        id=text_of(data.get("id")),
        role=text_of(data.get("role")) or "unknown",
        agent=text_of(data.get("agent")) or text_of(data.get("mode")),
        model=f"{provider}/{model}" if provider and model else model,
        created=time_of(timing.get("created")),
        completed=time_of(timing.get("completed")),
        cost=number_of(data.get("cost")),
        tokens=Tokens.of(data.get("tokens")),
        error=_error_text(data.get("error")),
        diffs=file_diffs(list_of(dict_of(data.get("summary")).get("diffs"))),
    )


def apply_session(view: SessionView, data: dict[str, Any]) -> None:
    timing = dict_of(data.get("time"))
    view.title = text_of(data.get("title"))
    view.directory = text_of(data.get("directory"))
    view.version = text_of(data.get("version"))
    view.created = time_of(timing.get("created"))
    view.updated = time_of(timing.get("updated"))


def session_view(share_id: str, items: Iterable[tuple[int, dict[str, Any]]]) -> SessionView:
    """The page's view of a share from its (seq, SyncData item) pairs; a later item with the
    same key replaces an earlier one, as the store merges them."""
    view = SessionView(share_id=share_id)
    messages: dict[str, dict[str, Any]] = {}
    parts: dict[str, dict[str, dict[str, Any]]] = {}
    for seq, item in items:
        view.seq = max(view.seq, seq)
        kind, data = item.get("type"), item.get("data")
        if kind == "session" and isinstance(data, dict):
            apply_session(view, data)
        elif kind == "message" and isinstance(data, dict):
            messages[text_of(data.get("id"))] = data
        elif kind == "part" and isinstance(data, dict):
            parts.setdefault(text_of(data.get("messageID")), {})[text_of(data.get("id"))] = data
        elif kind == "session_diff" and isinstance(data, list):
            view.diffs = file_diffs(data)
    for message_id in sorted(messages.keys() | parts.keys()):
        message = message_view(messages.get(message_id) or {"id": message_id})
        for part_id in sorted(parts.get(message_id, {})):
            part = part_view(parts[message_id][part_id])
            if part is not None:
                message.parts.append(part)
        view.messages.append(message)
    return view
