"""The macOS socket layout against macOS's own /var/run, modelled here as Apple ships it:
/private/var/run is root:daemon 0775 (group-writable), so the daemon's socket must sit in a
directory of root's own below it, both where launchd creates it and where the daemon binds it."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse
from agent.errors import ConfigError
from agent.server import bind_socket, check_state_dir
from tests.support.isolation import REPO

PLIST = Path(REPO) / "launchd/org.runas-agent.agent.plist"
DAEMON_GID = 1  # the `daemon` group on macOS (and on Debian)


def _macos_config_socket() -> str:
    text = (Path(REPO) / "packaging/config.yaml").read_text()
    out = subprocess.run(["/bin/sh", str(Path(REPO) / "packaging/macos/config.sh")],
                         input=text, capture_output=True, text=True, check=True).stdout
    return parse(out).socket.path


def _macos_config_state_dir() -> str:
    text = (Path(REPO) / "packaging/config.yaml").read_text()
    out = subprocess.run(["/bin/sh", str(Path(REPO) / "packaging/macos/config.sh")],
                         input=text, capture_output=True, text=True, check=True).stdout
    return parse(out).session.state_dir


@pytest.fixture
def var_run(isolated: object) -> Iterator[Path]:
    """A stand-in for macOS's /private/var/run: root:daemon 0775, under directories of root's
    own (in the test namespace's /run: every directory above a socket path is checked)."""
    base = Path(tempfile.mkdtemp(dir="/run"))
    base.chmod(0o755)
    d = base / "var_run"
    d.mkdir()
    os.chown(d, 0, DAEMON_GID)
    os.chmod(d, 0o775)
    yield d
    shutil.rmtree(base)


def _under(var_run: Path, path: str) -> str:
    assert path.startswith("/var/run/"), path
    return str(var_run / path[len("/var/run/"):])


@pytest.mark.skipif(os.geteuid() != 0, reason="binds a root-owned socket")
def test_the_macos_socket_path_binds_below_macos_var_run(var_run: Path) -> None:
    with PLIST.open("rb") as fh:
        launchd_path = plistlib.load(fh)["Sockets"]["Listeners"]["SockPathName"]
    assert _macos_config_socket() == launchd_path
    sock = bind_socket(_under(var_run, launchd_path), 0o660, None, sys_platform="darwin")
    try:
        directory = os.lstat(os.path.dirname(_under(var_run, launchd_path)))
        assert directory.st_uid == 0
        assert not directory.st_mode & 0o022
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="binds a root-owned socket")
def test_only_macos_trusts_a_directory_its_daemon_group_may_write(var_run: Path) -> None:
    """The same layout on Linux: a group-writable directory above the socket is refused, and on
    macOS a directory others may write still is."""
    with pytest.raises(ConfigError, match=f"{var_run} is writable by group"):
        bind_socket(str(var_run / "runas-agent" / "agent.sock"), 0o660, None,
                    sys_platform="linux")
    os.chmod(var_run, 0o777)
    with pytest.raises(ConfigError, match=f"{var_run} is writable by"):
        bind_socket(str(var_run / "runas-agent" / "agent.sock"), 0o660, None,
                    sys_platform="darwin")
    os.chown(var_run, 0, 1000)
    os.chmod(var_run, 0o775)
    with pytest.raises(ConfigError, match=f"{var_run} is writable by group"):
        bind_socket(str(var_run / "runas-agent" / "agent.sock"), 0o660, None,
                    sys_platform="darwin")


def test_the_macos_session_records_sit_below_macos_var_run(var_run: Path) -> None:
    """The directories above the session records are held to the socket's rule, with the same
    macOS exception (root:daemon 0775 /var/run), and only on macOS."""
    state_dir = _under(var_run, _macos_config_state_dir())
    check_state_dir(state_dir, sys_platform="darwin")
    with pytest.raises(ConfigError, match=f"{var_run} is writable by group"):
        check_state_dir(state_dir, sys_platform="linux")
    os.chown(var_run, 0, 1000)  # another group: not root's alone, on macOS either
    with pytest.raises(ConfigError, match=f"{var_run} is writable by group"):
        check_state_dir(state_dir, sys_platform="darwin")


def test_the_macos_config_gives_ssm_user_zsh() -> None:
    text = (Path(REPO) / "packaging/config.yaml").read_text()
    out = subprocess.run(["/bin/sh", str(Path(REPO) / "packaging/macos/config.sh")],
                         input=text, capture_output=True, text=True, check=True).stdout
    assert parse(out).ssm_user.shell == "/bin/zsh"  # the macOS default shell since 10.15
