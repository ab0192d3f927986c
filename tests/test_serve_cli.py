"""`syncd serve` as a command: its own flags only, quiet about the A2A extra unless A2A is
configured, and a clean stop (Ctrl-C, SIGTERM) exits 0 like `syncd run`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.env import WAIT_SECONDS, isolated_env


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "serve", "--port", "0",
         "--archive", str(tmp_path / "archive.db"), *args],
        env=env or isolated_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_until_serving(process: subprocess.Popen) -> list[dict]:
    """The log lines up to "serving" (JSON lines: stderr is not a terminal)."""
    assert process.stderr is not None
    lines: list[dict] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(json.loads(line))
        if lines[-1]["event"] == "serving":
            return lines
    process.kill()
    raise AssertionError(f"serve did not start: {lines} {process.communicate()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_clean_stop_exits_0(tmp_path: Path, signum: signal.Signals) -> None:
    process = serve(tmp_path)
    try:
        wait_until_serving(process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert [json.loads(line)["event"] for line in stderr.splitlines()] == ["stopped"]


def test_help_lists_only_the_receivers_own_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "serve", "--help"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.stdout))
    assert flags == {"--help", "--config", "--archive", "--host", "--port", "--store", "--public"}


@pytest.mark.parametrize("a2a_configured", [False, True])
def test_a_missing_a2a_sdk_is_mentioned_only_when_a2a_is_configured(
    tmp_path: Path, a2a_configured: bool
) -> None:
    # The SDK made unimportable for this process: a module earlier on the path than the real.
    shim = tmp_path / "no-a2a" / "a2a"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('a2a-sdk is not installed')\n")
    config = tmp_path / "config.toml"
    config.write_text('transport = "a2a"\nurl = "http://127.0.0.1:1"\n' if a2a_configured else "")
    env = isolated_env(tmp_path, PYTHONPATH=str(shim.parent))
    process = serve(tmp_path, "--config", str(config), env=env)
    try:
        lines = wait_until_serving(process)
    finally:
        process.kill()
        process.communicate()
    warnings = [line["event"] for line in lines if line["level"] == "warning"]
    expected = ["A2A disabled: the A2A SDK is missing (scripts/install --extras a2a)"]
    assert warnings == (expected if a2a_configured else [])
