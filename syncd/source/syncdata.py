"""opencode rows -> SyncData items, exactly as opencode's own share sends them.

Messages and parts are stored without their ids (CONTRACTS.md section 1); the session object
is rebuilt from its row the way opencode's `Session.fromRow` does, with the fields 1.18.33 adds
(agent, model, cost, tokens, metadata). JSON-typed columns keep their JSON types; SQLite REAL
columns holding whole numbers become ints, as JavaScript would print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import jsontext
from ..model import SyncItem


class BadRow(ValueError):
    """A row that cannot become a SyncData item; it is dead-lettered with this reason."""


def session_item(row: Mapping[str, Any]) -> SyncItem:
    info: dict[str, Any] = {
        "id": row["id"],
        "slug": row["slug"],
        "projectID": row["project_id"],
        "directory": row["directory"],
        "title": row["title"],
        "version": row["version"],
        "cost": _number(row["cost"]),
        "tokens": {
            "input": row["tokens_input"],
            "output": row["tokens_output"],
            "reasoning": row["tokens_reasoning"],
            "cache": {"read": row["tokens_cache_read"], "write": row["tokens_cache_write"]},
        },
        "time": _without_none(
            {
                "created": row["time_created"],
                "updated": row["time_updated"],
                "compacting": row["time_compacting"],
                "archived": row["time_archived"],
            }
        ),
    }
    optional = {
        "workspaceID": row["workspace_id"],
        "path": row["path"],
        "parentID": row["parent_id"],
        "agent": row["agent"],
        "model": _json_column(row, "model"),
        "revert": _json_column(row, "revert"),
        "permission": _json_column(row, "permission"),
        "metadata": _json_column(row, "metadata"),
        "share": {"url": row["share_url"]} if row["share_url"] else None,
    }
    if any(row[f"summary_{k}"] is not None for k in ("additions", "deletions", "files")):
        optional["summary"] = _without_none(
            {
                "additions": row["summary_additions"] or 0,
                "deletions": row["summary_deletions"] or 0,
                "files": row["summary_files"] or 0,
                "diffs": _json_column(row, "summary_diffs"),
            }
        )
    info.update(_without_none(optional))
    return {"type": "session", "data": info}


def session_diffs(row: Mapping[str, Any]) -> list[Any]:
    """The session's file diffs (`summary_diffs`), [] when it has none."""
    diffs = _json_column(row, "summary_diffs")
    if diffs is None:
        return []
    if not isinstance(diffs, list):
        raise BadRow(f"session {row['id']}: summary_diffs is not a JSON array")
    return diffs


def diff_item(diffs: list[Any]) -> SyncItem:
    return {"type": "session_diff", "data": diffs}


def message_item(row: Mapping[str, Any]) -> SyncItem:
    data = _json_object(row, "message")
    return {"type": "message", "data": {**data, "id": row["id"], "sessionID": row["session_id"]}}


def part_item(row: Mapping[str, Any]) -> SyncItem:
    data = _json_object(row, "part")
    ids = {"id": row["id"], "sessionID": row["session_id"], "messageID": row["message_id"]}
    return {"type": "part", "data": {**data, **ids}}


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


def _json_object(row: Mapping[str, Any], table: str) -> dict[str, Any]:
    value = _parse(row["data"], f"{table} {row['id']}: data")
    if not isinstance(value, dict):
        raise BadRow(f"{table} {row['id']}: data is not a JSON object")
    return value


def _json_column(row: Mapping[str, Any], column: str) -> Any:
    raw = row[column]
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
