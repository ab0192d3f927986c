"""A real PostgreSQL for the tests: one throwaway cluster per test session, a fresh database
per test.

The cluster is made with `initdb` from the machine's packages (`.ci/run` installs Debian's
`postgresql` when it is missing) in a temporary directory and run by an unprivileged user:
PostgreSQL refuses to run as root, and CI runs as root. It listens on a free loopback port,
with its unix socket in the same directory, and is tuned for throwaway data (no fsync).

The store connects as `syncd`, a password-authenticated role that owns its database but is no
superuser, as on a team's server; the fixture administers the cluster as its superuser over
the unix socket.

    def test_x(postgres_url: str) -> None:   # postgresql://syncd:<pw>@127.0.0.1:<port>/t_1
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

APP_ROLE = "syncd"
SUPERUSER = "postgres"
# The system user that runs the cluster when the tests run as root.
SYSTEM_USER_CANDIDATES = ("postgres", "syncd-pg")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Durability off (throwaway data) and room for several replicas' pools.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}


def find_bin_dir() -> Path:
    """The directory of `initdb` and `postgres`: SYNCD_PG_BIN, the newest Debian install, or
    PATH."""
    if "SYNCD_PG_BIN" in os.environ:
        candidates = [Path(os.environ["SYNCD_PG_BIN"])]
    else:
        debian = sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        on_path = shutil.which("initdb")
        candidates = [Path(p) for p in reversed(debian)]
        candidates += [Path(on_path).parent] if on_path else []
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise RuntimeError(
        "PostgreSQL's initdb not found: install it (apt-get install postgresql; .ci/run does) "
        "or point SYNCD_PG_BIN at the directory holding initdb and postgres"
    )


def system_user() -> pwd.struct_passwd | None:
    """The unprivileged user that runs the cluster, created when missing; None when the tests
    do not run as root (the cluster then runs as the current user)."""
    if os.geteuid() != 0:
        return None
    for name in SYSTEM_USER_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    name = SYSTEM_USER_CANDIDATES[-1]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresCluster:
    """A running throwaway cluster; `create_database` gives each test its own database."""

    bin_dir: Path
    root: Path
    user: pwd.struct_passwd | None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that run a command as the cluster's user."""
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def init(self) -> None:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        superuser_password = self.root / "pwfile"
        superuser_password.write_text(secrets.token_urlsafe(16))
        if self.user is not None:
            os.chown(superuser_password, self.user.pw_uid, self.user.pw_gid)
        initdb: list[str | Path] = [
            self.bin_dir / "initdb",
            "--pgdata", self.data_dir,
            "--username", SUPERUSER,
            "--pwfile", superuser_password,
            "--auth-local", "trust",  # the socket is in a 0700 directory: only we reach it
            "--auth-host", "scram-sha-256",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        subprocess.run(initdb, check=True, capture_output=True, cwd=self.root, **self._as_user())
        superuser_password.unlink()

    def start(self) -> None:
        """Start the server on a free port and wait until it answers; a port taken between
        choosing and binding it is retried on another."""
        for _attempt in range(3):
            self.port = free_port()
            settings = {**SERVER_SETTINGS, "port": str(self.port)}
            settings["unix_socket_directories"] = str(self.root)
            options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [self.bin_dir / "postgres", "-D", self.data_dir, *options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C to pytest is for pytest, not the server
                **self._as_user(),
            )
            log.close()
            if self._wait_until_ready():
                self._create_app_role()
                return
            if "could not bind" not in self.log_path.read_text(errors="replace"):
                break
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self._log_tail()}")

    def _wait_until_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with self.admin():
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        return False

    def _log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    @contextlib.contextmanager
    def admin(self, dbname: str = "postgres") -> Iterator[psycopg.Connection[Any]]:
        """A superuser connection over the unix socket, in autocommit (CREATE DATABASE)."""
        with psycopg.connect(
            host=str(self.root),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            yield conn

    def _create_app_role(self) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(self.password)
                )
            )

    def url(self, dbname: str) -> str:
        """The URL the store is given: password authentication over TCP, as in production."""
        return f"postgresql://{APP_ROLE}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database owned by the app role; returns its name."""
        name = f"t_{next(self._names)}"
        with self.admin() as conn:
            # Copying the template's files is 3x faster than WAL-logging them, without fsync.
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}" + strategy).format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending connections a test left open (a killed replica's, say)."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are ended, nothing is left running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresCluster]:
    """A throwaway cluster, stopped and deleted on exit."""
    bin_dir = find_bin_dir()
    user = system_user()
    # Not under pytest's tmp_path: that is private to the user running the tests, and the
    # cluster's user must reach its directory. A short path also keeps the socket's path under
    # the kernel's length limit.
    root = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
    cluster = PostgresCluster(bin_dir=bin_dir, root=root, user=user)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    with running_postgres() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh database that only this test uses, dropped afterwards."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)
