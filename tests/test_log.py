"""Log output: JSON lines off a terminal, level filtering, and secrets masked everywhere."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from syncd.config import load_config
from syncd.log import configure_logging
from syncd.redact import register as register_secret

KEY = "rpc-key-0f9e8d7c"
SECRET = "share-secret-1a2b3c4d"


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    captured = capsys.readouterr()
    assert captured.out == ""  # logs never mix with command output
    return [json.loads(line) for line in captured.err.splitlines()]


def configure(tmp_path: Path, **changes: object) -> None:
    config = load_config({}, {"HOME": str(tmp_path), "OPENCODE_SHARE_RPC_KEY": KEY})
    configure_logging(dataclasses.replace(config, log_format="json", **changes))


def test_secrets_are_masked_by_key_name_and_by_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(tmp_path)
    register_secret(SECRET)
    log = structlog.get_logger("test")
    log.info(f"sending with {KEY}", secret="plain", nested={"Authorization": "Bearer x"})
    log.warning("share", detail=[f"url?s={SECRET}", 3], batch_key="abc123")
    try:
        raise RuntimeError(f"server echoed {SECRET}")
    except RuntimeError:
        log.exception("failed")
    lines = log_lines(capsys)
    text = json.dumps(lines)
    assert KEY not in text and SECRET not in text and "Bearer x" not in text
    assert lines[0]["event"] == "sending with ***"
    assert lines[0]["secret"] == "***" and lines[0]["nested"] == {"Authorization": "***"}
    assert lines[1]["detail"] == ["url?s=***", 3]
    assert lines[1]["batch_key"] == "abc123"  # hashes named otherwise stay readable
    assert "server echoed ***" in str(lines[2]["exception"])
    assert lines[2]["level"] == "error"


def test_level_filters_and_short_values_are_not_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(tmp_path, log_level="warning")
    register_secret("ab")  # too short to mask without wrecking every log line
    log = structlog.get_logger("test")
    log.info("hidden by level")
    log.warning("about ab")
    assert [line["event"] for line in log_lines(capsys)] == ["about ab"]
