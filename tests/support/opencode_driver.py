"""The real opencode (npm `opencode-ai` 1.18.33, or another release's binary), run headless in
an isolated home.

Every directory opencode touches (HOME, XDG_*) lives under one temporary root, and `PWD` names the
project directory because opencode takes its working directory from `PWD`, not from the process's
cwd. The cache directory can be shared between homes of one test session, so the provider package
opencode installs from the npm registry on first use (`@ai-sdk/openai-compatible`) is fetched once.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
_CANDIDATES = (
    NODE_DIR / "node_modules" / "opencode-linux-x64" / "bin" / "opencode",
    NODE_DIR / "node_modules" / ".bin" / "opencode",
)
# An older release (tests/node/package.json installs it as the npm alias `opencode-old`), for
# homes upgraded in place: no journal, diffs in files, the session table of 1.2-1.3.
OLD_RELEASE = "1.3.2"
_OLD_BINARY = NODE_DIR / "node_modules/opencode-old/node_modules/opencode-linux-x64/bin/opencode"
RUN_TIMEOUT = 180.0
# A fixed commit date makes a project's first commit, whose hash is opencode's project id, the
# same on every run.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "user",
    "GIT_AUTHOR_EMAIL": "user@example.com",
    "GIT_COMMITTER_NAME": "user",
    "GIT_COMMITTER_EMAIL": "user@example.com",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def opencode_binary() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"opencode is not installed: run `npm ci --prefix {NODE_DIR}`")


def old_opencode_binary() -> Path:
    if _OLD_BINARY.exists():
        return _OLD_BINARY
    raise FileNotFoundError(
        f"opencode {OLD_RELEASE} is not installed: run `npm ci --prefix {NODE_DIR}`"
    )


class Opencode:
    """One isolated opencode installation: its home, config, database and project directory."""

    def __init__(
        self,
        root: Path,
        llm_url: str,
        *,
        cache_dir: Path | None = None,
        share_url: str | None = None,
        binary: Path | None = None,
    ) -> None:
        """`share_url` set: opencode shares every session itself ("share": "auto") to that url.
        `binary`: another release's opencode (default: the one tests/node installs)."""
        self.root = root
        self.binary = binary or opencode_binary()
        self.home = root / "home"
        self.project_dir = root / "project"
        self.data_dir = root / "data"
        self.config_dir = root / "config"
        self.cache_dir = cache_dir or root / "cache"
        self.state_dir = root / "state"
        for directory in (
            self.home,
            self.project_dir,
            self.data_dir,
            self.config_dir / "opencode",
            self.cache_dir,
            self.state_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(opencode_config(llm_url, share_url), indent=2))

    @property
    def config_file(self) -> Path:
        return self.config_dir / "opencode" / "opencode.json"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "opencode" / "opencode.db"

    @property
    def env(self) -> dict[str, str]:
        # The host may itself run inside opencode: its OPENCODE_* settings must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE")}
        env.update(
            HOME=str(self.home),
            PWD=str(self.project_dir),
            XDG_DATA_HOME=str(self.data_dir),
            XDG_CONFIG_HOME=str(self.config_dir),
            XDG_CACHE_HOME=str(self.cache_dir),
            XDG_STATE_HOME=str(self.state_dir),
            # Only loopback and the package registries are reachable: no models.dev, no updates.
            OPENCODE_DISABLE_MODELS_FETCH="1",
            OPENCODE_DISABLE_AUTOUPDATE="1",
            OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        )
        return env

    def command(self, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            cwd=self.project_dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def init_git_project(self) -> None:
        """Make the project a git repository with one commit: opencode records file diffs
        only for a git project."""
        env = {**os.environ, **GIT_ENV}
        (self.project_dir / "README.md").write_text("A project opencode edits.\n")
        for args in (
            ["init", "-q", "-b", "main"],
            ["add", "README.md"],
            ["commit", "-q", "-m", "init"],
        ):
            subprocess.run(["git", *args], cwd=self.project_dir, env=env, check=True, timeout=30)

    def init_db(self) -> Path:
        """Create and migrate an empty database (what `opencode session list` does first)."""
        result = self.command("session", "list", timeout=60)
        if result.returncode != 0 or not self.db_path.exists():
            raise RuntimeError(f"opencode session list failed: {_describe(result)}")
        return self.db_path

    def run(
        self, prompt: str, *args: str, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """One headless session (`args`: more `run` options, e.g. `--continue`), with the write
        tool approved. Raises if opencode fails."""
        approve = auto_approve_flags(self.binary)
        result = self.command("run", *approve, *args, prompt, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"opencode run failed: {_describe(result)}")
        return result


@functools.cache
def auto_approve_flags(binary: Path) -> tuple[str, ...]:
    """The `run` option that approves tool calls: `--auto` since 1.17,
    `--dangerously-skip-permissions` in 1.14-1.16; releases before asked nothing headless."""
    usage = subprocess.run(
        [str(binary), "run", "--help"],
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENCODE")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    words = (usage.stdout + usage.stderr).split()  # yargs prints help on stderr
    for flag in ("--auto", "--dangerously-skip-permissions"):
        if flag in words:
            return (flag,)
    return ()


def opencode_config(llm_url: str, share_url: str | None = None) -> dict:
    config: dict = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": "fake/fake-model",
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": {"baseURL": llm_url, "apiKey": "x"},
                "models": {"fake-model": {"name": "Fake"}},
            }
        },
    }
    if share_url is not None:
        config["share"] = "auto"
        config["enterprise"] = {"url": share_url}
    return config


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    output = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    return f"exit {result.returncode}\n{output}"
