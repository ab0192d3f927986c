"""The systemd units syncd ships (syncd/units/, the files of systemd/) and what follows from them:
the system service's user, groups, directories and environment. Read from the unit files
themselves, so that `install-service` and `status` cannot drift from what systemd will run."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from syncd.config import Config, load_config
from syncd.errors import UserError

USER_UNIT = "syncd.service"
SYSTEM_UNIT = "syncd-system.service"
# The specifiers the system unit uses, as systemd expands them for system units
# (systemd.unit(5), "Specifiers").
SYSTEM_SPECIFIERS = {"%S": "/var/lib", "%E": "/etc", "%C": "/var/cache", "%%": "%"}

Unit = dict[str, dict[str, list[str]]]


def unit_text(name: str) -> str:
    return (resources.files("syncd") / "units" / name).read_text(encoding="utf-8")


def parse_unit(text: str) -> Unit:
    """section -> key -> every value given (systemd allows repeating most keys)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


@dataclass(frozen=True)
class SystemService:
    user: str
    group: str
    supplementary_groups: tuple[str, ...]
    env: dict[str, str]  # as the unit's Environment= sets it
    config_dir: Path
    state_dir: Path


def system_service() -> SystemService:
    service = parse_unit(unit_text(SYSTEM_UNIT))["Service"]

    def expand(value: str) -> str:
        for specifier, meaning in SYSTEM_SPECIFIERS.items():
            value = value.replace(specifier, meaning)
        if "%" in value:
            raise ValueError(f"{SYSTEM_UNIT}: specifier in {value!r} not known to syncd")
        return value

    env = dict(
        expand(assignment).split("=", 1)
        for line in service.get("Environment", [])
        for assignment in shlex.split(line)
    )
    (config_dir,) = service["ConfigurationDirectory"]
    (state_dir,) = service["StateDirectory"]
    return SystemService(
        user=service["User"][0],
        group=service["Group"][0],
        supplementary_groups=tuple(" ".join(service.get("SupplementaryGroups", [])).split()),
        env=env,
        config_dir=Path(SYSTEM_SPECIFIERS["%E"]) / config_dir,
        state_dir=Path(SYSTEM_SPECIFIERS["%S"]) / state_dir,
    )


def config_for_state_reader(flags: Mapping[str, object]) -> Config:
    """The config of a command that reads syncd's state (`status`, `dead-letters`). Run by
    root, which has no state of its own (and no --state or --config): the system service's,
    this process switched to the service's user and groups first, so that no file root would
    create there (a database's -shm) locks the service out."""
    own = load_config(flags)
    if os.geteuid() != 0 or flags.get("state") or flags.get("config") or own.state.exists():
        return own
    service = system_service()
    state = load_config(flags, env=service.env).state
    if not state.exists():
        raise UserError(
            f"no state database at {own.state} (root's own) nor at {state} (the system "
            "service's, once it has run); for a user service, run `syncd status` as its user"
        )
    try:
        user = pwd.getpwnam(service.user)
    except KeyError:
        raise UserError(
            f"{state} exists but there is no user {service.user!r}: run `syncd install-service "
            "--system`"
        ) from None
    groups = []
    for name in service.supplementary_groups:
        try:
            groups.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue  # the service itself would not start; reading the state needs none
    print(
        f"syncd: root has no state of its own; this is the system service's, {state} "
        f"(read as user {service.user})",
        file=sys.stderr,
    )
    os.setgroups(groups)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    return load_config(flags, env=service.env)
