"""Attacks on the PTY a spare supervisor opens ahead of its session, replayed for real: real
accounts, the real daemon, real sessions in the test namespace.

The spare holds the next session's terminal while it waits, possibly for hours. Nothing but the
spare may hold either end of it meanwhile (no process forked ahead, no PAM process, no other
session's process), nobody but root may open its slave, and every way a spare ends without a PTY
session (a session without a terminal, a refused start, a reload, a stop) closes it: no end of
it outlives the spare's use for it, so its number and its slave are never handed on open.

What else a spare prepares while it waits is attacked here too: the registry directory its
records go to (planted by someone who could write its parent), and the shell's process forked
ahead, which ignores every signal while it waits and must hand none of that to the shell.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError
from tests.conftest import Users, broken_shell_account
from tests.support import load
from tests.support.daemon import DaemonProc, running
from tests.support.procio import drain

pytestmark = pytest.mark.privileged


@pytest.fixture
def daemon(users: Users) -> Iterator[DaemonProc]:
    with running() as d:
        yield d




def _holders(tty: str) -> dict[int, set[str]]:
    """Every process holding TTY's slave (that very node: its devpts instance and number) or its
    master (a ptmx fd whose tty-index is TTY's, held by a process whose devpts is this one).
    Terminals of other devpts instances (a container's) with the same number are not counted."""
    index = tty.rsplit("/", 1)[1]
    devpts = os.stat("/dev/pts/ptmx").st_dev  # the devpts instance, its slaves' st_dev too
    number = int(index)
    want = (devpts, os.makedev(136 + number // 256, number % 256))  # Unix98 PTY slaves' majors
    held: dict[int, set[str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}").split(" ")[0]
                if target in ("/dev/ptmx", "/dev/pts/ptmx"):
                    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                        info = fh.read()
                    if (f"tty-index:\t{index}\n" in info
                            and os.stat(f"/proc/{pid}/root/dev/pts/ptmx").st_dev == devpts):
                        held.setdefault(pid, set()).add("master")
                elif target.startswith("/dev/pts/"):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (st.st_dev, st.st_rdev) == want:
                        held.setdefault(pid, set()).add("slave")
            except OSError:
                continue
    return held


def _freed(d: DaemonProc, tty: str, was: int, timeout: float = 10) -> bool:
    """No process holds TTY but a new spare of D (its number, free again, is the next
    spare's): WAS, the spare that had it, holds it no more, and nor does anything else."""
    def freed() -> bool:
        alive = d.proc is not None and d.proc.poll() is None
        spares = set(load.spares_of(d.pid)) if alive else set()
        held = set(_holders(tty))
        return was not in held and held <= spares - {was}
    return load.wait_until(freed, timeout)


def test_nobody_but_the_spare_holds_its_pty_ahead(daemon: DaemonProc, users: Users) -> None:
    """The shell's process and the PAM process are forked ahead before the PTY is opened:
    while the spare waits, it alone holds either end."""
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    assert _holders(tty) == {spare: {"master", "slave"}}
    for flags in ("<", ">", "<>"):
        opened = subprocess.run(["runuser", "-u", users.bob, "--", "sh", "-c",
                                 f"exec 3{flags}{tty}"], capture_output=True, text=True,
                                check=False)
        assert opened.returncode != 0, flags


def test_a_pty_session_s_terminal_is_its_own(daemon: DaemonProc, users: Users) -> None:
    """Taken by a PTY session: its master is the supervisor's alone (and the client's), its
    slave the supervisor's and the session's processes' only (no process forked ahead for
    another use keeps it)."""
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    sess = load.start(daemon.client, users.bob, "pty-own", "sleep 30", ("xterm", 24, 80))
    try:
        assert sess.info["tty"] == tty
        held = _holders(tty)
        me = os.getpid()
        masters = {pid for pid, ends in held.items() if "master" in ends}
        assert masters <= {spare, me}, held
        bob = pwd.getpwnam(users.bob).pw_uid
        for pid, ends in held.items():
            if pid in (spare, me):
                continue
            assert ends == {"slave"}, (pid, ends)
            assert os.stat(f"/proc/{pid}").st_uid == bob, pid
    finally:
        sess.close()
    assert _freed(daemon, tty, spare)


def test_a_session_without_a_terminal_frees_the_pty_ahead(daemon: DaemonProc,
                                                           users: Users) -> None:
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    sess = load.start(daemon.client, users.bob, "pipes", "sleep 30")
    try:
        assert sess.info["tty"] is None
        assert _freed(daemon, tty, spare), _holders(tty)  # while the session runs
    finally:
        sess.close()


def test_a_refused_start_frees_the_pty_ahead(daemon: DaemonProc, users: Users) -> None:
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    for target, terminal in ((users.toor, ("xterm", 24, 80)), (users.missing, ("xterm", 24, 80)),
                             (users.nolog, None)):
        with pytest.raises(AgentError):
            load.start(daemon.client, target, f"refused-{target}", "true", terminal).close()
        assert _freed(daemon, tty, spare), _holders(tty)
        spare = daemon.spare(not_=spare)
        tty = load.pty_ahead_of(spare)


def test_a_reload_and_a_stop_free_the_pty_ahead(daemon: DaemonProc, users: Users) -> None:
    """A spare let go (a reload), stopped, killed, or whose daemon stops: its PTY is closed."""
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert _freed(daemon, tty, spare), _holders(tty)
    for how in (signal.SIGTERM, signal.SIGKILL):
        spare = daemon.spare(not_=spare)
        tty = load.pty_ahead_of(spare)
        os.kill(spare, how)
        assert _freed(daemon, tty, spare), _holders(tty)
        sess = load.start(daemon.client, users.bob, f"after-{how}", "true")  # a spare again
        try:
            sess.wait()
        finally:
            sess.close()
    spare = daemon.spare(not_=spare)
    tty = load.pty_ahead_of(spare)
    daemon.proc.send_signal(signal.SIGTERM)
    assert _freed(daemon, tty, spare), _holders(tty)


HOLD = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
print("open", flush=True)
sys.stdin.readline()
for what, act in (("write", lambda: os.write(fd, b"INJECTED\\n")),
                  ("read", lambda: os.read(fd, 64))):
    try:
        print(what, "ok", repr(act()), flush=True)
    except OSError as exc:
        print(what, exc.errno, flush=True)
"""


def test_a_terminal_an_account_keeps_open_is_never_the_next_sessions(daemon: DaemonProc,
                                                                   users: Users) -> None:
    """An account that keeps its session's slave open after the session (opened by path while
    it was the account's) holds a hung-up terminal: its number is not the next spare's, and
    nothing it writes or reads reaches the next session on a PTY."""
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    sess = load.start(daemon.client, users.bob, "kept", "sleep 30", ("xterm", 24, 80))
    holder = subprocess.Popen(["runuser", "-u", users.bob, "--", "python3", "-c", HOLD, tty],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline() == "open\n"
        sess.close()
        assert load.wait_until(lambda: _holders(tty).keys() <= {holder.pid, *_kids(holder.pid)},
                               10), _holders(tty)
        spare = daemon.spare(not_=spare)
        nxt = load.pty_ahead_of(spare)
        assert nxt != tty
        alice = load.start(daemon.client, users.alice, "next", "sleep 30", ("xterm", 24, 80))
        try:
            assert alice.info["tty"] == nxt
            holder.stdin.write("\n")
            holder.stdin.flush()
            out = holder.stdout.read()
            # hung up: writing fails (EIO), reading finds the end of file
            assert out == "write 5\nread ok b''\n", out
        finally:
            alice.close()
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["setpriv", f"--reuid={pwd.getpwnam(users.bob).pw_uid}",
                        f"--regid={pwd.getpwnam(users.bob).pw_gid}", "--clear-groups",
                        "kill", "-9", "-1"], check=False)


def _kids(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(name))
            except OSError:
                continue
    return out


def test_a_pty_start_refused_after_the_take_frees_the_terminal(users: Users) -> None:
    """A PTY session refused once its terminal was given to the account (its shell cannot be
    exec'd), with PAM on (the PAM process forked ahead runs its session): nothing keeps either
    end of that terminal, not the PAM process, not the process forked for the shell."""
    broken = broken_shell_account()
    with running({"session": {"pam": True}}) as d:
        spare = d.spare()
        tty = load.pty_ahead_of(spare)
        with pytest.raises(AgentError):
            load.start(d.client, broken, "refused-after-take", "true", ("xterm", 24, 80)).close()
        assert _freed(d, tty, spare), _holders(tty)


@pytest.mark.parametrize("planted", ["account's", "symlink", "group-writable"])
def test_a_planted_state_directory_gets_no_record(daemon: DaemonProc, users: Users,
                                                  planted: str, tmp_path: Path) -> None:
    """The registry's directory replaced while the daemon runs (by someone who could write
    its parent): one an account owns, a link to a directory of root's, or one others may
    write. A start is refused there, and no record (whole or partial) is written into it."""
    bob = pwd.getpwnam(users.bob)
    state = daemon.state_dir
    if os.path.isdir(state):
        os.rmdir(state)
    target = state
    if planted == "symlink":
        target = str(tmp_path / "elsewhere")
        os.symlink(target, state)
    os.mkdir(target, 0o700)
    if planted == "account's":
        os.chown(target, bob.pw_uid, bob.pw_gid)
    elif planted == "group-writable":
        os.chmod(target, 0o770)
    try:
        with pytest.raises(AgentError, match="must be a directory of the agent's user"):
            load.start(daemon.client, users.bob, "planted", "true", ("xterm", 24, 80)).close()
        assert os.listdir(target) == []
    finally:
        if os.path.islink(state):
            os.unlink(state)
        os.rmdir(target)


def test_the_shell_forked_ahead_starts_with_every_signal_default(daemon: DaemonProc,
                                                                 users: Users) -> None:
    """Every signal number, the real-time ones among them, is neither ignored nor blocked in
    the session's shell (the process forked ahead ignored them all while it waited),
    so nothing the daemon set up leaks into how the account's processes take signals."""
    daemon.spare()
    # grep exec'd in the shell's place reads the mask and dispositions the shell was started
    # with (reading the shell's own status from a forked grep races dash, which blocks every
    # signal around each fork).
    sess = load.start(daemon.client, users.bob, "signals-default",
                      "exec grep -E '^Sig(Ign|Blk):' /proc/self/status")
    try:
        assert sess.stdout is not None
        (out,) = drain([sess.stdout])
        assert out == b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
        assert sess.wait()["code"] == 0
    finally:
        sess.close()


def _in_own_mount_namespace(script: str, *args: object, timeout: float) -> Any:
    """What SCRIPT (Python, run from this checkout with ARGS, in a mount namespace of its own, so
    the devpts it mounts is its own) printed, as JSON."""
    import json
    import sys

    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
         *(str(a) for a in args)],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# Run in a mount namespace of its own, on a devpts instance that gives new slaves root:tty 0620
# (as `mode=620,gid=5` does on many hosts): every change the agent makes to a new slave's owner
# or mode is preceded by a real open of that slave for writing by an account in group tty, which
# must fail. Prints one JSON object: what each attempt saw, and the slave's final state.
_DEVPTS_620 = r"""
import errno, grp, json, os, stat, subprocess, sys
from agent import accounts, terminal

attacker = int(sys.argv[1])
tty = grp.getgrnam("tty").gr_gid
subprocess.run(["mount", "-t", "devpts", "-o", f"newinstance,mode=620,gid={tty},ptmxmode=666",
                "devpts", "/dev/pts"], check=True)
seen = []

def attack(target):
    path = target if isinstance(target, str) else os.ttyname(target)
    st = os.stat(path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setgroups([tty]); os.setresgid(attacker, attacker, attacker)
        os.setresuid(attacker, attacker, attacker)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NOCTTY))
            result = 0
        except OSError as exc:
            result = exc.errno
        os.write(w, str(result).encode()); os._exit(0)
    os.close(w)
    result = int(os.read(r, 16)); os.close(r); os.waitpid(pid, 0)
    seen.append({"path": path, "mode": oct(stat.S_IMODE(st.st_mode)), "gid": st.st_gid,
                 "open": errno.errorcode.get(result, "ok")})

for name in ("chown", "chmod", "fchown", "fchmod"):
    def spy(target, *args, _real=getattr(os, name), **kwargs):
        attack(target)
        return _real(target, *args, **kwargs)
    setattr(os, name, spy)

ahead = terminal.open_pty_ahead()
pty = ahead._pty
final_ahead = oct(stat.S_IMODE(os.fstat(pty.slave).st_mode)), os.fstat(pty.slave).st_uid
now = terminal.open_pty(accounts.Account("x", 4242, 4242, "/", "/bin/sh", (4242,), "local"), 24, 80)
print(json.dumps({"seen": seen, "tty": tty, "ahead": final_ahead, "ahead_path": pty.slave_path,
                  "ttyname": os.ttyname(pty.slave),
                  "now": oct(stat.S_IMODE(os.fstat(now.slave).st_mode))}))
"""


def test_a_new_slave_is_never_open_to_group_tty_before_its_mode_is_set(users: Users) -> None:
    got = _in_own_mount_namespace(_DEVPTS_620, pwd.getpwnam(users.bob).pw_uid, timeout=60)
    seen = got["seen"]
    assert seen, "the agent changed no slave's owner or mode"
    # This devpts really hands out slaves that group tty could open, had they been unlocked.
    assert (seen[0]["mode"], seen[0]["gid"]) == ("0o620", got["tty"])
    assert all(s["open"] in ("EIO", "EACCES") for s in seen), seen
    assert got["ahead"] == ["0o600", 0]
    assert got["ttyname"] == got["ahead_path"]
    assert got["now"] == "0o620"


# The open of a slave is checked against its mode when its path is opened, and against its lock
# only later, in the tty driver: an open that passed the mode devpts gave the new slave can find
# it unlocked once the agent has made it root's 0600 and unlocked it. Run in a mount namespace of
# its own, on a devpts instance as given: attackers (the account given, in group tty) open every
# slave in a loop and keep what they get, while the agent opens PTYs ahead, PER at a time; once
# a batch is set up, each attacker counts the slaves it holds that still work (not hung up).
# Prints one JSON object: how many slaves the attackers opened, and how many still worked.
_RACE = r"""
import fcntl, json, os, shutil, signal, subprocess, sys, tempfile, termios, time
from agent import terminal

attacker, options, access = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tty = int(sys.argv[4])
subprocess.run(["mount", "-t", "devpts", "-o", f"newinstance,ptmxmode=666,{options}",
                "devpts", "/dev/pts"], check=True)
flags = (os.O_RDWR if access == "rw" else os.O_WRONLY) | os.O_NOCTTY | os.O_NONBLOCK
# At most ROUNDS rounds, for at most SECONDS, each round waiting at most WAIT seconds for the
# attackers: on a loaded machine fewer rounds run. Attackers report each slave they opened (O)
# and each that still worked (L) at once, so what a stalled attacker found is counted too.
PER, ROUNDS, ATTACKERS, SECONDS, WAIT = 4, 2500, 2, 12.0, 10.0
flagdir = tempfile.mkdtemp(prefix="runas-agent-pty-race-", dir="/run")  # the test's overlay
os.chmod(flagdir, 0o1777)
phase = os.path.join(flagdir, "phase")

def write_phase(text):
    with open(phase + ".new", "w") as fh:
        fh.write(text)
    os.rename(phase + ".new", phase)

write_phase("run0")
r, w = os.pipe()
kids = []
for k in range(ATTACKERS):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setgroups([tty]); os.setresgid(attacker, attacker, attacker)
        os.setresuid(attacker, attacker, attacker)
        rd = 0
        while True:
            held = []
            now = ""
            while True:
                try:
                    with open(phase) as fh:
                        now = fh.read()
                except OSError:
                    pass
                if now in (f"check{rd}", "stop"):
                    break
                for i in range(PER):
                    try:
                        held.append(os.open(f"/dev/pts/{i}", flags))
                    except OSError:
                        pass
            for fd in held:
                os.write(w, b"O")
                try:
                    fcntl.ioctl(fd, termios.TCGETS, b"\0" * 64)
                    os.write(w, b"L")
                except OSError:
                    pass
                os.close(fd)
            if now == "stop":
                break
            open(os.path.join(flagdir, f"done{k}.{rd}"), "w").close()
            rd += 1
        os._exit(0)
    kids.append(pid)
os.close(w)
rounds = 0
stalled = False
try:
    deadline = time.monotonic() + SECONDS
    for rd in range(ROUNDS):
        if time.monotonic() > deadline or stalled:
            break
        ahead = [terminal.open_pty_ahead() for _ in range(PER)]
        write_phase(f"check{rd}")
        waited = time.monotonic() + WAIT
        for k in range(ATTACKERS):
            done = os.path.join(flagdir, f"done{k}.{rd}")
            while not os.path.exists(done) and time.monotonic() < waited:
                time.sleep(0.0005)
            if not os.path.exists(done):
                stalled = True
                break
            os.unlink(done)
        for a in ahead:
            a.release()
        rounds += 1
        write_phase(f"run{rd + 1}")
    write_phase("stop")
    end = time.monotonic() + 5
    while kids and time.monotonic() < end:
        kids = [pid for pid in kids if os.waitpid(pid, os.WNOHANG)[0] == 0]
        time.sleep(0.01)
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    report = os.fdopen(r, "rb").read()
finally:
    shutil.rmtree(flagdir, ignore_errors=True)
print(json.dumps({"opened": report.count(b"O"), "live": report.count(b"L"), "rounds": rounds,
                  "stalled": stalled}))
"""


@pytest.mark.parametrize(("options", "access"), [("mode=620,gid={tty}", "w"),
                                                ("mode=600,uid={attacker}", "rw")],
                         ids=["group-tty-writes", "devpts-uid-owner-reads"])
def test_no_open_that_passed_devpts_mode_finds_a_slave_opened_ahead_unlocked(
        users: Users, options: str, access: str) -> None:
    import grp

    attacker = pwd.getpwnam(users.bob).pw_uid
    tty = grp.getgrnam("tty").gr_gid
    got = _in_own_mount_namespace(_RACE, attacker, options.format(tty=tty, attacker=attacker),
                                  access, tty, timeout=100)
    assert got["live"] == 0, (f"{got['live']} slaves held ahead (root's, 0600) opened by uid "
                              f"{attacker}, {got['opened']} in all ({got})")


def _open_as(uid: int, groups: list[int], path: str) -> int:
    """0 if UID with GROUPS opens PATH for writing, else the errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        result = 0
        try:
            os.setgroups(groups)
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.close(os.open(path, os.O_WRONLY | os.O_NOCTTY))
        except OSError as exc:
            result = exc.errno or -1
        os.write(w, str(result).encode())
        os._exit(0)
    os.close(w)
    try:
        return int(os.read(r, 16))
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_a_pty_given_to_its_account_is_open_to_group_tty_again(users: Users) -> None:
    """The exclusive mode a PTY is held in ahead ends when the account is given it: its group
    tty may write to it (write, wall), as to any login's terminal."""
    import errno
    import grp

    from agent import terminal
    from agent.accounts import Account

    tty = grp.getgrnam("tty").gr_gid
    bob = pwd.getpwnam(users.bob).pw_uid
    alice = pwd.getpwnam(users.alice)
    pty = terminal.open_pty_ahead().take(
        Account(alice.pw_name, alice.pw_uid, alice.pw_gid, alice.pw_dir, alice.pw_shell,
                (alice.pw_gid,), "local"), 24, 80)
    try:
        assert _open_as(bob, [tty], pty.slave_path) == 0
        assert _open_as(bob, [], pty.slave_path) == errno.EACCES
    finally:
        os.close(pty.master)
        os.close(pty.slave)


# The hang-up cuts off an open that won the race above, but not what it did before it. Run in a
# mount namespace of its own, on a devpts instance as `mode=620,gid=tty` gives: right after the
# slave is unlocked, an open that won the race (opened here by root, then dropped to the account
# given in group tty, as the open that passed devpts' mode would be) does what the variant says:
# - "output": writes a fake prompt (it waits in the master's input: the session's output, read
#   once a session takes the PTY, possibly hours later) and stops the slave's output (TCOOFF);
# - "termios": no echo, no signals, carriage returns ignored (the client's Enter lost) and 'e' as
#   the interrupt character;
# - "ldisc": the n_null line discipline (every read and write of the session's terminal fails).
# Prints whether the attack took effect, what the PTY held ahead then holds (pending output,
# output stopped), the termios and line discipline of that PTY once taken, and those of a PTY
# nobody raced (or the error the agent raised).
_WON_RACE = r"""
import fcntl, json, os, struct, subprocess, sys, termios
from agent import accounts, terminal

attacker, tty, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
subprocess.run(["mount", "-t", "devpts", "-o", f"newinstance,mode=620,gid={tty},ptmxmode=666",
                "devpts", "/dev/pts"], check=True)
subprocess.run(["mount", "--bind", "/dev/pts/ptmx", "/dev/ptmx"], check=True)
TIOCGETD, TIOCSETD, N_NULL = 0x5424, 0x5423, 27
real = terminal._open_slave
kid = []

def attack(fd):
    if variant == "output":
        os.write(fd, b"root@host:~# planted\r\n")
        termios.tcflow(fd, termios.TCOOFF)
    elif variant == "termios":
        modes = termios.tcgetattr(fd)
        modes[0] |= termios.IGNCR
        modes[3] &= ~(termios.ECHO | termios.ISIG)
        modes[6][termios.VINTR] = b"e"
        termios.tcsetattr(fd, termios.TCSANOW, modes)
    else:
        fcntl.ioctl(fd, TIOCSETD, struct.pack("i", N_NULL))

def won_race(master, path, *rest):
    done_r, done_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(hold_w)
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
        os.setgroups([tty]); os.setresgid(attacker, attacker, attacker)
        os.setresuid(attacker, attacker, attacker)
        try:
            attack(fd)
            os.write(done_w, b"y")
        except Exception as exc:
            os.write(done_w, repr(exc).encode())
        os.read(hold_r, 1)
        os._exit(0)
    os.close(hold_r)
    kid.append((pid, hold_w, os.read(done_r, 4096).decode()))
    return real(master, path, *rest)

def state(slave):
    modes = termios.tcgetattr(slave)
    modes[6] = [c if isinstance(c, int) else ord(c) for c in modes[6]]
    (disc,) = struct.unpack("i", fcntl.ioctl(slave, TIOCGETD, b"\0" * 4))
    return {"termios": modes, "ldisc": disc}

account = accounts.Account("x", 4242, 4242, "/", "/bin/sh", (4242,), "local")
terminal._open_slave = won_race
got = {}
try:
    ahead = terminal.open_pty_ahead()
    pty = ahead._pty
    os.set_blocking(pty.master, False)
    try:
        got["pending"] = os.read(pty.master, 4096).decode(errors="replace")
    except BlockingIOError:
        got["pending"] = ""
    os.set_blocking(pty.slave, False)
    try:
        got["stopped"] = os.write(pty.slave, b"x") == 0
    except BlockingIOError:
        got["stopped"] = True
    os.set_blocking(pty.slave, True)
    got["raced"] = state(ahead.take(account, 24, 80).slave)
except Exception as exc:
    got["raced"] = {"error": repr(exc)}
terminal._open_slave = real
for pid, hold_w, _ in kid:
    os.close(hold_w)
    os.waitpid(pid, 0)
got["attacked"] = [done for _, _, done in kid]
got["fresh"] = state(terminal.open_pty_ahead().take(account, 24, 80).slave)
print(json.dumps(got))
"""


def _won_race(users: Users, variant: str) -> Any:
    """What _WON_RACE printed for VARIANT, once its attack took effect."""
    import grp

    got = _in_own_mount_namespace(_WON_RACE, pwd.getpwnam(users.bob).pw_uid,
                                  grp.getgrnam("tty").gr_gid, variant, timeout=60)
    assert got["attacked"] == ["y"], f"the {variant} attack did not take effect: {got}"
    return got


def test_an_open_cut_off_by_the_hang_up_leaves_nothing_in_the_pty_held_ahead(
        users: Users) -> None:
    got = _won_race(users, "output")
    assert got["pending"] == "", f"output planted in the next session's terminal: {got}"
    assert not got["stopped"], "the next session's terminal has its output stopped"


@pytest.mark.parametrize("variant", ["termios", "ldisc"])
def test_an_open_cut_off_by_the_hang_up_leaves_no_modes_in_the_pty_held_ahead(
        users: Users, variant: str) -> None:
    got = _won_race(users, variant)
    assert got["fresh"]["ldisc"] == 0
    assert got["raced"] == got["fresh"], f"the next session's terminal has modes set by {variant}"


# devpts options, CAP_SYS_ADMIN kept or not, and whether the PTYs are then unguarded.
_CAP_CASES = pytest.mark.parametrize(("options", "bounding", "unguarded"), [
    ("mode=620,gid={tty}", "-sys_admin", True),
    ("mode=620,gid={tty}", "+sys_admin", False),
    ("mode=600", "-sys_admin", False),
], ids=["exposed-without-sys-admin", "exposed-with-sys-admin", "root-only-without-sys-admin"])


def _devpts_without(options: str, bounding: str) -> str:
    """A shell line that mounts a devpts instance with OPTIONS on /dev/pts (and its ptmx on
    /dev/ptmx), then execs "$@" with the capability bounding set changed by BOUNDING."""
    import grp

    tty = grp.getgrnam("tty").gr_gid
    return (f"mount -t devpts -o newinstance,{options.format(tty=tty)},ptmxmode=666 devpts"
            " /dev/pts && mount --bind /dev/pts/ptmx /dev/ptmx"
            f' && exec setpriv --bounding-set={bounding} "$@"')


# The hang-up (TIOCVHANGUP) and the reopen of a slave in exclusive mode need CAP_SYS_ADMIN, which a
# root daemon does not always have: a container's default capabilities (Docker's, Podman's) leave
# it out, as can a unit's CapabilityBoundingSet. Run in a mount namespace of its own, on a devpts
# instance mounted with the options given, with or without CAP_SYS_ADMIN in the bounding set (so
# in the agent's capabilities): a PTY opened ahead and taken, one opened for a session at once,
# and what terminal.unguarded_reason() says. Prints what each gave: "ok" or the error raised.
_WITHOUT_SYS_ADMIN = r"""
import json, sys
from agent import accounts, terminal

account = accounts.Account("x", 4242, 4242, "/", "/bin/sh", (4242,), "local")
got = {}
for name, how in (("ahead", lambda: terminal.open_pty_ahead().take(account, 24, 80)),
                  ("now", lambda: terminal.open_pty(account, 24, 80))):
    try:
        how()
        got[name] = "ok"
    except Exception as exc:
        got[name] = repr(exc)
got["reason"] = terminal.unguarded_reason()
print(json.dumps(got))
"""


@_CAP_CASES
def test_ptys_open_with_or_without_cap_sys_admin_and_say_when_unguarded(
        options: str, bounding: str, unguarded: bool) -> None:
    """Without CAP_SYS_ADMIN a PTY is still set up (as with any openpty()); where devpts' own
    mode let an account open a new slave, unguarded_reason() names that and the fix, which the
    daemon logs at start-up."""
    import json
    import sys

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          _devpts_without(options, bounding), "sh", sys.executable, "-c",
                          _WITHOUT_SYS_ADMIN], cwd=here, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["ahead"], got["now"]) == ("ok", "ok")
    if unguarded:
        assert "CAP_SYS_ADMIN" in got["reason"]
        assert "mode=600" in got["reason"]
    else:
        assert got["reason"] is None


@_CAP_CASES
def test_the_daemon_says_at_start_up_when_its_ptys_are_unguarded_and_still_serves_them(
        users: Users, options: str, bounding: str, unguarded: bool) -> None:
    """The real daemon, in a mount namespace of its own on a devpts instance mounted with the
    options given, with or without CAP_SYS_ADMIN: its PTY sessions run on that devpts either way,
    and it logs `pty.setup_unguarded` (naming the cause and the fix) at start-up exactly where an
    account could open a new slave before its mode is set."""
    import json

    from tests.support.daemon import make_daemon, read_until

    d = make_daemon()
    d.start(prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c",
                    _devpts_without(options, bounding), "sh"))
    try:
        with open(f"/proc/{d.pid}/status") as fh:
            caps = int(next(ln for ln in fh if ln.startswith("CapEff:")).split()[1], 16)
        assert bool(caps & (1 << 21)) == (bounding == "+sys_admin")  # CAP_SYS_ADMIN
        sess = load.start(d.client, users.bob, "pty-unguarded", "tty; echo DONE",
                          ("xterm", 24, 80))
        try:
            assert sess.master is not None
            out = read_until(sess.master, b"DONE")
            assert sess.wait()["code"] == 0
        finally:
            sess.close()
        # The session's terminal is a slave of the daemon's own devpts instance, not the host's.
        assert sess.info["tty"].encode() in out
        assert os.stat(f"/proc/{d.pid}/root/dev/pts/ptmx").st_dev != os.stat("/dev/pts/ptmx").st_dev
        logged = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
        warned = [r for r in logged if r.get("event") == "pty.setup_unguarded"]
        assert [r.get("level") for r in logged if r.get("event") == "pty.unavailable"] == []
        if unguarded:
            assert len(warned) == 1, logged
            assert "CAP_SYS_ADMIN" in warned[0]["reason"]
            assert "mode=600" in warned[0]["reason"]
            assert warned[0]["level"] == "warning"
        else:
            assert warned == [], warned
    finally:
        d.stop()
        d.cleanup()
