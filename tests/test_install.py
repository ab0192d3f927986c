"""The first five minutes on a stock machine, as the README tells a new user: its quickstart
blocks run as written, by an unprivileged user in a clean HOME and a plain copy of the
repository, with the machine's own python3 (Debian's, externally managed, where there is one).
Also what the install scripts say when Python cannot make a venv, and the shipped units checked
by `systemd-analyze verify` against the paths the install produced, unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncd.archive.sqlite import SqliteArchive
from syncd.service import system_service
from tests.support.expected import database_snapshot, receiver_differences

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
# A new login's PATH on Debian (/etc/profile), before anything of the user's; root's.
STOCK_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOBODY = 65534
INSTALL_TIMEOUT = 600.0  # a cold pip (no cache) on a slow network; normally 20 to 30 s
STOP_TIMEOUT = 30.0


def quickstart_blocks() -> list[str]:
    """The shell blocks of the README's Quickstart section, as written."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, f"expected the install and the test blocks, found {blocks}"
    return blocks


@pytest.fixture(scope="module")
def machine_python() -> str:
    """The python3 a new login finds: Debian's own on Debian (externally managed)."""
    python = shutil.which("python3", path=STOCK_PATH)
    if python is None:
        pytest.skip(f"no python3 on {STOCK_PATH}")
    probe = subprocess.run(
        [python, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"{python} is older than 3.11 or has no venv/ensurepip (Debian: apt install "
            "python3-venv; .ci/run does)"
        )
    return python


def plain_copy(destination: Path) -> None:
    """The files a clone has, plus this checkout's uncommitted work; nothing git ignores (no
    .venv, no node_modules, no caches)."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to tell a clone's files from build products")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


@dataclass
class Workspace:
    """A new user's world: a clean HOME and a plain copy of the repository. Run as root, the
    commands run as `nobody`, so that `scripts/install` takes its user path as for anyone."""

    root: Path
    home: Path
    repo: Path
    python: str
    downloads: Path

    @property
    def switch_user(self) -> bool:
        return os.geteuid() == 0

    @property
    def link(self) -> Path:
        return self.home / ".local/bin/syncd"

    def env(self) -> dict[str, str]:
        # The machine's own settings (CA bundles, proxies, registries) stay; whatever names a
        # home, an active environment, a test run or syncd's and opencode's settings goes.
        dropped = ("HOME", "XDG_", "VIRTUAL_ENV", "PYTHON", "PYTEST_", "SYNCD_", "OPENCODE_")
        env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
        # Login shells add ~/.local/bin once it exists (Debian's /etc/skel/.profile); Node is
        # wherever this machine has it.
        node = shutil.which("npm")
        extra = [str(Path(node).parent)] if node else []
        env["PATH"] = ":".join([str(self.home / ".local/bin"), STOCK_PATH, *extra])
        env["HOME"] = str(self.home)
        # One download cache for this module's new users: what is tested is the install, not
        # how fast the network fetches the same wheels and packages a second time.
        env["PIP_CACHE_DIR"] = str(self.downloads / "pip")
        env["npm_config_cache"] = str(self.downloads / "npm")
        return env

    def user_options(self) -> dict[str, Any]:
        if not self.switch_user:
            return {}
        return {"user": NOBODY, "group": NOBODY, "extra_groups": []}

    def give_to_user(self) -> None:
        if self.switch_user:
            for path in [self.root, *self.root.rglob("*")]:
                os.lchown(path, NOBODY, NOBODY)

    def run(
        self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """As the new user, in the copy (or `cwd`), with a new login's environment (or `env`)."""
        return subprocess.run(
            args, cwd=cwd or self.repo, env=env or self.env(), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, **self.user_options(),
        )  # fmt: skip

    def imports_syncd(self, python: Path | str, env: dict[str, str] | None = None) -> bool:
        """Whether `python` has syncd installed (asked from HOME: the copy's own syncd/ would
        be found from inside it)."""
        return self.run([str(python), "-c", "import syncd"], env=env, cwd=self.home).returncode == 0


@pytest.fixture(scope="module")
def downloads() -> Iterator[Path]:
    with open_to_new_user("syncd-downloads-") as root:
        yield root


@pytest.fixture
def workspace(machine_python: str, downloads: Path) -> Iterator[Workspace]:
    with new_user_workspace(machine_python, downloads) as space:
        yield space


@contextlib.contextmanager
def new_user_workspace(python: str, downloads: Path) -> Iterator[Workspace]:
    with open_to_new_user("syncd-new-user-") as root:
        space = Workspace(root, root / "home", root / "repo", python, downloads)
        space.home.mkdir()
        plain_copy(space.repo)
        yield space


@contextlib.contextmanager
def open_to_new_user(prefix: str) -> Iterator[Path]:
    # Not under pytest's tmp_path: as root that is 0700, closed to the user the commands run as.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        root.chmod(0o755)
        if os.geteuid() == 0:
            os.chown(root, NOBODY, NOBODY)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Quickstart:
    space: Workspace
    sample: Path
    exit_code: int
    output: str


@pytest.fixture(scope="module")
def quickstart(machine_python: str, fixtures_dir: Path, downloads: Path) -> Iterator[Quickstart]:
    """The README's first block, as written, for a user whose opencode holds the sample
    sessions; stopped with Ctrl-C (SIGINT to the foreground job) once `syncd status` says
    every session is delivered."""
    install_and_run = quickstart_blocks()[0]
    with new_user_workspace(machine_python, downloads) as space:
        opencode = space.home / ".local/share/opencode"
        opencode.mkdir(parents=True)
        shutil.copy(fixtures_dir / "opencode/sample-1.18.33.db", opencode / "opencode.db")
        (opencode / "opencode.db").chmod(0o644)
        space.give_to_user()
        expected = set(database_snapshot(opencode / "opencode.db"))
        log_path = space.root / "quickstart.log"
        with log_path.open("w") as log:
            job = subprocess.Popen(
                ["bash", "-c", install_and_run], cwd=space.repo, env=space.env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **space.user_options(),
            )  # fmt: skip
        try:
            _wait_until_delivered(space, job, expected, log_path)
            os.killpg(job.pid, signal.SIGINT)
            exit_code = job.wait(STOP_TIMEOUT)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
        yield Quickstart(space, opencode / "opencode.db", exit_code, log_path.read_text())


def _wait_until_delivered(
    space: Workspace, job: subprocess.Popen, expected: set[str], log: Path
) -> None:
    deadline = time.monotonic() + INSTALL_TIMEOUT
    while True:
        if job.poll() is not None:
            raise AssertionError(f"quickstart exited {job.returncode}:\n{log.read_text()}")
        if space.link.exists():
            status = space.run([str(space.link), "status", "--json"])
            if status.stdout.startswith("{"):
                sessions = json.loads(status.stdout)["sessions"]
                delivered = {s["session_id"] for s in sessions if s["state"] == "delivered"}
                if delivered == expected:
                    return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not every session delivered after {INSTALL_TIMEOUT:g}s:\n{log.read_text()}"
            )
        time.sleep(0.5)


async def test_quickstart_archives_every_sample_session(quickstart: Quickstart) -> None:
    assert quickstart.exit_code == 0, quickstart.output  # Ctrl-C is a clean stop
    archive = quickstart.space.home / ".local/state/syncd/archive.db"
    snapshot = await asyncio.to_thread(database_snapshot, quickstart.sample)
    store = await SqliteArchive.open(archive)
    try:
        shares = {share["session_id"]: share["id"] for share in await store.list_shares()}
        assert set(shares) == set(snapshot)
        for session_id, expected in snapshot.items():
            share = await store.read_share(shares[session_id])
            assert receiver_differences(expected, share) == [], session_id
    finally:
        await store.close()


def test_quickstart_installs_into_its_own_venv(quickstart: Quickstart) -> None:
    space = quickstart.space
    venv = space.home / ".local/share/syncd/venv"
    assert space.link.is_symlink()
    assert space.link.resolve() == (venv / "bin/syncd").resolve()
    config = dict(
        line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if line
    )
    assert Path(config["home"]).resolve() == Path(space.python).resolve().parent
    # Nothing went into the machine's Python itself (PEP 668 forbids it on Debian anyway).
    assert space.imports_syncd(venv / "bin/python")
    assert not space.imports_syncd(space.python)
    assert f"installed in {venv}; the command is {space.link}" in quickstart.output


def test_user_service_installs_as_shipped_and_verifies(quickstart: Quickstart) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd; .ci/run does)")
    space = quickstart.space
    result = space.run([str(space.link), "install-service"])
    assert result.returncode == 0, result.stderr
    unit = space.home / ".config/systemd/user/syncd.service"
    assert result.stdout.splitlines() == [
        f"{unit} written (ExecStart=%h/.local/bin/syncd run)",
        "start it:  systemctl --user daemon-reload && systemctl --user enable --now syncd",
        "check it:  systemctl --user status syncd; journalctl --user -u syncd; syncd status",
        "to keep it running without a login session: loginctl enable-linger "
        + pwd.getpwuid(NOBODY if space.switch_user else os.getuid()).pw_name,
    ]
    # Paths unchanged: the install put syncd where the shipped unit looks.
    assert unit.read_text() == (space.repo / "systemd/syncd.service").read_text()
    runtime = space.root / "runtime"  # a --user manager needs one
    runtime.mkdir(mode=0o700, exist_ok=True)
    space.give_to_user()
    env = {**space.env(), "XDG_RUNTIME_DIR": str(runtime)}
    result = space.run(["systemd-analyze", "--user", "verify", str(unit)], env=env)
    assert result.returncode == 0, result.stderr
    # verify exits 0 for unknown keys and a missing ExecStart: it only prints them.
    assert [line for line in result.stderr.splitlines() if "syncd.service" in line] == []


def test_test_command_sets_up_its_own_venv_in_a_plain_copy(workspace: Workspace) -> None:
    """The README's second block (pytest only collecting: the suite does not run itself) with
    another venv active, which must be left alone."""
    (run_tests,) = quickstart_blocks()[1].strip().splitlines()
    active = workspace.root / "active-env"
    subprocess.run(
        [workspace.python, "-m", "venv", "--without-pip", active], check=True, timeout=60
    )
    workspace.give_to_user()
    env = workspace.env()
    env.update(VIRTUAL_ENV=str(active), PATH=f"{active}/bin:{env['PATH']}")
    result = workspace.run(
        ["bash", "-c", f"{run_tests} --collect-only -q"], env=env, timeout=INSTALL_TIMEOUT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = re.search(r"^(\d+) tests collected", result.stdout, re.MULTILINE)
    assert collected and int(collected.group(1)) > 0, result.stdout[-3000:]
    where = workspace.run(
        [str(workspace.repo / ".venv/bin/python"), "-c", "import syncd; print(syncd.__file__)"],
        cwd=workspace.home,
    )
    assert where.stdout.strip() == str(workspace.repo / "syncd/__init__.py")  # editable
    assert not workspace.imports_syncd(active / "bin/python", env)
    assert (workspace.repo / "tests/node/node_modules/opencode-ai").is_dir()


# What a Python without venv (Debian without python3-venv) or too old looks like to the scripts:
# a module earlier on the path than the standard library's.
BROKEN_PYTHONS = {
    "no-ensurepip": (
        "ensurepip.py",
        "raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n",
        "cannot create a virtual environment: venv/ensurepip is missing "
        "(Debian/Ubuntu: apt install python3-venv)",
    ),
    "3.10": (
        "sitecustomize.py",
        "import sys\nsys.version_info = (3, 10, 12, 'final', 0)\n",
        "is Python 3.10.12; syncd needs Python >= 3.11",
    ),
}


@pytest.mark.parametrize("broken", BROKEN_PYTHONS)
@pytest.mark.parametrize("script", ["scripts/install --user", "scripts/test"])
def test_scripts_say_in_one_line_what_python_lacks(
    workspace: Workspace, script: str, broken: str
) -> None:
    name, code, message = BROKEN_PYTHONS[broken]
    shim = workspace.root / "shim"
    shim.mkdir()
    (shim / name).write_text(code)
    workspace.give_to_user()
    env = {**workspace.env(), "PYTHONPATH": str(shim)}
    result = workspace.run(["bash", "-c", script], env=env)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{script.split()[0]}: ") and message in line, line
    assert not (workspace.home / ".local/share/syncd").exists()
    assert not (workspace.repo / ".venv").exists()


def test_install_leaves_a_command_it_did_not_install_alone(workspace: Workspace) -> None:
    workspace.link.parent.mkdir(parents=True)
    workspace.link.write_text("#!/bin/sh\necho pip --user's syncd\n")
    workspace.give_to_user()
    result = workspace.run(["scripts/install", "--user"])
    assert result.returncode == 1
    assert result.stderr == (
        f"scripts/install: {workspace.link} exists and was not installed by this script; "
        "remove it (pip uninstall syncd?) and run this again\n"
    )
    assert "pip --user's syncd" in workspace.link.read_text()


def test_system_install_needs_root(workspace: Workspace) -> None:
    workspace.give_to_user()
    result = workspace.run(["scripts/install", "--system"])
    assert (result.returncode, result.stderr) == (
        1,
        "scripts/install: --system installs into /opt/syncd and needs root: "
        "sudo scripts/install --system\n",
    )


def test_system_install_and_service_as_root(
    machine_python: str, tmp_path: Path, fixtures_dir: Path
) -> None:
    """The README's system service steps run by root, in a private mount namespace whose /opt,
    /usr/local, /etc and /var/lib are throw-away overlays (the host keeps nothing): the unit
    verifies as shipped, the service's user can read its config and opencode's database, and
    `syncd status` run by root shows the service's state."""
    if os.geteuid() != 0:
        pytest.skip("the system install needs root")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd; .ci/run does)")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    repo = tmp_path / "repo"
    plain_copy(repo)
    service_env = " ".join(f"{name}={value}" for name, value in system_service().env.items())
    steps = system_service_steps()
    script = rf"""
        set -euo pipefail
        layers=$1
        mount -t tmpfs tmpfs "$layers"
        for dir in /opt /usr/local /etc /var/lib; do
          layer=$layers/${{dir//\//_}}
          mkdir -p "$layer/upper" "$layer/work"
          mount -t overlay overlay \
            -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
        done
        {steps}
        echo "link: $(readlink /usr/local/bin/syncd)"
        systemd-analyze --system verify /etc/systemd/system/syncd.service
        systemd-analyze --system verify systemd/syncd-serve.service  # the team receiver's
        cmp systemd/syncd-system.service /etc/systemd/system/syncd.service
        echo "user: $(id -nG syncd)"
        echo "config dir: $(stat -c '%U:%G %a' /etc/syncd)"
        # opencode as its own service leaves its database so (group opencode, UMask=0007)
        install -d -m 2770 -g opencode /var/lib/opencode
        install -m 0660 -g opencode {fixtures_dir}/opencode/sample-1.18.33.db \
          /var/lib/opencode/opencode.db
        # What systemd does to start the unit: its StateDirectory=, user, groups, environment.
        install -d -m 0700 -o syncd -g syncd /var/lib/syncd
        setpriv --reuid=syncd --regid=syncd --groups=opencode \
          env -i PATH={STOCK_PATH} {service_env} /usr/local/bin/syncd sync
        HOME=$layers/root syncd status --json >"$layers/status" 2>"$layers/note"
        echo "status: $(tr -d '\n' <"$layers/status")"
        echo "note: $(cat "$layers/note")"
        echo "not the service's: $(find /var/lib/syncd ! -user syncd)"
    """
    layers = tmp_path / "layers"
    layers.mkdir()
    host_had_syncd = Path("/usr/local/bin/syncd").exists()
    dropped = ("VIRTUAL_ENV", "PYTHON", "PYTEST_", "XDG_", "SYNCD_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env["PATH"] = ROOT_PATH
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "-", layers],
        cwd=repo, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert "installed in /opt/syncd; the command is /usr/local/bin/syncd" in result.stdout
    assert out["link"] == "/opt/syncd/bin/syncd"
    assert "user syncd created (group syncd, also in: opencode)" in result.stdout
    assert "/etc/syncd: root:syncd 0750" in result.stdout
    assert "/etc/systemd/system/syncd.service written (ExecStart=/usr/local/bin/syncd run)" in (
        result.stdout
    )
    assert not re.search(r"syncd(-system|-serve)?\.service", result.stderr), result.stderr
    assert sorted(out["user"].split()) == ["opencode", "syncd"]
    assert out["config dir"] == "root:syncd 750"
    status = json.loads(out["status"])
    assert status["totals"]["sessions"] == status["totals"]["delivered"] == 5, status
    assert out["note"] == (
        "syncd: root has no state of its own; this is the system service's, "
        "/var/lib/syncd/state.db (read as user syncd)"
    )
    assert out["not the service's"] == ""
    assert Path("/usr/local/bin/syncd").exists() == host_had_syncd


def system_service_steps() -> str:
    """The README's commands for the system service, but starting it (no systemd runs here)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Running under systemd\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    (system,) = [block for block in blocks if "--system" in block]
    lines = [line for line in system.splitlines() if not line.startswith("systemctl")]
    assert lines == ["scripts/install --system", "syncd install-service --system"], lines
    return "\n".join(lines)
