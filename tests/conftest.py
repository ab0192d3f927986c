"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FIXTURES
from tests.support.fake_llm import FakeLlm, running_fake_llm
from tests.support.opencode_driver import Opencode

# Fixtures of the real peers the tests start, which live with their helpers (tests/support/).
pytest_plugins = ["tests.support.postgres", "tests.support.stores", "tests.support.browser"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def sample_db(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A writable copy of the real sample database (with its -wal/-shm)."""
    for source in (fixtures_dir / "opencode").glob("sample-1.18.33.db*"):
        shutil.copy(source, tmp_path / source.name)
        os.chmod(tmp_path / source.name, 0o644)
    return tmp_path / "sample-1.18.33.db"


@pytest.fixture(scope="session")
def opencode_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One XDG_CACHE_HOME for every opencode of the session: what opencode downloads or builds
    on first use (provider packages, its bin/ tools) is done once, not per run."""
    return tmp_path_factory.mktemp("opencode-cache")


@pytest.fixture
def fake_llm() -> Iterator[FakeLlm]:
    with running_fake_llm() as llm:
        yield llm


@pytest.fixture
def opencode(tmp_path: Path, fake_llm: FakeLlm, opencode_cache: Path) -> Opencode:
    """The real opencode in an isolated home, talking to `fake_llm`, its database created."""
    installation = Opencode(tmp_path / "opencode", fake_llm.url, cache_dir=opencode_cache)
    installation.init_db()
    return installation
