"""syncd's settings, layered: defaults < opencode's own settings < TOML file < command-line flags.

opencode's settings are the ones its share feature reads: `enterprise.url` in its global
config (`config.json`, `opencode.json`, `opencode.jsonc` in `$XDG_CONFIG_HOME/opencode`, merged in
that order, then the file named by `$OPENCODE_CONFIG`), and the share env vars
`OPENCODE_SHARE_TRANSPORT=rpc` / `OPENCODE_SHARE_RPC_KEY`.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import structlog

from syncd import jsonc
from syncd.errors import UserError, os_problem
from syncd.redact import MASK
from syncd.urls import cleartext_beyond_loopback, is_port_number, origin_of, port_of, port_text

TransportName = Literal["local", "http", "capnweb-batch", "capnweb-ws", "a2a"]
Sessions = Literal["all", "shared"]
OnDelete = Literal["keep", "delete"]
A2aBinding = Literal["jsonrpc", "http+json"]
LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
TRANSPORTS: tuple[TransportName, ...] = get_args(TransportName)
REMOTE_TRANSPORTS = TRANSPORTS[1:]
SESSIONS: tuple[Sessions, ...] = get_args(Sessions)
ON_DELETE: tuple[OnDelete, ...] = get_args(OnDelete)
A2A_BINDINGS: tuple[A2aBinding, ...] = get_args(A2aBinding)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)

# opencode's global config files, later ones overriding earlier ones (as opencode merges them).
OPENCODE_CONFIG_FILES = ("config.json", "opencode.json", "opencode.jsonc")

log = structlog.get_logger("syncd.config")


@dataclass(frozen=True, kw_only=True)
class Config:
    db: Path
    state: Path
    archive: Path
    url: str | None
    transport: TransportName
    sessions: Sessions
    key: str | None = field(default=None, repr=False)
    window: float = 1.0
    batch_max_items: int = 500
    batch_max_bytes: int = 4_000_000
    poll_interval: float = 30.0
    request_timeout: float = 30.0
    backoff_max: float = 300.0
    concurrency: int = 8
    on_delete: OnDelete = "keep"
    a2a_binding: A2aBinding = "jsonrpc"
    ca_bundle: Path | None = None
    serve_host: str = "127.0.0.1"
    serve_port: int = 4788
    # `syncd serve`'s archive: a path, sqlite:///path or postgresql://...; None: `archive`.
    store: str | None = field(default=None, repr=False)
    store_pool_size: int = 10
    serve_public: bool = False  # listen beyond loopback without a key, on purpose
    serve_header_timeout: float = 10.0
    serve_body_timeout: float = 60.0
    serve_max_connections: int = 256
    serve_max_live_streams: int | None = None  # None: see live_streams
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    metrics_address: str = ""  # "host:port" of /metrics and /health; empty: off
    health_max_failures: int = 5
    health_period: float = 300.0
    opencode_config_dir: Path
    opencode_cache_dir: Path

    @property
    def origin(self) -> str | None:
        """scheme://host[:port] of `url`, to match opencode's own `session_share.url` rows."""
        return None if self.url is None else origin_of(self.url)

    def cleartext_warning(self) -> str | None:
        """Why credentials would cross the network readable (shown at start and in `status`),
        or None. Every remote transport sends share secrets, and the key when there is one."""
        if self.url is None or not cleartext_beyond_loopback(self.url):
            return None
        carried = "the key and share secrets" if self.key else "share secrets"
        return (
            f"url {self.url} is plain http:// to another machine: {carried} cross the network "
            "unencrypted; use https://"
        )

    @property
    def live_streams(self) -> int:
        """Share pages' live streams `syncd serve` keeps open at once: a part of
        serve_max_connections only, so that streams anyone may open leave the rest to
        syncd's deliveries. Unset, a quarter of it."""
        if self.serve_max_live_streams is not None:
            return self.serve_max_live_streams
        return self.serve_max_connections // 4

    @property
    def serve_url(self) -> str:
        """Where `syncd serve` (with these settings) answers, as a browser on this machine
        opens it: the embedded archive's share pages live under it."""
        return serve_url(self.serve_host, self.serve_port)


def serve_url(host: str, port: int) -> str:
    """http://host:port for a listening address; a wildcard address is reached on loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_config(flags: Mapping[str, object], env: Mapping[str, str] = os.environ) -> Config:
    """Build the Config from every layer. `flags` holds Config field names (None = not given)
    plus `config`, an explicit TOML file. Raises UserError on any bad input."""
    dirs = XdgDirs(env)
    defaults: dict[str, Any] = {
        "db": dirs.data / "opencode" / "opencode.db",
        "state": dirs.state / "syncd" / "state.db",
        "archive": dirs.state / "syncd" / "archive.db",
        "opencode_config_dir": dirs.config / "opencode",
        "opencode_cache_dir": dirs.cache / "opencode",
    }
    toml_path, toml_required = _toml_path(flags, dirs)
    toml = _read_toml(toml_path, required=toml_required) if toml_path else {}
    cli = {name: value for name, value in flags.items() if name != "config" and value is not None}

    # Only the winning value of each key is validated: a bad setting that is overridden
    # does not stop syncd.
    chosen: dict[str, tuple[Any, str | None]] = {name: (v, None) for name, v in defaults.items()}
    chosen.update((name, (v, f"{toml_path}")) for name, v in toml.items())
    chosen.update((name, (v, "command line")) for name, v in cli.items())
    opencode_dir = _validate("opencode_config_dir", *chosen["opencode_config_dir"])
    opencode, transport_hint = _opencode_layer(opencode_dir, env)
    for name, value in opencode.items():
        chosen.setdefault(name, value)
    if chosen.get("transport", (None,))[0] == "local":
        chosen.pop("url", None)  # the local archive needs no receiver, however it is configured

    values = {name: _validate(name, value, source) for name, (value, source) in chosen.items()}
    explicit_transport = "transport" in toml or "transport" in cli
    config = _finish(values, explicit_transport=explicit_transport, transport_hint=transport_hint)
    if config.live_streams >= config.serve_max_connections:  # only when set: unset is fewer
        raise UserError(
            f"{chosen['serve_max_live_streams'][1]}: serve_max_live_streams = "
            f"{config.live_streams} is not accepted: expected fewer than serve_max_connections "
            f"({config.serve_max_connections}), so that live share pages leave room for syncd's "
            "deliveries"
        )
    return config


def opencode_settings(config_dir: Path, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """opencode's merged global config (for `enterprise.url`, `provider.<id>.models`).

    A file opencode would also fail to read is skipped with a warning: syncd keeps working
    from its own settings."""
    paths = [config_dir / name for name in OPENCODE_CONFIG_FILES]
    if env.get("OPENCODE_CONFIG"):
        paths.append(Path(env["OPENCODE_CONFIG"]).expanduser())
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read opencode config, skipped", path=str(path), error=str(e))
            continue
        try:
            value = jsonc.loads(text)
        except ValueError as e:
            log.warning("opencode config is not valid JSONC, skipped", path=str(path), error=str(e))
            continue
        if isinstance(value, dict):
            merged = _merge(merged, value)
    return merged


class XdgDirs:
    def __init__(self, env: Mapping[str, str]) -> None:
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()

        def base(var: str, fallback: str) -> Path:
            # The XDG spec says relative values are invalid and must be ignored.
            value = env.get(var, "")
            return Path(value) if value.startswith("/") else home / fallback

        self.config = base("XDG_CONFIG_HOME", ".config")
        self.data = base("XDG_DATA_HOME", ".local/share")
        self.state = base("XDG_STATE_HOME", ".local/state")
        self.cache = base("XDG_CACHE_HOME", ".cache")


def _opencode_layer(
    config_dir: Path, env: Mapping[str, str]
) -> tuple[dict[str, tuple[Any, str]], str]:
    """The url and key opencode's share would use, each with where it came from, and the
    transport it would speak to that url."""
    layer: dict[str, tuple[Any, str]] = {}
    enterprise = opencode_settings(config_dir, env).get("enterprise")
    url = enterprise.get("url") if isinstance(enterprise, dict) else None
    if url is not None:
        # opencode substitutes {env:NAME} in its config text.
        if isinstance(url, str):
            url = re.sub(r"\{env:([^}]+)\}", lambda m: env.get(m.group(1), ""), url)
        layer["url"] = (url, f"opencode config in {config_dir} (enterprise.url)")
    if env.get("OPENCODE_SHARE_RPC_KEY"):
        layer["key"] = (env["OPENCODE_SHARE_RPC_KEY"], "OPENCODE_SHARE_RPC_KEY")
    rpc = env.get("OPENCODE_SHARE_TRANSPORT") == "rpc"
    return layer, "capnweb-batch" if rpc else "http"


def _toml_path(flags: Mapping[str, object], dirs: XdgDirs) -> tuple[Path | None, bool]:
    if flags.get("config"):
        return Path(str(flags["config"])).expanduser(), True
    default = dirs.config / "syncd" / "config.toml"
    try:
        return (default, False) if default.exists() else (None, False)
    except OSError as e:
        raise UserError(
            f"cannot look for the config file {default}: {os_problem(e, default)}; fix the "
            "permissions of its directory, or name a config file with --config"
        ) from None


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
        info = path.stat()
    except FileNotFoundError:
        if required:
            raise UserError(f"config file {path} does not exist: check --config") from None
        return {}
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise UserError(
            f"{path}: unknown key {unknown[0]!r}; accepted keys: {', '.join(sorted(_KEYS))}"
        )
    secret = "key" in data or _holds_password(data.get("store"))
    if secret and readable_by_others(info, os.geteuid(), os.getegid()):
        log.warning(
            "config file holding a key or a database password is readable by other users; "
            "run chmod 600 on it (or chmod 640 with the service's group)",
            path=str(path),
        )
    return {name: _relative_to(path.parent, name, value) for name, value in data.items()}


def _holds_password(store: Any) -> bool:
    if not isinstance(store, str) or "://" not in store:
        return False
    try:
        parts = urlsplit(store)
    except ValueError:  # refused when validated; meanwhile, whatever precedes an @ may be one
        return "@" in store
    return bool(parts.password) or "password=" in parts.query


def readable_by_others(info: os.stat_result, uid: int, gid: int) -> bool:
    """Whether users other than the reader can read the file. The group may when it is the
    reader's own group and someone else (root) owns the file: /etc/syncd/config.toml is
    root:syncd 0640, which the system service reads through its group."""
    if info.st_mode & stat.S_IRWXO:
        return True
    shared_with_us = info.st_uid != uid and info.st_gid == gid
    return bool(info.st_mode & stat.S_IRWXG) and not shared_with_us


def _relative_to(base: Path, name: str, value: Any) -> Any:
    # Relative paths in a config file mean "next to the config file", not "where syncd runs".
    is_path = name in _PATH_KEYS or (name == "store" and "://" not in str(value))
    if is_path and isinstance(value, str) and value:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    return value


def _finish(values: dict[str, Any], *, explicit_transport: bool, transport_hint: str) -> Config:
    url = values.get("url")
    transport = values.get("transport")
    if not explicit_transport:
        transport = transport_hint if url else "local"
    if transport == "local":
        url = None
    elif url is None:
        raise UserError(
            f"transport {transport!r} needs a receiver url: set url in the config file or pass "
            "--url (opencode's own share uses enterprise.url, default https://opncd.ai)"
        )
    values["url"] = url
    values["transport"] = transport
    values.setdefault("sessions", "all" if transport == "local" else "shared")
    return Config(**values)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(merged[name], value)
        else:
            merged[name] = value
    return merged


# -- validation -------------------------------------------------------------------------------


def _validate(name: str, value: Any, source: str | None) -> Any:
    parse = _PARSERS[name]
    try:
        return parse(value)
    except _Invalid as e:
        where = f"{source}: " if source else ""
        if name in ("key", "store"):
            shown = "<hidden>"
        elif isinstance(value, str) and (parse is _url or "://" in value):
            shown = repr(_url_shown(value))
        else:
            shown = repr(value)
        raise UserError(f"{where}{name} = {shown} is not accepted: expected {e}") from None


def _url_shown(url: str) -> str:
    """`url` as an error may show it: a token is often carried in its user info, query or
    fragment (opencode fills enterprise.url from the environment), so those are masked, and
    so is a port that is not a number (a user info without its @host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or not parts.netloc:  # unparseable, or no //host (`robot:TOKEN@host`,
        # `https:/robot:TOKEN@host`): shown only when nothing in it could be a credential
        return MASK if set("@?#") & set(url) else url
    _user, at, host = parts.netloc.rpartition("@")
    port = port_text(host)
    if port is not None and not is_port_number(port):  # `https://robot:TOKEN`: no @host
        host = f"{host.removesuffix(':' + port)}:{MASK}"
    return urlunsplit(
        parts._replace(
            netloc=f"{MASK}@{host}" if at else host,
            query=MASK if parts.query else "",
            fragment=MASK if parts.fragment else "",
        )
    )


class _Invalid(Exception):
    """What a value should have been (the caller adds key, value and source)."""


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise _Invalid("a file path (non-empty string)")
    if "://" in value:  # a database url: a path would make a file at ./postgresql:/user:pw@...
        raise _Invalid("a file path, not a url (a receiver's store url goes in store / --store)")
    return Path(value).expanduser()


def _ca_bundle(value: Any) -> Path:
    path = _path(value)
    if not path.exists():
        raise _Invalid("an existing PEM file or certificate directory")
    return path


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("an http:// or https:// url")
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced [ or ] around an IPv6 address
        raise _Invalid("an http:// or https:// url with a host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("an http:// or https:// url with a host")
    if parts.username or parts.password:
        raise _Invalid("a url without user:password (put a key in the config file instead)")
    if parts.query or parts.fragment:
        raise _Invalid("a base url without ?query or #fragment")
    try:
        port_of(parts)
    except ValueError:
        raise _Invalid(
            "a url with a port between 1 and 65535, or none (the scheme's default)"
        ) from None
    return value.rstrip("/")


def _store(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    expected = "a file path, sqlite:///path or postgresql://user:password@host:port/database"
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(expected)
    if "://" not in value:
        return str(Path(value).expanduser())
    try:
        urlsplit(value)
    except ValueError:  # an unbalanced [ or ] around an IPv6 address
        raise _Invalid(expected) from None
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a non-empty string")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise _Invalid("one of " + ", ".join(options))
        return value

    return parse


def _positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("a number of seconds > 0")
    if not math.isfinite(value) or value <= 0:
        raise _Invalid("a number of seconds > 0")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid("a whole number >= 1")
    return value


def _address(value: Any) -> str:
    if value == "":
        return value
    if not isinstance(value, str):
        raise _Invalid('"host:port" (e.g. "127.0.0.1:9464"), or "" for off')
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Invalid('"host:port" with a port 0-65535 (e.g. "127.0.0.1:9464"), or "" for off')
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise _Invalid("a port number 0-65535 (0 picks a free port)")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "db": _path,
    "state": _path,
    "archive": _path,
    "url": _url,
    "transport": _choice(TRANSPORTS),
    "sessions": _choice(SESSIONS),
    "key": _text,
    "window": _positive_float,
    "batch_max_items": _positive_int,
    "batch_max_bytes": _positive_int,
    "poll_interval": _positive_float,
    "request_timeout": _positive_float,
    "backoff_max": _positive_float,
    "concurrency": _positive_int,
    "on_delete": _choice(ON_DELETE),
    "a2a_binding": _choice(A2A_BINDINGS),
    "ca_bundle": _ca_bundle,
    "serve_host": _text,
    "serve_port": _port,
    "store": _store,
    "store_pool_size": _positive_int,
    "serve_public": _bool,
    "serve_header_timeout": _positive_float,
    "serve_body_timeout": _positive_float,
    "serve_max_connections": _positive_int,
    "serve_max_live_streams": _positive_int,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS),
    "metrics_address": _address,
    "health_max_failures": _positive_int,
    "health_period": _positive_float,
    "opencode_config_dir": _path,
    "opencode_cache_dir": _path,
}
_KEYS = frozenset(f.name for f in fields(Config))
_PATH_KEYS = frozenset(
    {"db", "state", "archive", "ca_bundle", "opencode_config_dir", "opencode_cache_dir"}
)
