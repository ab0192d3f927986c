"""The tests' own PostgreSQL: a real server run by an unprivileged user, one database per test."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.support.postgres import APP_ROLE, PostgresCluster


def test_server_runs_unprivileged_and_listens_on_loopback(postgres: PostgresCluster) -> None:
    assert postgres.process is not None
    server_uid = os.stat(f"/proc/{postgres.process.pid}").st_uid
    assert server_uid != 0
    with postgres.admin() as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)


def test_each_test_gets_an_empty_database_owned_by_the_app_role(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        owner, user = conn.execute(
            "SELECT pg_get_userbyid(datdba), current_user FROM pg_database "
            "WHERE datname = current_database()"
        ).fetchone() or (None, None)
        assert owner == user == APP_ROLE
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)
        # The app role may build its schema but is no superuser.
        conn.execute("CREATE TABLE t (id int)")
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert superuser.fetchone() == (False,)


def test_the_app_role_needs_its_password(postgres: PostgresCluster) -> None:
    wrong = postgres.url("postgres").replace(postgres.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5).close()
