"""Starting real sessions as real accounts (local, directory), inside the isolated namespace.

Each test forks from this (root) pytest process through agent.spawn and checks, from inside the
session and from /proc as root, what the process really is: ids, groups, fds, environment,
working directory, controlling terminal, signals, exit status.
"""

import dataclasses
import errno
import fcntl
import grp
import os
import pwd
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Optional

import pytest

from agent import accounts, terminal, values
from agent.accounts import Account
from agent.config import PolicyConfig
from agent.environ import build_env, env_path
from agent.errors import BadRequest, RootRefused, SpawnFailed
from agent.platform.linux import Linux
from agent.spawn import CHDIR_WARNING, SpawnPlan, StageFailed, Syscalls, describe_status, spawn
from tests.conftest import Users, sh
from tests.support import load, spawning
from tests.support.procio import drain, wait_exit, write_all

pytestmark = pytest.mark.privileged

NOHOME = "spawn-nohome"  # home directory does not exist
PRIVATE = "spawn-private"  # home 0700, owned by the user, with a ~/.profile marker
ROOTHOME = "spawn-roothome"  # home exists but only root may enter it
SHELL_VARS = {"PWD", "SHLVL", "_", "OLDPWD"}  # what the shells add themselves
MARKERS = {"RUNAS_SPAWN_MARKER": "from-the-daemon", "LD_LIBRARY_PATH": "/nonexistent",
           "LD_PRELOAD": "/nonexistent", "PYTHONPATH": "/nonexistent"}


@pytest.fixture(autouse=True, params=spawning.WAYS)
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the child forked by spawn() and with it forked ahead (prefork)."""
    monkeypatch.setattr(sys.modules[__name__], "spawn", spawning.spawn_by(request.param))
    return str(request.param)


@pytest.fixture(scope="module")
def extra_users(users: Users) -> Users:
    def absent(name: str) -> bool:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return True
        return False

    if absent(NOHOME):
        sh("useradd", "-M", "-d", f"/home/{NOHOME}", "-s", "/bin/bash", "--", NOHOME)
    if absent(PRIVATE):
        sh("useradd", "-m", "-s", "/bin/bash", "--", PRIVATE)
        pw = pwd.getpwnam(PRIVATE)
        os.chmod(pw.pw_dir, 0o700)
        with open(os.path.join(pw.pw_dir, ".profile"), "a") as fh:
            fh.write("\nexport SPAWN_PROFILE=loaded\n")
    if absent(ROOTHOME):
        sh("useradd", "-M", "-d", f"/home/{ROOTHOME}", "-s", "/bin/sh", "--", ROOTHOME)
        os.mkdir(f"/home/{ROOTHOME}", 0o700)  # root:root
    return users


@pytest.fixture
def clean_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Make the parent dirty: marker and loader variables in os.environ, inheritable fds
    (CLOEXEC would hide a missing closerange) below and above the fds spawn opens for itself,
    SIGUSR1 ignored and SIGUSR2 blocked."""
    for name, value in MARKERS.items():
        monkeypatch.setenv(name, value)
    fd = os.open("/etc/passwd", os.O_RDONLY)
    os.set_inheritable(fd, True)
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 200)  # inheritable, like fd
    assert os.get_inheritable(high)
    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        yield fd
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR1, old_usr1)
        os.close(high)
        os.close(fd)


def account(name: str) -> Account:
    return accounts.require(name, PolicyConfig(), Linux())


def expected_groups(name: str) -> list[int]:
    pw = pwd.getpwnam(name)
    return sorted(set(os.getgrouplist(name, pw.pw_gid)))


@dataclass(frozen=True)
class Ran:
    out: str
    err: str
    status: Mapping[str, Optional[int]]
    pid: int
    env: Mapping[str, str]


def env_for(acct: Account, term: Optional[str] = None) -> dict[str, str]:
    return build_env(acct, term=term, client_env={"LANG": "C.UTF-8", "FOO": "x"})


def run(acct: Account, command: Optional[str], *, stdin: bytes = b"",
        syscalls: Optional[Syscalls] = None) -> Ran:
    """A command session over pipes: stdout and stderr apart."""
    env = env_for(acct)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = spawn(SpawnPlan(acct, command, env, in_r, out_w, err_w, tty=False),
                    syscalls=syscalls)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    try:
        write_all(in_w, stdin)
        os.close(in_w)
        out, err = drain([out_r, err_r])
    finally:
        os.close(out_r)
        os.close(err_r)
    status = describe_status(wait_exit(pid))
    return Ran(out.decode(), err.decode(), status, pid, env)


def run_pty(acct: Account, command: Optional[str], *, stdin: bytes = b"",
            syscalls: Optional[Syscalls] = None, rows: int = 24, cols: int = 80,
            ) -> tuple[Ran, terminal.Pty]:
    """A terminal session: stdin, stdout and stderr are the slave; output read from the master."""
    env = env_for(acct, term="xterm")
    pty = terminal.open_pty(acct, rows, cols)
    try:
        pid = spawn(SpawnPlan(acct, command, env, pty.slave, pty.slave, pty.slave, tty=True),
                    syscalls=syscalls)
    finally:
        os.close(pty.slave)
    try:
        write_all(pty.master, stdin)
        (out,) = drain([pty.master])
    finally:
        os.close(pty.master)
    status = describe_status(wait_exit(pid))
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return Ran(text, "", status, pid, env), pty


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, tty_nr..."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def status_lines(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        out[key] = rest.split()
    return out


# --- who the process is ------------------------------------------------------------------------

WHO = ["alice", "bob", "dirk"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
def test_ids_and_groups_are_exactly_the_targets(extra_users: Users, clean_parent: int,
                                                who: str, tty: bool) -> None:
    acct = account(who)
    pw = pwd.getpwnam(who)
    cmd = "cat /proc/self/status; echo IDG=$(id -G)"
    ran = run_pty(acct, cmd)[0] if tty else run(acct, cmd)
    assert ran.status == {"code": 0, "signal": None}, ran
    st = status_lines(ran.out)
    assert st["Uid"] == [str(pw.pw_uid)] * 4
    assert st["Gid"] == [str(pw.pw_gid)] * 4
    want = expected_groups(who)
    assert sorted(int(g) for g in st["Groups"]) == want
    idg = next(line for line in ran.out.splitlines() if line.startswith("IDG="))
    assert sorted(int(g) for g in idg[4:].split()) == want
    assert 0 not in want  # root's group is gone
    if who == "alice":
        assert grp.getgrnam("devs").gr_gid in want
        assert len(want) == 2


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
def test_only_stdio_is_open(extra_users: Users, clean_parent: int, who: str,
                            tty: bool) -> None:
    acct = account(who)
    ran = run_pty(acct, "ls /proc/self/fd")[0] if tty else run(acct, "ls /proc/self/fd")
    assert sorted(ran.out.split(), key=int) == ["0", "1", "2", "3"]  # 3: the one ls opens


@pytest.mark.parametrize("who", WHO)
def test_the_running_shell_seen_from_proc(extra_users: Users, clean_parent: int,
                                          who: str) -> None:
    """The exec'd shell itself, while it waits on stdin: ids, fds, exact environment, cwd,
    session, signals, argv."""
    acct = account(who)
    pw = pwd.getpwnam(who)
    env = env_for(acct)
    command = "echo ready; read line; echo got $line"
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = spawn(SpawnPlan(acct, command, env, in_r, out_w, out_w, tty=False))
    finally:
        os.close(in_r)
        os.close(out_w)
    try:
        assert _read_line(out_r) == b"ready\n"  # the shell is up (the loader is done)
        with open(f"/proc/{pid}/status") as fh:
            st = status_lines(fh.read())
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().split(b"\0")[:-1]
        fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
        links = {n: os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        cwd = os.readlink(f"/proc/{pid}/cwd")
        fields = proc_stat(pid)
        write_all(in_w, b"hello\n")
        os.close(in_w)
        in_w = -1
        (out,) = drain([out_r])
    finally:
        if in_w != -1:
            os.close(in_w)
        os.close(out_r)
    assert describe_status(wait_exit(pid)) == {"code": 0, "signal": None}
    assert out == b"got hello\n"
    assert st["Uid"] == [str(pw.pw_uid)] * 4
    assert st["Gid"] == [str(pw.pw_gid)] * 4
    assert st["SigBlk"] == ["0000000000000000"]
    ignored = int(st["SigIgn"][0], 16)  # bash -c ignores SIGQUIT itself; the rest is ours
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGUSR1 - 1))
    assert st["CapEff"] == ["0000000000000000"]
    assert st["CapPrm"] == ["0000000000000000"]
    environ = dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)
    assert environ == env
    assert not set(MARKERS) & set(environ)
    assert environ["HOME"] == pw.pw_dir
    assert environ["USER"] == environ["LOGNAME"] == who
    assert environ["SHELL"] == pw.pw_shell
    assert environ["PATH"] == env_path()
    assert environ["LANG"] == "C.UTF-8"
    assert "FOO" not in environ
    assert fds == [0, 1, 2], links
    assert cwd == pw.pw_dir
    assert cmdline == [os.path.basename(pw.pw_shell).encode(), b"-c", command.encode()]
    ppid, pgrp, session, tty_nr = int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4])
    assert ppid == os.getpid()
    assert pgrp == session == pid  # leader of its own session and process group
    assert tty_nr == 0  # no controlling terminal without a PTY


def _read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
def test_environment_inside_the_shell(extra_users: Users, clean_parent: int, who: str,
                                      tty: bool) -> None:
    acct = account(who)
    ran = run_pty(acct, "env")[0] if tty else run(acct, "env")
    assert ("TERM" in ran.env) is tty
    seen = dict(line.split("=", 1) for line in ran.out.splitlines())
    assert set(seen) - SHELL_VARS == set(ran.env)
    for name in ran.env:
        assert seen[name] == ran.env[name]
    assert not set(MARKERS) & set(seen)
    assert not [n for n in seen if n.startswith(("LD_", "PYTHON"))]
    assert ran.err == ""  # ld.so would complain about LD_PRELOAD=/nonexistent


@pytest.mark.parametrize("who", [*WHO, PRIVATE])
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
def test_starts_in_home(extra_users: Users, who: str, tty: bool) -> None:
    ran = run_pty(account(who), "pwd -P")[0] if tty else run(account(who), "pwd -P")
    assert ran.out.strip() == os.path.realpath(pwd.getpwnam(who).pw_dir)
    assert ran.err == ""


def test_private_home_works_because_chdir_is_done_as_the_user(extra_users: Users) -> None:
    home = pwd.getpwnam(PRIVATE).pw_dir
    st = os.stat(home)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == pwd.getpwnam(PRIVATE).pw_uid
    ran = run(account(PRIVATE), "pwd -P; ls -a")
    assert ran.out.splitlines()[0] == home
    assert ".profile" in ran.out.split()


def test_home_only_root_can_enter_proves_chdir_after_the_drop(extra_users: Users) -> None:
    """Root could enter this home; the user cannot. Starting in / with the warning shows that
    the chdir ran after the privileges were dropped."""
    home = pwd.getpwnam(ROOTHOME).pw_dir
    assert os.stat(home).st_uid == 0
    ran = run(account(ROOTHOME), "pwd -P")
    assert ran.status == {"code": 0, "signal": None}
    assert ran.out.strip() == "/"
    assert CHDIR_WARNING.decode() in ran.err
    assert "Permission denied" in ran.err


def test_missing_home_warns_and_starts_in_root(extra_users: Users) -> None:
    assert not os.path.exists(f"/home/{NOHOME}")
    ran = run(account(NOHOME), "pwd -P; echo HOME=$HOME")
    assert ran.status == {"code": 0, "signal": None}
    assert ran.out.splitlines() == ["/", f"HOME=/home/{NOHOME}"]
    assert "could not chdir to HOME, starting in /" in ran.err
    assert "No such file or directory" in ran.err


# --- terminals ---------------------------------------------------------------------------------

CTTY_METHODS = {"login_tty": Syscalls.real(),
                "setsid+TIOCSCTTY": dataclasses.replace(Syscalls.real(), login_tty=None)}
if Syscalls.real().login_tty is None:  # Python 3.9/3.10: only the fallback exists
    del CTTY_METHODS["login_tty"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("method", sorted(CTTY_METHODS))
def test_pty_is_the_users_and_the_controlling_terminal(extra_users: Users, who: str,
                                                       method: str) -> None:
    cmd = ("stat -c '%U %G %a' \"$(tty)\"; tty; echo probe > /dev/tty && echo CTTY=yes; "
           "stat -c '%t %T' \"$(tty)\"; cat /proc/self/stat")
    ran, pty = run_pty(account(who), cmd, syscalls=CTTY_METHODS[method])
    lines = ran.out.splitlines()
    assert ran.status == {"code": 0, "signal": None}, ran.out
    assert lines[0] == f"{who} tty 620"
    assert lines[1] == pty.slave_path
    assert "CTTY=yes" in lines
    major, minor = (int(x, 16) for x in lines[-2].split())
    fields = lines[-1].rsplit(")", 1)[1].split()
    assert int(fields[4]) == os.makedev(major, minor)  # cat's controlling terminal: the PTY


def _pty(way: str, acct: Account, rows: int, cols: int) -> terminal.Pty:
    """A session's PTY as the agent makes it: opened now, or opened ahead (by a spare) and
    taken."""
    if way == "now":
        return terminal.open_pty(acct, rows, cols)
    return terminal.open_pty_ahead().take(acct, rows, cols)


@pytest.mark.parametrize("way", ["now", "ahead"])
def test_pty_slave_ownership_mode_size_and_cloexec(extra_users: Users, way: str) -> None:
    acct = account("alice")
    pty = _pty(way, acct, 40, 132)
    try:
        st = os.stat(pty.slave_path)
        assert st.st_uid == acct.uid
        assert st.st_gid == grp.getgrnam("tty").gr_gid
        assert stat.S_IMODE(st.st_mode) == 0o620
        assert os.path.samestat(st, os.fstat(pty.slave))
        assert terminal.get_window_size(pty.master) == (40, 132)
        assert terminal.get_window_size(pty.slave) == (40, 132)
        assert not os.get_inheritable(pty.master)
        assert not os.get_inheritable(pty.slave)
        terminal.set_window_size(pty.master, 50, 200)
        assert terminal.get_window_size(pty.slave) == (50, 200)
    finally:
        os.close(pty.master)
        os.close(pty.slave)


def test_the_session_sees_the_window_size(extra_users: Users) -> None:
    ran, _ = run_pty(account("bob"), "stty size", rows=33, cols=101)
    assert ran.out.strip() == "33 101"


@pytest.mark.parametrize("way", ["now", "ahead"])
@pytest.mark.parametrize(("rows", "cols"), [(0, 80), (24, 0), (10001, 80), (24, 10001),
                                            (-1, 80), (True, 80), ("24", 80), (24.0, 80)])
def test_bad_window_sizes_are_refused(extra_users: Users, rows: object, cols: object,
                                      way: str) -> None:
    acct = account("alice")
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(BadRequest):
        _pty(way, acct, rows, cols)  # type: ignore[arg-type]
    assert set(os.listdir("/proc/self/fd")) == before
    pty = terminal.open_pty(acct, 24, 80)
    try:
        with pytest.raises(BadRequest):
            terminal.set_window_size(pty.master, rows, cols)  # type: ignore[arg-type]
    finally:
        os.close(pty.master)
        os.close(pty.slave)


def test_a_pty_opened_ahead_is_roots_alone_until_taken_once(extra_users: Users) -> None:
    before = set(os.listdir("/proc/self/fd"))
    known = load.terminals_of(os.getpid())
    ahead = terminal.open_pty_ahead()
    (path,) = set(load.terminals_of(os.getpid())) - set(known)
    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    with pytest.raises(SpawnFailed, match="uid 0"):  # root: refused, and the PTY closed
        ahead.take(Account("toor", 0, 0, "/root", "/bin/sh", (0,), "local"), 24, 80)
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(SpawnFailed, match="taken already"):
        ahead.take(account("alice"), 24, 80)
    ahead.release()  # nothing left to close
    assert set(os.listdir("/proc/self/fd")) == before
    unused = terminal.open_pty_ahead()
    unused.release()
    unused.release()
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("way", ["now", "ahead"])
def test_no_tty_group_falls_back_to_the_accounts_group(extra_users: Users, way: str) -> None:
    tty_gid = grp.getgrnam("tty").gr_gid
    with open("/etc/group") as fh:
        saved = fh.read()
    try:
        with open("/etc/group", "w") as fh:
            fh.write("".join(ln for ln in saved.splitlines(True) if not ln.startswith("tty:")))
        acct = account("alice")
        pty = _pty(way, acct, 24, 80)
        try:
            assert os.stat(pty.slave_path).st_gid == acct.gid
        finally:
            os.close(pty.master)
            os.close(pty.slave)
    finally:
        with open("/etc/group", "w") as fh:
            fh.write(saved)
    assert grp.getgrnam("tty").gr_gid == tty_gid


def test_interactive_login_shell_bash(extra_users: Users) -> None:
    """argv[0] is -bash: a login shell, so /etc/profile and ~/.profile are read."""
    script = (b"echo LOGIN=$(shopt -q login_shell && echo yes); echo ARG0=$0; "
              b"echo PROFILE=$SPAWN_PROFILE; echo TERM=$TERM; exit 3\n")
    ran, _ = run_pty(account(PRIVATE), None, stdin=script)
    lines = ran.out.splitlines()
    assert "LOGIN=yes" in lines
    assert "ARG0=-bash" in lines
    assert "PROFILE=loaded" in lines
    assert "TERM=xterm" in lines
    assert "no job control" not in ran.out  # bash found its controlling terminal
    assert ran.status == {"code": 3, "signal": None}


def test_interactive_login_shell_sh_argv0(extra_users: Users) -> None:
    acct = account("bob")
    pty = terminal.open_pty(acct, 24, 80)
    try:
        pid = spawn(SpawnPlan(acct, None, env_for(acct, "xterm"), pty.slave, pty.slave,
                              pty.slave, tty=True))
    finally:
        os.close(pty.slave)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            assert fh.read() == b"-sh\0"
        write_all(pty.master, b"echo ARG0=$0; exit 0\n")
        (out,) = drain([pty.master])
    finally:
        os.close(pty.master)
    assert describe_status(wait_exit(pid)) == {"code": 0, "signal": None}
    assert "ARG0=-sh" in out.decode().replace("\r\n", "\n").replace("$ ", "").splitlines()


# --- exit status and signals -------------------------------------------------------------------

@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
def test_exit_code_passes_through(extra_users: Users, tty: bool) -> None:
    acct = account("alice")
    ran = run_pty(acct, "exit 7")[0] if tty else run(acct, "exit 7")
    assert ran.status == {"code": 7, "signal": None}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_killed_by_a_signal(extra_users: Users, sig: signal.Signals) -> None:
    ran = run(account("alice"), f"kill -{int(sig)} $$; sleep 5")
    assert ran.status == {"code": None, "signal": int(sig)}


def test_signals_are_default_in_the_child(extra_users: Users, clean_parent: int) -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's, in this parent
    start = time.monotonic()
    ran = run(account("alice"),
              'trap; yes | head -1; echo "yes:${PIPESTATUS[0]}"; grep ^Sig /proc/self/status')
    assert time.monotonic() - start < 5
    lines = ran.out.splitlines()
    assert lines[:2] == ["y", f"yes:{128 + signal.SIGPIPE}"]  # killed by SIGPIPE, no trap shown
    st = status_lines("\n".join(lines[2:]))
    assert st["SigIgn"] == ["0000000000000000"]  # neither Python's SIGPIPE nor our SIGUSR1
    assert st["SigBlk"] == ["0000000000000000"]  # nor our blocked SIGUSR2
    assert ran.err == ""


# --- failures ----------------------------------------------------------------------------------

def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


@pytest.mark.parametrize(("shell", "code"), [("/nonexistent/shell", errno.ENOENT),
                                             ("/home/spawn-shells/notexec", errno.EACCES)])
def test_exec_failure_raises_quickly_and_is_reaped(extra_users: Users, shell: str,
                                                   code: int) -> None:
    os.makedirs("/home/spawn-shells", mode=0o755, exist_ok=True)
    with open("/home/spawn-shells/notexec", "w") as fh:
        fh.write("#!/bin/sh\necho should not run\n")
    os.chmod("/home/spawn-shells/notexec", 0o644)
    acct = values.replace(account("alice"), shell=shell)
    before = _children()
    start = time.monotonic()
    with pytest.raises(SpawnFailed) as info:
        run(acct, "true")
    assert time.monotonic() - start < 2
    assert isinstance(info.value, StageFailed)
    assert info.value.stage == "exec"
    assert info.value.errno == code
    assert info.value.reason == "spawn_failed"
    assert f"[Errno {code}]" in str(info.value)
    assert shell in str(info.value)
    assert "alice" in str(info.value)
    assert _children() == before  # no zombie left behind


def test_a_lying_identity_check_is_caught_by_verify(extra_users: Users) -> None:
    """The real drop happens, then getresuid pretends root is still there: refused."""
    fake = dataclasses.replace(Syscalls.real(), getresuid=lambda: (0, 0, 0))
    before = _children()
    with pytest.raises(StageFailed) as info:
        run(account("alice"), "true", syscalls=fake)
    assert info.value.stage == "verify"
    assert "uids are (0, 0, 0)" in str(info.value)
    assert _children() == before


def test_setuid_back_to_root_succeeding_is_fatal(extra_users: Users) -> None:
    fake = dataclasses.replace(Syscalls.real(), setuid=lambda uid: None)
    with pytest.raises(StageFailed, match=r"setuid\(0\) succeeded"):
        run(account("alice"), "true", syscalls=fake)


def test_setgroups_failure_is_reported_with_stage_and_errno(extra_users: Users) -> None:
    def refuse(groups: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    fake = dataclasses.replace(Syscalls.real(), setgroups=refuse)
    with pytest.raises(StageFailed) as info:
        run(account("alice"), "true", syscalls=fake)
    assert (info.value.stage, info.value.errno) == ("setgroups", errno.EPERM)
    assert "setgroups failed: [Errno 1]" in str(info.value)


def test_a_child_stuck_before_exec_is_killed_not_waited_for(extra_users: Users) -> None:
    fake = dataclasses.replace(Syscalls.real(), setgroups=lambda groups: time.sleep(30))
    acct = account("alice")
    plan = SpawnPlan(acct, "true", env_for(acct), 0, 1, 2, tty=False)
    before = _children()
    start = time.monotonic()
    with pytest.raises(StageFailed, match=r"did not reach exec within 0\.5s"):
        spawn(plan, timeout=0.5, syscalls=fake)
    assert time.monotonic() - start < 5
    assert _children() == before


class Interrupted(Exception):
    pass


def test_an_interrupted_parent_kills_the_unfinished_child(extra_users: Users) -> None:
    """A signal handler raising while the parent waits for the exec report: the exception
    propagates, and the child (not yet exec'd) is killed and reaped, not left to start."""
    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    acct = account("alice")
    plan = SpawnPlan(acct, "true", env_for(acct), 0, 1, 2, tty=False)
    fake = dataclasses.replace(Syscalls.real(), setgroups=lambda groups: time.sleep(30))
    before = _children()
    old = signal.signal(signal.SIGUSR1, handler)
    killer = os.fork()
    if killer == 0:
        time.sleep(0.3)
        os.kill(os.getppid(), signal.SIGUSR1)
        os._exit(0)
    try:
        start = time.monotonic()
        with pytest.raises(Interrupted):
            spawn(plan, syscalls=fake)
        assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGUSR1, old)
        os.waitpid(killer, 0)
    assert _children() == before


def test_root_and_bad_plans_are_refused_before_fork(extra_users: Users) -> None:
    alice = account("alice")
    env = env_for(alice)
    before = _children()
    toor = Account("toor", 0, 0, "/root", "/bin/bash", (0,), "local")
    with pytest.raises(RootRefused):
        spawn(SpawnPlan(toor, "id", build_env(toor, term=None, client_env={}), 0, 1, 2, False))
    with pytest.raises(SpawnFailed, match="primary group 0"):
        spawn(SpawnPlan(values.replace(alice, gid=0), "id", env, 0, 1, 2, False))
    with pytest.raises(BadRequest, match="NUL"):
        spawn(SpawnPlan(alice, "id\0x", env, 0, 1, 2, False))
    with pytest.raises(BadRequest, match="LD_PRELOAD"):
        spawn(SpawnPlan(alice, "id", {**env, "LD_PRELOAD": "/x.so"}, 0, 1, 2, False))
    with pytest.raises(BadRequest, match="A=B"):
        spawn(SpawnPlan(alice, "id", {**env, "A=B": "x"}, 0, 1, 2, False))
    with pytest.raises(SpawnFailed, match="not an absolute path"):
        spawn(SpawnPlan(values.replace(alice, shell="bash"), "id", env, 0, 1, 2, False))
    r, w = os.pipe()
    try:
        with pytest.raises(SpawnFailed, match="needs a terminal"):
            spawn(SpawnPlan(alice, "id", env, r, w, w, tty=True))
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(SpawnFailed, match="not an open file descriptor"):
        spawn(SpawnPlan(alice, "id", env, 987, 1, 2, False))
    assert _children() == before


def test_refuses_to_fork_with_threads_running(extra_users: Users) -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        acct = account("alice")
        with pytest.raises(SpawnFailed, match="threads"):
            spawn(SpawnPlan(acct, "true", env_for(acct), 0, 1, 2, False))
    finally:
        stop.set()
        t.join()


def test_stdio_in_the_low_fds_is_handled(extra_users: Users) -> None:
    """The plan's fds may already be 0/1/2 in a different order: each lands where it should."""
    acct = account("bob")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    saved = [os.dup(n) for n in (0, 1, 2)]
    try:
        # the session's stdout is our fd 2, its stderr our fd 1
        os.dup2(out_w, 2)
        os.dup2(err_w, 1)
        os.close(out_w)
        os.close(err_w)
        pid = spawn(SpawnPlan(acct, "echo out; echo err >&2", env_for(acct), saved[0], 2, 1,
                              tty=False))
    finally:
        for n, fd in enumerate(saved):
            os.dup2(fd, n)
            os.close(fd)
    out, err = drain([out_r, err_r])
    os.close(out_r)
    os.close(err_r)
    assert describe_status(wait_exit(pid)) == {"code": 0, "signal": None}
    assert (out, err) == (b"out\n", b"err\n")


# -- the session keyring and the limits PAM set ------------------------------------------------


def test_the_session_keyring_is_a_fresh_one_of_the_account(extra_users: Users) -> None:
    alice = account("alice")
    ran = run(alice, "keyctl rdescribe @s; keyctl show @s | grep -c -F \"_uid.$(id -u)\"")
    assert ran.status["code"] == 0, ran.err
    desc, linked = ran.out.split()
    kind, uid, gid, _perm, name = desc.split(";")
    assert (kind, int(uid), int(gid), name) == ("keyring", alice.uid, alice.gid, "_ses")
    assert linked == "1"  # the user keyring, linked in as pam_keyinit does


def _keyctl_refusing(code: int, *,
                     probe: Optional[int] = None) -> Callable[[int, int, int], int]:
    """keyctl refusing the join with CODE; the probe succeeds, or fails with PROBE."""
    from agent import keyring

    def keyctl(op: int, a2: int, a3: int) -> int:
        if op == keyring.KEYCTL_GET_KEYRING_ID and probe is None:
            return 1
        raise OSError(probe if op == keyring.KEYCTL_GET_KEYRING_ID else code, "refused")

    return keyctl


def test_a_session_keyring_that_cannot_be_joined_refuses_the_session(
        extra_users: Users) -> None:
    marker = "/tmp/spawn-keyring-ran"
    fake = dataclasses.replace(Syscalls.real(), keyctl=_keyctl_refusing(errno.EDQUOT))
    with pytest.raises(StageFailed) as info:
        run(account("alice"), f"touch {marker}", syscalls=fake)
    assert (info.value.stage, info.value.errno) == ("session keyring", errno.EDQUOT)
    assert not os.path.exists(marker)
    fake = dataclasses.replace(Syscalls.real(), keyctl=_keyctl_refusing(errno.EPERM))
    with pytest.raises(StageFailed, match="session keyring failed"):
        run(account("alice"), f"touch {marker}", syscalls=fake)  # keyctl itself answers
    assert not os.path.exists(marker)


def test_keyctl_filtered_wholesale_still_starts_the_session(extra_users: Users) -> None:
    fake = dataclasses.replace(Syscalls.real(),
                               keyctl=_keyctl_refusing(errno.EPERM, probe=errno.EPERM))
    assert run(account("alice"), "id -un", syscalls=fake).out == "alice\n"
    fake = dataclasses.replace(Syscalls.real(), keyctl=_keyctl_refusing(errno.ENOSYS))
    assert run(account("alice"), "id -un", syscalls=fake).out == "alice\n"


def test_the_limits_pam_set_reach_the_session(extra_users: Users) -> None:
    import resource

    from agent.proclimits import ProcessLimits

    alice = account("alice")
    limits = ProcessLimits(((resource.RLIMIT_NOFILE, 321, 654),
                            (resource.RLIMIT_FSIZE, 8192, 8192)), 0o027, 6)
    command = "ulimit -n; ulimit -Hn; ulimit -f; umask; nice"
    r, w = os.pipe()
    try:
        pid = spawn(SpawnPlan(alice, command, env_for(alice), 0, w, w, tty=False,
                              limits=limits))
    finally:
        os.close(w)
    (out,) = drain([r])
    os.close(r)
    assert describe_status(wait_exit(pid))["code"] == 0
    assert out.decode().split() == ["321", "654", "8", "0027", "6"]
    # One the kernel refuses (soft above hard): refused before anything runs.
    bad = ProcessLimits(((resource.RLIMIT_NOFILE, 900, 800),))
    with pytest.raises(StageFailed) as info:
        spawn(SpawnPlan(alice, "true", env_for(alice), 0, 1, 2, tty=False, limits=bad))
    assert info.value.stage == "limits"


def test_the_login_uid_pam_set_reaches_the_session_alone(extra_users: Users) -> None:
    alice = account("alice")
    with open("/proc/self/loginuid") as fh:
        own = fh.read()
    r, w = os.pipe()
    try:
        pid = spawn(SpawnPlan(alice, "cat /proc/self/loginuid", env_for(alice), 0, w, w,
                              tty=False, loginuid=alice.uid))
    finally:
        os.close(w)
    (out,) = drain([r])
    os.close(r)
    assert describe_status(wait_exit(pid))["code"] == 0
    assert out.decode() == str(alice.uid)
    with open("/proc/self/loginuid") as fh:
        assert fh.read() == own  # the spawning process keeps its own
    # Not a uid (a bool, negative, (uid_t)-1 or beyond): refused before anything is forked.
    for bad in (True, -1, 2**32 - 1, 2**32, "1000"):
        with pytest.raises(SpawnFailed, match="login uid"):
            spawn(SpawnPlan(alice, "true", env_for(alice), 0, 1, 2, tty=False,
                            loginuid=bad))  # type: ignore[arg-type]
