"""The shipped systemd units: parsed here for what syncd relies on, and checked by the real
`systemd-analyze verify` when the machine has it (against what the install produced, paths
unchanged, in tests/test_install.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import service as service_module
from syncd.service import system_service, unit_text

REPO = Path(__file__).resolve().parent.parent
UNITS = {"syncd.service": "--user", "syncd-system.service": "--system"}
SERVE_UNIT = "syncd-serve.service"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    return service_module.parse_unit(path.read_text())


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_a_watched_notify_service(name: str) -> None:
    service = parse_unit(REPO / "systemd" / name)["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["TimeoutStopSec"] == ["30"]
    (exec_start,) = service["ExecStart"]
    program, *args = exec_start.split()
    assert program.endswith("/syncd") and args == ["run"]
    assert service["StateDirectory"] == ["syncd"]


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_hardened_but_can_read_opencode_db(name: str) -> None:
    service = parse_unit(REPO / "systemd" / name)["Service"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert service[key] == [value], key
    # opencode's data directory stays writable: reading a WAL database needs its -shm file.
    writable = " ".join(service.get("ReadWritePaths", []))
    assert "/opencode" in writable


def test_user_unit_keeps_home_read_only_except_opencode_data() -> None:
    service = parse_unit(REPO / "systemd" / "syncd.service")["Service"]
    assert service["ProtectHome"] == ["read-only"]
    assert service["ReadWritePaths"] == ["-%h/.local/share/opencode"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd)",
)
def test_serve_unit_is_a_hardened_notify_service_reading_its_config() -> None:
    service = parse_unit(REPO / "systemd" / SERVE_UNIT)["Service"]
    assert service["Type"] == ["notify"]
    (exec_start,) = service["ExecStart"]
    program, *args = exec_start.split()
    assert program.endswith("/syncd") and args[0] == "serve"
    assert args[1:] == ["--config", "/etc/syncd-serve/config.toml"]
    assert service["User"] == ["syncd-serve"] and service["UMask"] == ["0077"]
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes"}.items():
        assert service[key] == [value], key


@pytest.mark.parametrize(("name", "mode"), [*UNITS.items(), (SERVE_UNIT, "--system")])
def test_systemd_analyze_verify(name: str, mode: str, tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this environment's syncd.
    syncd = Path(sys.executable).parent / "syncd"
    if not syncd.exists():
        pytest.skip(f"no syncd console script next to {sys.executable}")
    text = (REPO / "systemd" / name).read_text()
    lines = [
        f"ExecStart={syncd} {line.split(maxsplit=1)[1]}" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ]
    unit = tmp_path / name
    unit.write_text("\n".join(lines) + "\n")
    runtime = tmp_path / "runtime"  # --user needs a runtime directory
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", mode, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)},
    )
    # verify exits 0 even for unknown keys and unparsable values: it only prints them.
    complaints = [line for line in result.stderr.splitlines() if name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@pytest.mark.parametrize("name", UNITS)
def test_the_package_carries_the_units_of_systemd_dir(name: str) -> None:
    assert unit_text(name) == (REPO / "systemd" / name).read_text()


def test_the_system_service_is_read_off_its_unit() -> None:
    service = system_service()
    assert (service.user, service.group, service.supplementary_groups) == (
        "syncd",
        "syncd",
        ("opencode",),
    )
    assert service.config_dir == Path("/etc/syncd")
    assert service.state_dir == Path("/var/lib/syncd")
    # The unit's Environment=, specifiers expanded: what `sudo syncd status` loads the config with.
    assert service.env == {
        "HOME": "/var/lib/syncd",
        "XDG_CONFIG_HOME": "/etc",
        "XDG_STATE_HOME": "/var/lib",
        "XDG_DATA_HOME": "/var/lib",
        "XDG_CACHE_HOME": "/var/cache",
    }
