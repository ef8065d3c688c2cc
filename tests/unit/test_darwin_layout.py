"""The macOS socket layout against macOS's own /var/run, modelled here as Apple ships it:
/private/var/run is root:daemon 0775 (group-writable), so the daemon's socket must sit in a
directory of root's own below it, both where launchd creates it and where the daemon binds it."""

from __future__ import annotations

import os
import plistlib
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse
from agent.errors import ConfigError
from agent.server import (
    _untrusted_write_bits,
    bind_socket,
    check_socket_path,
    check_state_dir,
)
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
    """macOS's /var/run, at its own path: the test namespace's /var/run (/var is an overlay
    there) made a directory root:daemon 0775 in place of Linux's link to /run, under
    directories of root's own (every directory above a socket path is checked); put back
    afterwards."""
    d = Path("/var/run")
    link = os.readlink(d) if d.is_symlink() else None
    if link is not None:
        d.unlink()
        d.mkdir()
    before = os.stat(d)
    kept = set(os.listdir(d))
    os.chown(d, 0, DAEMON_GID)
    os.chmod(d, 0o775)
    try:
        yield d
    finally:
        if link is not None:
            shutil.rmtree(d)
            d.symlink_to(link)
        else:
            for name in set(os.listdir(d)) - kept:
                shutil.rmtree(d / name)
            os.chown(d, before.st_uid, before.st_gid)
            os.chmod(d, stat.S_IMODE(before.st_mode))


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


# -- the exception is macOS's /var/run alone -------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="binds a root-owned socket")
@pytest.mark.parametrize("gid", [0, DAEMON_GID])  # wheel, daemon: root's groups on macOS
def test_a_group_writable_directory_planted_under_var_run_is_refused_on_macos(
        var_run: Path, gid: int) -> None:
    """Root's groups are trusted for macOS's /var/run itself, nowhere else: a directory below
    it that its group may write (root:wheel or root:daemon 0775) is refused, on macOS too."""
    planted = var_run / "planted"
    planted.mkdir()
    os.chown(planted, 0, gid)
    os.chmod(planted, 0o775)
    for own_directory in (True, False):
        with pytest.raises(ConfigError, match=f"{planted} is writable by group"):
            check_socket_path(str(planted / "runas-agent" / "agent.sock"),
                              own_directory=own_directory, sys_platform="darwin")
    with pytest.raises(ConfigError, match=f"{planted} is writable by group"):
        check_state_dir(str(planted / "runas-agent" / "sessions"), sys_platform="darwin")
    os.chmod(planted, 0o755)
    check_socket_path(str(planted / "runas-agent" / "agent.sock"), sys_platform="darwin")


@pytest.mark.skipif(os.geteuid() != 0, reason="binds a root-owned socket")
def test_macos_var_run_is_trusted_with_the_daemon_group_only(var_run: Path) -> None:
    """/var/run root:wheel 0775, or root:daemon 1775 (sticky), is not what macOS ships: refused."""
    sock = str(var_run / "runas-agent" / "agent.sock")
    check_socket_path(sock, sys_platform="darwin")
    os.chown(var_run, 0, 0)
    with pytest.raises(ConfigError, match=f"{var_run} is writable by group"):
        check_socket_path(sock, sys_platform="darwin")
    os.chown(var_run, 0, DAEMON_GID)
    os.chmod(var_run, 0o1775)
    with pytest.raises(ConfigError, match=f"{var_run} is writable by group"):
        check_socket_path(sock, sys_platform="darwin")


def _dir(mode: int, gid: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, gid, 64, 0, 0, 0))


@pytest.mark.parametrize("path", ["/var/run", "/private/var/run"])
def test_the_exception_holds_for_var_run_and_where_it_leads(path: str) -> None:
    assert _untrusted_write_bits(path, _dir(0o775, DAEMON_GID), "darwin") == 0o002
    assert _dir(0o775, DAEMON_GID).st_mode & 0o002 == 0  # so macOS's own /var/run passes
    assert _dir(0o777, DAEMON_GID).st_mode & _untrusted_write_bits(
        path, _dir(0o777, DAEMON_GID), "darwin")  # others' write bit: never trusted


@pytest.mark.parametrize("path", ["/private/var", "/var", "/private", "/var/run/x",
                                  "/private/var/run/x", "/run", "/var/run/", "/tmp/var/run",
                                  "/private/var/run/.."])
def test_no_other_directory_has_the_exception(path: str) -> None:
    for gid in (0, DAEMON_GID):
        assert _untrusted_write_bits(path, _dir(0o775, gid), "darwin") == 0o022, (path, gid)


@pytest.mark.parametrize("gid", [0, 20, 80, 1000])  # wheel, staff, admin, a user's
def test_var_run_with_another_group_has_no_exception(gid: int) -> None:
    for path in ("/var/run", "/private/var/run"):
        assert _untrusted_write_bits(path, _dir(0o775, gid), "darwin") == 0o022


@pytest.mark.parametrize("platform", ["linux", "freebsd", "darwin-ish", ""])
def test_only_darwin_honours_the_exception(platform: str) -> None:
    for path in ("/var/run", "/private/var/run"):
        assert _untrusted_write_bits(path, _dir(0o775, DAEMON_GID), platform) == 0o022


def test_a_sticky_var_run_has_no_exception() -> None:
    assert _untrusted_write_bits("/var/run", _dir(0o1775, DAEMON_GID), "darwin") == 0o022


@pytest.mark.skipif(os.geteuid() != 0, reason="reads a root-owned layout")
@pytest.mark.parametrize("spelled", ["/var/run/./runas-agent", "/var/run/x/../runas-agent",
                                     "/var//run/runas-agent", "/var/run/runas-agent/",
                                     "/var/run/../run/runas-agent/../../run/runas-agent"])
def test_macos_var_run_spelled_another_way_is_var_run(var_run: Path, spelled: str) -> None:
    """Spellings that name /var/run are normalized first: the exception is /var/run's."""
    check_socket_path(spelled.rstrip("/") + "/agent.sock", sys_platform="darwin")
    check_state_dir(spelled + "sessions" if spelled.endswith("/") else spelled + "/sessions",
                    sys_platform="darwin")



@pytest.mark.skipif(os.geteuid() != 0, reason="reads a root-owned layout")
def test_macos_var_run_spelled_with_a_leading_double_slash_has_no_exception(
        var_run: Path) -> None:
    """//var/run (a spelling whose meaning POSIX leaves to the system) is not given the
    exception: refused (fail closed), never another directory trusted in /var/run's place."""
    with pytest.raises(ConfigError, match="//var/run is writable by group"):
        check_socket_path("//var/run/runas-agent/agent.sock", sys_platform="darwin")
    with pytest.raises(ConfigError, match="//var/run is writable by group"):
        check_state_dir("//var/run/runas-agent/sessions", sys_platform="darwin")
