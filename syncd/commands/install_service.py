"""`syncd install-service [--user | --system]`: set up the shipped systemd unit for this syncd.

--user writes the user unit; --system (root) creates the service's user and groups, gives it
/etc/syncd (root:syncd 0750, config.toml 0640: the service reads it through its group, a key
stays hidden from others), and writes the system unit. The unit's ExecStart is where
scripts/install links the command; when this syncd is elsewhere, ExecStart points at it
instead. Both print how to start and check the service; neither starts it.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sysconfig
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ..config import Config, XdgDirs, load_config
from ..errors import UserError
from ..service import SYSTEM_UNIT, USER_UNIT, parse_unit, system_service, unit_text
from . import Subcommands

INSTALLED_NAME = "syncd.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")


def register(commands: Subcommands, _common: argparse.ArgumentParser) -> None:
    help = "install the systemd unit: --user (default for a user) or --system (default for root)"
    sub = commands.add_parser("install-service", help=help, description=help)
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument(
        "--user", dest="system", action="store_false", help="a user unit, for your opencode"
    )
    mode.add_argument(
        "--system",
        dest="system",
        action="store_true",
        help="a system unit running as the user syncd (creates it; needs root)",
    )
    sub.set_defaults(command=_command, system=None)


def _command(_config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    system = os.geteuid() == 0 if args.system is None else args.system
    return install_system() if system else install_user()


async def install_user() -> int:
    home = Path.home()
    text = unit_text(USER_UNIT)
    text, exec_note = _exec_start(text, lambda program: program.replace("%h", str(home)))
    path = XdgDirs(os.environ).config / "systemd/user" / INSTALLED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"{path} written ({_exec_line(text)})")
    _print_notes([exec_note])
    print("start it:  systemctl --user daemon-reload && systemctl --user enable --now syncd")
    print("check it:  systemctl --user status syncd; journalctl --user -u syncd; syncd status")
    print(f"to keep it running without a login session: loginctl enable-linger {_user_name()}")
    return 0


async def install_system() -> int:
    if os.geteuid() != 0:
        raise UserError(
            "install-service --system creates a user and writes to /etc: run it as root "
            "(sudo syncd install-service --system)"
        )
    service = system_service()
    text, exec_note = _exec_start(unit_text(SYSTEM_UNIT), lambda program: program)
    user_line = _ensure_user(service.user, service.group, service.supplementary_groups,
                             home=service.state_dir)  # fmt: skip
    gid = grp.getgrnam(service.group).gr_gid
    service.config_dir.mkdir(parents=True, exist_ok=True)
    _own(service.config_dir, gid, 0o750)
    config_file = service.config_dir / "config.toml"
    if config_file.exists():
        _own(config_file, gid, 0o640)
    path = SYSTEM_UNIT_DIR / INSTALLED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    print(user_line)
    print(f"{service.config_dir}: root:{service.group} 0750" + (
        f" ({config_file.name}: root:{service.group} 0640)" if config_file.exists() else ""
    ))  # fmt: skip
    print(f"{path} written ({_exec_line(text)})")
    db = load_config({}, env=service.env).db
    _print_notes([exec_note, _opencode_dir_note(db.parent, service.supplementary_groups)])
    print("start it:  systemctl daemon-reload && systemctl enable --now syncd")
    print("check it:  systemctl status syncd; journalctl -u syncd; sudo syncd status")
    return 0


def _exec_start(text: str, expand: Callable[[str], str]) -> tuple[str, str | None]:
    """The unit, its ExecStart pointing at this syncd's command, and a note when that is not
    where the unit expects it (scripts/install's place)."""
    installed = Path(sysconfig.get_path("scripts")) / "syncd"
    if not installed.is_file():
        raise UserError(
            f"this syncd has no `syncd` command ({installed} is missing): install it with "
            "scripts/install first"
        )
    (exec_start,) = parse_unit(text)["Service"]["ExecStart"]
    program, arguments = exec_start.split(" ", 1)
    expected = Path(expand(program))
    if expected.exists() and expected.samefile(installed):
        return text, None
    line = f"ExecStart={exec_start}"
    text = text.replace(f"\n{line}\n", f"\nExecStart={installed} {arguments}\n", 1)
    return text, (
        f"note: ExecStart runs {installed}: this syncd is not at {expected}, where "
        "scripts/install puts it"
    )


def _exec_line(text: str) -> str:
    (exec_start,) = parse_unit(text)["Service"]["ExecStart"]
    return f"ExecStart={exec_start}"


def _ensure_user(
    user: str, group: str, supplementary: tuple[str, ...], *, home: Path
) -> str:  # fmt: skip
    for name in (group, *supplementary):
        if not _group_exists(name):
            _admin("groupadd", "--system", name)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        groups = ["--groups", ",".join(supplementary)] if supplementary else []
        _admin("useradd", "--system", "--gid", group, *groups, "--home-dir", str(home),
               "--no-create-home", "--shell", nologin,
               "--comment", "syncd, remote copy of opencode sessions", user)  # fmt: skip
        return f"user {user} created (group {group}, also in: {' '.join(supplementary)})"
    missing = [
        name
        for name in supplementary
        if user not in grp.getgrnam(name).gr_mem and grp.getgrnam(name).gr_gid != entry.pw_gid
    ]
    if missing:
        _admin("usermod", "--append", "--groups", ",".join(missing), user)
        return f"user {user} exists; added to {', '.join(missing)}"
    return f"user {user} exists"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _admin(tool: str, *args: str) -> None:
    # In sbin, which a root shell reached by `su` (not `su -`) may not have on its PATH.
    program = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if program is None:
        raise UserError(f"{tool} not found; install the shadow tools (Debian: apt install passwd)")
    result = subprocess.run([program, *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise UserError(f"{tool} {' '.join(args)}: {reason}")


def _own(path: Path, gid: int, mode: int) -> None:
    os.chown(path, 0, gid)
    path.chmod(mode)


def _opencode_dir_note(directory: Path, groups: tuple[str, ...]) -> str | None:
    """What keeps the service from reading opencode's database, if anything is visible yet."""
    if not groups:
        return None
    if not directory.exists():
        return (
            f"note: {directory} does not exist yet: the service waits for opencode's database "
            "there (opencode as its own service with XDG_DATA_HOME=/var/lib, group "
            f"{groups[0]}, UMask=0007); for another place set db in "
            "/etc/syncd/config.toml and ReadWritePaths= in a drop-in (systemctl edit syncd)"
        )
    info = directory.stat()
    group = grp.getgrgid(info.st_gid).gr_name
    if group in groups and info.st_mode & stat.S_IRWXG == stat.S_IRWXG:
        return None
    return (
        f"note: {directory} is group {group}, mode {stat.S_IMODE(info.st_mode):04o}: the service "
        f"reads and writes it (the database's -shm) through group {groups[0]}: run "
        f"chgrp -R {groups[0]} {directory} && chmod -R g+rwX {directory}"
    )


def _print_notes(notes: list[str | None]) -> None:
    for note in notes:
        if note:
            print(note)


def _user_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
