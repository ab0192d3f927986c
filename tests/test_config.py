"""Config layering (defaults < opencode's settings < TOML < flags), JSONC, and the one-line
errors bad input gets from the real `python -m syncd`."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd import config as config_module
from syncd import jsonc
from syncd.config import Config, load_config, opencode_settings
from syncd.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """An isolated environment: only HOME and XDG_CONFIG_HOME set."""
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg")}


def write_opencode(env: dict[str, str], name: str, text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "opencode" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_toml(env: dict[str, str], text: str, mode: int = 0o600) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "syncd" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_follow_xdg_and_keep_sessions_locally(env: dict[str, str], home: Path) -> None:
    env["XDG_DATA_HOME"] = "/data"
    config = load_config({}, env)
    assert config.db == Path("/data/opencode/opencode.db")
    assert config.state == home / ".local/state/syncd/state.db"
    assert config.archive == home / ".local/state/syncd/archive.db"
    assert config.opencode_config_dir == home / "cfg/opencode"
    assert config.opencode_cache_dir == home / ".cache/opencode"
    assert (config.url, config.transport, config.sessions, config.origin) == (
        None,
        "local",
        "all",
        None,
    )
    assert (config.window, config.concurrency, config.serve_port) == (1.0, 8, 4788)


def test_relative_xdg_values_are_ignored(env: dict[str, str], home: Path) -> None:
    env["XDG_STATE_HOME"] = "relative/state"
    assert load_config({}, env).state == home / ".local/state/syncd/state.db"


def test_enterprise_url_from_opencode_jsonc_with_comments(env: dict[str, str]) -> None:
    write_opencode(
        env,
        "opencode.jsonc",
        """{
          // opencode's share server
          "$schema": "https://opencode.ai/config.json", /* a block
             comment */
          "theme": "a \\" // not a comment",
          "enterprise": { "url": "https://share.example.test:8443/base/", },
          "list": [1, 2,],
        }""",
    )
    config = load_config({}, env)
    assert config.url == "https://share.example.test:8443/base"
    assert config.origin == "https://share.example.test:8443"
    assert (config.transport, config.sessions) == ("http", "shared")


def test_opencode_files_merge_in_opencode_order(env: dict[str, str], tmp_path: Path) -> None:
    write_opencode(env, "config.json", '{"enterprise": {"url": "http://a.test"}}')
    write_opencode(env, "opencode.json", '{"enterprise": {"url": "http://b.test"}}')
    assert load_config({}, env).url == "http://b.test"
    write_opencode(env, "opencode.jsonc", '{"enterprise": {"url": "http://c.test"}}')
    assert load_config({}, env).url == "http://c.test"
    custom = tmp_path / "custom.json"
    custom.write_text('{"enterprise": {"url": "http://d.test"}, "provider": {"p": {}}}')
    env["OPENCODE_CONFIG"] = str(custom)
    assert load_config({}, env).url == "http://d.test"
    merged = opencode_settings(Path(env["XDG_CONFIG_HOME"]) / "opencode", env)
    assert merged["provider"] == {"p": {}}


def test_enterprise_url_env_substitution(env: dict[str, str]) -> None:
    write_opencode(env, "opencode.json", '{"enterprise": {"url": "http://{env:SHARE_HOST}"}}')
    env["SHARE_HOST"] = "share.test:9000"
    assert load_config({}, env).url == "http://share.test:9000"


def test_opencode_share_env_vars(env: dict[str, str]) -> None:
    write_opencode(env, "opencode.json", '{"enterprise": {"url": "http://share.test"}}')
    env["OPENCODE_SHARE_TRANSPORT"] = "rpc"
    env["OPENCODE_SHARE_RPC_KEY"] = "rpc-key-value"
    config = load_config({}, env)
    assert (config.transport, config.key) == ("capnweb-batch", "rpc-key-value")
    assert "rpc-key-value" not in repr(config)


def test_rpc_env_also_picks_transport_for_a_toml_url(env: dict[str, str]) -> None:
    write_toml(env, 'url = "http://toml.test"\n')
    env["OPENCODE_SHARE_TRANSPORT"] = "rpc"
    assert load_config({}, env).transport == "capnweb-batch"


def test_toml_overrides_opencode_and_flags_override_toml(env: dict[str, str]) -> None:
    write_opencode(env, "opencode.json", '{"enterprise": {"url": "http://opencode.test"}}')
    env["OPENCODE_SHARE_RPC_KEY"] = "from-env"
    path = write_toml(
        env,
        'url = "http://toml.test"\ntransport = "a2a"\nkey = "from-toml"\n'
        'window = 2\nsessions = "all"\ndb = "rel/oc.db"\n',
    )
    config = load_config({}, env)
    assert (config.url, config.transport, config.key) == ("http://toml.test", "a2a", "from-toml")
    assert config.window == 2.0 and isinstance(config.window, float)
    assert config.sessions == "all"
    assert config.db == path.parent / "rel/oc.db"  # relative to the config file

    flags = {"url": "http://flag.test/", "transport": "capnweb-ws", "db": None, "serve_port": 0}
    config = load_config(flags, env)
    assert (config.url, config.transport, config.serve_port) == (
        "http://flag.test",
        "capnweb-ws",
        0,
    )
    assert config.db == path.parent / "rel/oc.db"  # None means "not given"


def test_explicit_config_file_replaces_the_default_one(env: dict[str, str], tmp_path: Path) -> None:
    write_toml(env, 'url = "http://default.test"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('log_level = "debug"\n')
    config = load_config({"config": str(explicit)}, env)
    assert (config.url, config.log_level) == (None, "debug")


def test_local_transport_ignores_a_url_from_below(env: dict[str, str]) -> None:
    write_opencode(env, "opencode.json", '{"enterprise": {"url": "not a url"}}')
    write_toml(env, 'transport = "local"\n')
    config = load_config({}, env)
    assert (config.url, config.transport, config.sessions) == (None, "local", "all")


def test_overridden_bad_value_is_not_an_error(env: dict[str, str]) -> None:
    write_opencode(env, "opencode.json", '{"enterprise": {"url": 42}}')
    assert load_config({"url": "http://ok.test"}, env).url == "http://ok.test"


def test_broken_opencode_config_is_skipped_with_a_warning(env: dict[str, str]) -> None:
    path = write_opencode(env, "opencode.json", '{"enterprise": {"url": "http://x.test"')
    with capture_logs() as logs:
        config = load_config({}, env)
    assert config.transport == "local"
    assert [entry["path"] for entry in logs if entry["log_level"] == "warning"] == [str(path)]


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, True), (0o604, True)])
def test_key_in_readable_file_warns(env: dict[str, str], mode: int, warned: bool) -> None:
    path = write_toml(env, 'key = "k-secret-value"\n', mode)
    with capture_logs() as logs:
        load_config({}, env)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0]["path"] == str(path)
        assert "chmod 600" in warnings[0]["event"]
        assert "k-secret-value" not in str(warnings)


def test_store_is_a_path_next_to_the_config_or_a_url_and_its_password_is_secret(
    env: dict[str, str],
) -> None:
    path = write_toml(env, 'store = "team/archive.db"\n')
    assert load_config({}, env).store == str(path.parent / "team" / "archive.db")
    url = "postgresql://syncd:pw-in-file@127.0.0.1:5432/syncd"
    write_toml(env, f'store = "{url}"\nstore_pool_size = 4\n', 0o640)
    with capture_logs() as logs:
        config = load_config({}, env)
    assert (config.store, config.store_pool_size) == (url, 4)
    assert "pw-in-file" not in repr(config)
    assert [e for e in logs if e["log_level"] == "warning" and "chmod 600" in e["event"]]
    assert load_config({"store": "sqlite:///x.db"}, env).store == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("owner", "group", "mode", "readable"),
    [
        (0, 990, 0o640, False),  # the system service's /etc/syncd/config.toml, root:syncd
        (0, 990, 0o644, True),
        (0, 100, 0o640, True),  # a group the reader is not running as
        (990, 990, 0o640, True),  # the reader's own file: its group may hold others
        (990, 990, 0o600, False),
    ],
)
def test_a_file_is_readable_by_others_unless_shared_with_the_reader_only(
    owner: int, group: int, mode: int, readable: bool
) -> None:
    info = os.stat_result((stat.S_IFREG | mode, 0, 0, 1, owner, group, 0, 0, 0, 0))
    assert config_module.readable_by_others(info, uid=990, gid=990) is readable


def test_remote_transport_without_url_is_a_user_error(env: dict[str, str]) -> None:
    with pytest.raises(UserError, match="transport 'http' needs a receiver url"):
        load_config({"transport": "http"}, env)


def test_every_config_field_is_a_toml_key_with_a_parser() -> None:
    assert {f.name for f in fields(Config)} == set(config_module._PARSERS)


def test_example_config_documents_every_key_at_its_default(env: dict[str, str]) -> None:
    # Every `# key = value` line of the example, uncommented, is a TOML document.
    lines = (REPO / "config.example.toml").read_text().splitlines()
    settings = [line[2:] for line in lines if re.match(r"^# [a-z0-9_]+ = ", line)]
    documented = tomllib.loads("\n".join(settings))
    assert set(documented) == {f.name for f in fields(Config)}
    defaults = load_config({}, env)
    for name, value in documented.items():
        if name in ("url", "key", "ca_bundle", "store") or isinstance(
            getattr(defaults, name), Path
        ):
            continue  # examples of values, or paths spelled with "~"
        if name == "serve_max_live_streams":  # unset, derived from serve_max_connections
            assert defaults.live_streams == value
            continue
        assert getattr(defaults, name) == value, name


# -- JSONC --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": "//x", "b": "/*y*/"}', {"a": "//x", "b": "/*y*/"}),
        ('{"a": "q\\"//", // c\n "b": 1}', {"a": 'q"//', "b": 1}),
        ('{"a": [1, [2,], ], /* ,} */ }', {"a": [1, [2]]}),
        ('{"a": ",}"}', {"a": ",}"}),
        ('{"a": "\\\\"} // trailing', {"a": "\\"}),
        ("// only\n[]", []),
    ],
)
def test_jsonc_parses_like_opencode(text: str, expected: object) -> None:
    assert jsonc.loads(text) == expected


def test_jsonc_errors_keep_the_users_line_numbers() -> None:
    with pytest.raises(json.JSONDecodeError) as info:
        jsonc.loads('{\n  /* two\n lines */\n  "a": 1\n  "b": 2\n}')
    assert info.value.lineno == 5
    with pytest.raises(json.JSONDecodeError, match="unterminated"):
        jsonc.loads('{"a": 1 /* open')


# -- bad input through the real command ---------------------------------------------------------


BAD_TOML = [
    ("window = -1", "window = -1"),
    ('window = "1"', "window = '1'"),
    ("poll_interval = nan", "poll_interval = nan"),
    ("batch_max_items = 1.5", "batch_max_items = 1.5"),
    ("concurrency = true", "concurrency = True"),
    ("serve_port = 70000", "serve_port = 70000"),
    ('serve_host = ""', "serve_host = ''"),
    ("serve_max_live_streams = 0", "serve_max_live_streams = 0"),
    ("serve_max_live_streams = 256", "fewer than serve_max_connections (256)"),
    ('transport = "smtp"', "one of local, http, capnweb-batch, capnweb-ws, a2a"),
    ('sessions = "some"', "one of all, shared"),
    ('on_delete = "purge"', "one of keep, delete"),
    ('a2a_binding = "grpc"', "one of jsonrpc, http+json"),
    ('log_level = "loud"', "log_level = 'loud'"),
    ('log_format = "xml"', "one of auto, console, json"),
    ('url = "ftp://x.test"', "url = 'ftp://x.test'"),
    ('url = "https://user:pw@x.test"', "without user:password"),
    ('url = "https://x.test/?a=1"', "without ?query"),
    ('url = "http://x.test:99999"', "port between 1 and 65535"),
    ('url = "http://[::1:8080"', "url = 'http://[::1:8080' is not accepted"),
    ('store = "postgresql://u:pw@[db/archive"', "store = <hidden> is not accepted"),
    ('ca_bundle = "missing.pem"', "ca_bundle ="),
    ("db = 5", "db = 5"),
    ("windo = 1", "unknown key 'windo'"),
    ("window = ", "not valid TOML"),
]


def run_syncd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**env, "PATH": os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        env=full_env,
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("syncd: ")
    assert expected in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("line", "expected"), BAD_TOML)
def test_bad_toml_value_exits_2_with_one_line(
    env: dict[str, str], line: str, expected: str
) -> None:
    path = write_toml(env, line + "\n")
    result = run_syncd(env, "sync")
    assert_one_line_error(result, expected)
    assert str(path) in result.stderr


def test_secret_value_is_never_echoed(env: dict[str, str]) -> None:
    write_toml(env, "key = 123456789\n")
    result = run_syncd(env, "sync")
    assert_one_line_error(result, "key = <hidden>")
    assert "123456789" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sync", "--config", "/nonexistent/syncd.toml"], "does not exist"),
        (["sync", "--transport", "http"], "needs a receiver url"),
        (["sync", "--url", "nonsense"], "command line: url = 'nonsense'"),
        (["sync", "--transport", "carrier-pigeon"], "invalid choice: 'carrier-pigeon'"),
        (["serve", "--port", "eighty"], "invalid int value: 'eighty'"),
        (["serve", "--port", "-1"], "serve_port = -1"),
        (["serve", "--store", "postgresql://u@[db/archive"], "store = <hidden>"),
        (["sync", "--key", "x"], "unrecognized arguments: --key"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_command_line_exits_2_with_one_line(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    assert_one_line_error(run_syncd(env, *args), expected)


def test_an_error_line_shows_control_characters_as_escapes(env: dict[str, str]) -> None:
    """The error line quotes what it was given (a path, a server's or a database's message)
    as it is: an escape sequence in it reached the terminal."""
    result = run_syncd(env, "sync", "--config", "/nonexistent/\x1b]0;pwned\x07\x1b[2J.toml")
    assert_one_line_error(result, r"/nonexistent/\x1b]0;pwned\x07\x1b[2J.toml does not exist")


NOT_PORTS = ["99999", "65536", "0", "-1", "port"]
PORT_EXPECTED = "expected a url with a port between 1 and 65535, or none"


@pytest.mark.parametrize("port", NOT_PORTS)
@pytest.mark.parametrize("where", ["--url", "config file", "enterprise.url from the environment"])
def test_a_url_whose_port_is_not_a_port_is_refused_wherever_it_comes_from(
    env: dict[str, str], port: str, where: str
) -> None:
    """A url is dialled at the port it names or not at all. `http://h:0` was accepted (Python's
    urlsplit takes port 0; the refusal said 1-65535) and every call then failed, retried for
    ever; httpx itself takes 99999 and -1, so each source is checked by syncd, the same way."""
    url = f"https://share.example.test:{port}"
    if where == "--url":
        result = run_syncd(env, "sync", "--url", url)
    elif where == "config file":
        write_toml(env, f'url = "{url}"\n')
        result = run_syncd(env, "sync")
    else:
        write_opencode(env, "opencode.json", '{"enterprise": {"url": "{env:SHARE_URL}"}}')
        result = run_syncd({**env, "SHARE_URL": url}, "sync")
    assert_one_line_error(result, PORT_EXPECTED)
    shown = port if port.isdigit() else "***"  # a word there may be a token: see below
    assert f"url = 'https://share.example.test:{shown}' is not accepted" in result.stderr


@pytest.mark.parametrize("url", ["https://share.example.test:443", "http://h:", "http://h:080"])
def test_a_url_with_its_port_written_out_is_accepted(env: dict[str, str], url: str) -> None:
    assert load_config({"url": url}, env).url == url


def test_bad_enterprise_url_names_opencode_config(env: dict[str, str]) -> None:
    write_opencode(env, "opencode.jsonc", '{"enterprise": {"url": "opncd"}, // c\n}')
    assert_one_line_error(run_syncd(env, "sync"), "(enterprise.url): url = 'opncd'")


URL_TOKEN = "tok-5d1c9e2a7b"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://robot:{token}@share.example.com", "share.example.com"),
        ("https://{token}@share.example.com", "share.example.com"),
        ("https://share.example.com/?token={token}", "share.example.com"),
        ("https://share.example.com/?{token}", "share.example.com"),
        ("https://share.example.com/#{token}", "share.example.com"),
        # Without //host (a scheme left out, a slash) the user info is not where urlsplit
        # finds it: the refusal once quoted these whole.
        ("robot:{token}@share.example.com", "url = '***' is not accepted"),
        ("https:/robot:{token}@share.example.com", "url = '***' is not accepted"),
        # Without its @host the user info reads as host:port: the refusal of the port once
        # quoted the token as the port.
        ("https://robot:{token}", "url = 'https://robot:***' is not accepted"),
        ("https://robot:{token}/share", "url = 'https://robot:***/share' is not accepted"),
    ],
)
def test_a_refused_url_never_echoes_the_credential_in_it(
    env: dict[str, str], url: str, shown: str
) -> None:
    # opencode substitutes {env:NAME} in enterprise.url: a token there comes from the
    # environment, and the refusal reaches the journal of a service.
    write_opencode(
        env,
        "opencode.json",
        json.dumps({"enterprise": {"url": url.format(token="{env:SHARE_TOKEN}")}}),
    )
    env["SHARE_TOKEN"] = URL_TOKEN
    with pytest.raises(UserError) as refused:
        load_config({}, env)
    assert "url = " in str(refused.value) and shown in str(refused.value)
    assert URL_TOKEN not in str(refused.value)


@pytest.mark.parametrize("flag", ["--archive", "--state", "--db"])
def test_a_database_url_where_a_file_path_goes_is_refused(
    env: dict[str, str], home: Path, flag: str
) -> None:
    """`--archive postgresql://...` (the url belongs in --store) once served from a SQLite file
    made at ./postgresql:/u:pw@host/db, and logged that path, password included."""
    command = "serve" if flag == "--archive" else "sync"
    result = run_syncd(env, command, flag, "postgresql://robot:pw-83c1f0@127.0.0.1:1/db")
    assert_one_line_error(result, f"{flag.removeprefix('--')} = 'postgresql://***@127.0.0.1:1/db'")
    assert "pw-83c1f0" not in result.stderr
    assert not (home / "postgresql:").exists()
