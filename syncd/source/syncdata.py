"""opencode rows -> SyncData items, exactly as opencode's own share sends them.

Messages and parts are stored without their ids (CONTRACTS.md section 1); the session object
is rebuilt from its row the way opencode's `Session.fromRow` does, with the fields the release
has columns for (path, agent and model came in 1.14; cost, tokens and metadata in 1.15).
JSON-typed columns keep their JSON types; SQLite REAL columns holding whole numbers become
ints, as JavaScript would print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import jsontext
from ..model import SyncItem


class BadRow(ValueError):
    """A row that cannot become a SyncData item; it is dead-lettered with this reason."""


def session_item(row: Mapping[str, Any]) -> SyncItem:
    """The session object from its row. Columns a release does not have (docs/
    opencode-releases.md) leave their fields out, as that release's own share does."""
    column = _columns(row)
    info: dict[str, Any] = {
        "id": column["id"],
        "slug": column["slug"],
        "projectID": column["project_id"],
        "directory": column["directory"],
        "title": column["title"],
        "version": column["version"],
        "time": _without_none(
            {
                "created": column["time_created"],
                "updated": column["time_updated"],
                "compacting": column.get("time_compacting"),
                "archived": column.get("time_archived"),
            }
        ),
    }
    # 1.15 and later (never NULL there; NULL for a JSON-era session read beside them).
    if column.get("cost") is not None:
        info["cost"] = _number(column["cost"])
    if column.get("tokens_input") is not None:
        info["tokens"] = {
            "input": column["tokens_input"],
            "output": column.get("tokens_output"),
            "reasoning": column.get("tokens_reasoning"),
            "cache": {
                "read": column.get("tokens_cache_read"),
                "write": column.get("tokens_cache_write"),
            },
        }
    share_url = column.get("share_url")
    optional = {
        "workspaceID": column.get("workspace_id"),
        "path": column.get("path"),
        "parentID": column.get("parent_id"),
        "agent": column.get("agent"),
        "model": _json_column(column, "model"),
        "revert": _json_column(column, "revert"),
        "permission": _json_column(column, "permission"),
        "metadata": _json_column(column, "metadata"),
        "share": {"url": share_url} if share_url else None,
    }
    summary = {k: column.get(f"summary_{k}") for k in ("additions", "deletions", "files")}
    if any(value is not None for value in summary.values()):
        optional["summary"] = _without_none(
            {
                **{key: value or 0 for key, value in summary.items()},
                "diffs": _json_column(column, "summary_diffs"),
            }
        )
    info.update(_without_none(optional))
    return {"type": "session", "data": info}


def session_diffs(row: Mapping[str, Any]) -> list[Any]:
    """The session's file diffs from its row (`summary_diffs`), [] when it has none."""
    diffs = _json_column(_columns(row), "summary_diffs")
    if diffs is None:
        return []
    if not isinstance(diffs, list):
        raise BadRow(f"session {row['id']}: summary_diffs is not a JSON array")
    return diffs


def diff_item(diffs: list[Any]) -> SyncItem:
    return {"type": "session_diff", "data": diffs}


def message_item(row: Mapping[str, Any]) -> SyncItem:
    data = _json_object(row, "message")
    # Set on the object just parsed, not a copy: each id where `{**data, **ids}` puts it.
    data["id"], data["sessionID"] = row["id"], row["session_id"]
    return {"type": "message", "data": data}


def part_item(row: Mapping[str, Any]) -> SyncItem:
    data = _json_object(row, "part")
    # As in message_item.
    data["id"], data["sessionID"], data["messageID"] = (
        row["id"], row["session_id"], row["message_id"]
    )  # fmt: skip
    return {"type": "part", "data": data}


def model_item(models: list[dict[str, Any]]) -> SyncItem:
    return {"type": "model", "data": models}


def user_model_ref(message: SyncItem) -> tuple[str, str] | None:
    """(providerID, modelID) of a user message, whose models opencode's share announces."""
    data = message["data"]
    model = data.get("model")
    if data.get("role") != "user" or not isinstance(model, dict):
        return None
    provider, model_id = model.get("providerID"), model.get("modelID")
    if isinstance(provider, str) and isinstance(model_id, str):
        return provider, model_id
    return None


def _columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's columns by name: a release's missing column is a missing key."""
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite rows are not mappings


def _json_object(row: Mapping[str, Any], table: str) -> dict[str, Any]:
    value = _parse(row["data"], f"{table} {row['id']}: data")
    if not isinstance(value, dict):
        raise BadRow(f"{table} {row['id']}: data is not a JSON object")
    return value


def _json_column(row: Mapping[str, Any], column: str) -> Any:
    raw = row.get(column)
    return None if raw is None else _parse(raw, f"session {row['id']}: {column}")


def _parse(raw: Any, where: str) -> Any:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError as exc:
            raise BadRow(f"{where} is not valid UTF-8") from exc
    if not isinstance(raw, str):
        raise BadRow(f"{where} is not JSON text")
    try:
        return jsontext.loads(raw)
    except jsontext.JsonTextError as exc:
        raise BadRow(f"{where} {exc}") from exc


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
