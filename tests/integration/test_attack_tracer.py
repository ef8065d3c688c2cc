"""A session's account traces its own shell and never waits for it, replayed for real: real
accounts, the real daemon, real ptrace.

A process that traces another sees its exit first, and until the tracer waits for it the dead
tracee is a zombie its parent cannot reap. The supervisor, ending a session, killed the shell's
group and then waited for the shell without a bound: a tracer of the account's (outside the
group: setsid and a double fork) that never waits kept every end from completing. `terminate`,
`max_duration` and a hang-up never reached `session.ended`, the session stayed listed and
counted against the session limits, and in end mode `all` the cgroup's kill, which came after
that wait, never ran. Now the shell's tracer, when it is the account's (real uid), is killed
(with the tracer of its tracing thread, which can keep it stopped in its exit, and so on), and
no wait for the shell or for anything the session left is unbounded: a zombie that root's
tracer holds ends the session with its status unknown, and the process walk of end mode `all`
without cgroups counts a zombie it cannot reap as gone.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.client import Session
from agent.session import KILLED_WAIT
from tests.conftest import Users
from tests.support import load
from tests.support.daemon import DaemonProc, make_daemon, read_until, running

pytestmark = pytest.mark.privileged

GRACE = 1.0
PTRACE_O_TRACEEXIT = 0x40
SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter the test accounts can execute

# Run as the session's shell (exec'd by `sh -c`) with one argument, how: lets any process of
# the account trace it (Yama's ptrace_scope 1 would allow only its ancestors), then forks a
# tracer outside its process group (setsid, a double fork) that seizes it and never waits;
# prints "SEIZED <tracer pid>" (or "SEIZED -<errno>") and sleeps. How:
# - "process": as said;
# - "thread": a thread of the tracer other than its first seizes it (TracerPid then names that
#   thread);
# - "setuid": the tracer then execs a setuid-root copy of sleep given as the second argument
#   (its real user id stays the account's, the others become root's) and never waits;
# - "orphan": no tracer; the shell leaves a process orphaned to the supervisor (its
#   subreaper), prints "ORPHAN <pid>", and lets it exit once a line comes on its input.
# A third argument "exit": the tracer seizes with PTRACE_O_TRACEEXIT (the killed shell then
# stops in its exit until its tracer lets it go or is gone). The tracer may be traced in turn
# by any process of the account. SIGCHLD stays blocked: a
# traced process stops on any signal delivered, and its tracer never lets it go on.
HELD = r"""
import ctypes, os, signal, sys, time
how = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.prctl(0x59616d61, ctypes.c_ulong(2**64 - 1), 0, 0, 0)  # PR_SET_PTRACER, any process
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
target = os.getpid()
if how == "orphan":
    left, leave = os.pipe()
    pr, pw = os.pipe()
    if os.fork() == 0:
        orphan = os.fork()
        if orphan == 0:  # orphaned at once; exits when the shell lets it (once traced)
            os.close(leave)
            os.read(left, 1)
            os._exit(0)
        os.write(pw, str(orphan).encode())
        os._exit(0)
    os.close(pw)
    os.close(left)
    orphan = int(os.read(pr, 32))
    os.close(pr)
    os.wait()
    print("ORPHAN", orphan, flush=True)
    sys.stdin.readline()
    os.close(leave)
    while True:
        time.sleep(3600)
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    for fd in (0, 1, 2):
        os.close(fd)
    libc.prctl(0x59616d61, ctypes.c_ulong(2**64 - 1), 0, 0, 0)

    def seize():
        options = 0x40 if sys.argv[3:] == ["exit"] else 0  # PTRACE_O_TRACEEXIT
        seized = libc.ptrace(0x4206, target, None, options) == 0  # PTRACE_SEIZE
        os.write(w, str(os.getpid() if seized else -ctypes.get_errno()).encode())
        os.close(w)
        if how == "setuid":
            os.execv(sys.argv[2], ["sleep", "3600"])
        while True:
            time.sleep(3600)

    if how == "thread":
        import threading
        threading.Thread(target=seize, daemon=True).start()
        while True:
            time.sleep(3600)
    seize()
os.close(w)
os.wait()
print("SEIZED", int(os.read(r, 32) or b"0"), flush=True)
while True:
    time.sleep(3600)
"""

@pytest.fixture
def held_script() -> Iterator[str]:
    """HELD, where the test accounts can read it, next to a setuid-root copy of sleep (on the
    root file system: /run is mounted nosuid)."""
    with tempfile.TemporaryDirectory(prefix="runas-agent-tracer-", dir="/tmp") as work:
        os.chmod(work, 0o755)
        path = os.path.join(work, "held.py")
        with open(path, "w") as fh:
            fh.write(HELD)
        os.chmod(path, 0o644)
        shutil.copy("/bin/sleep", os.path.join(work, "sleep-setuid-root"))
        os.chmod(os.path.join(work, "sleep-setuid-root"), 0o4755)
        yield path


def _tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln for ln in fh if ln.startswith("TracerPid:")).split()[1])


def _uids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as fh:
        return [int(n) for n in next(ln for ln in fh if ln.startswith("Uid:")).split()[1:]]


def _alive(pid: int) -> bool:
    """PID runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _logged(d: DaemonProc, event: str) -> list[dict[str, object]]:
    return [r for r in (json.loads(ln) for ln in d.log().splitlines() if ln.startswith("{"))
            if r.get("event") == event]


def _terminated(sess: Session) -> tuple[dict[str, Any], float]:
    """SESS terminated: its exit frame (within the grace period and KILLED_WAIT, and 10 s to
    spare) and how long it took."""
    began = time.monotonic()
    sess.terminate()
    end = _ends_within(sess, GRACE + KILLED_WAIT + 10)
    return end, time.monotonic() - began


def _seized(proc: subprocess.Popen[bytes]) -> None:
    """PROC, a tracer, said that it traces what it was given."""
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"SEIZED\n"


def _ends_within(sess: Session, seconds: float) -> dict[str, Any]:
    """SESS's exit frame, which must come within SECONDS."""
    ready = select.select([sess.control_fd], [], [], seconds)[0]
    assert ready, f"no end within {seconds} s"
    return sess.wait()


# Run as the account outside the session, or as root: seizes the pid given with the ptrace
# options given (PTRACE_O_TRACEEXIT: once killed, it stops in its exit, still
# holding its own tracee), and never waits; prints "SEIZED".
OUTER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
assert libc.ptrace(0x4206, int(sys.argv[1]), None, int(sys.argv[2])) == 0, ctypes.get_errno()
print("SEIZED", flush=True)
while True:
    time.sleep(3600)
"""


def _outer(user: str, pid: int, options: int) -> subprocess.Popen[bytes]:
    """OUTER, run as USER, once it traces PID."""
    holder = subprocess.Popen(["runuser", "-u", user, "--", SYSTEM_PYTHON, "-I", "-c", OUTER,
                               str(pid), str(options)], stdout=subprocess.PIPE, cwd="/")
    _seized(holder)
    return holder


@pytest.mark.parametrize(("end_mode", "how", "outer"), [
    ("process_group", "process", False), ("all", "process", False),
    ("process_group", "thread", False), ("process_group", "setuid", False),
    ("all", "process", True), ("process_group", "thread", True),
], ids=["process", "process-end-mode-all", "thread", "setuid-root-program", "held-in-its-exit",
        "thread-held-in-its-exit"])
def test_a_tracer_that_never_waits_cannot_keep_its_session_from_ending(
        users: Users, held_script: str, end_mode: str, how: str, outer: bool) -> None:
    """The tracer is killed, and a tracer of the tracing thread (another process of the
    account, from outside the session) that keeps the killed one stopped in its exit is killed
    too."""
    sid = f"held-{end_mode}-{how}-{outer}"
    with running({"session": {"end_mode": end_mode, "grace_period": GRACE}}) as d:
        sess = load.start(d.client, users.bob, sid, f"exec {SYSTEM_PYTHON} -I {held_script} "
                          f"{how} {os.path.dirname(held_script)}/sleep-setuid-root", None)
        tracer, holder, outer_pid = 0, None, 0
        try:
            assert sess.stdout is not None
            line = read_until(sess.stdout, b"\n").decode()
            tracer = int(line.split()[1])
            assert tracer > 0, f"the account could not trace its shell: {line}"
            shell = int(sess.info["pid"])
            traced_by = _tracer_of(shell)  # the attack is in place
            assert traced_by > 0
            assert (traced_by == tracer) == (how != "thread")
            assert os.path.exists(f"/proc/{tracer}/task/{traced_by}")
            if outer:
                # It traces the thread that traces the shell (not the process's first thread).
                holder = _outer(users.bob, traced_by, PTRACE_O_TRACEEXIT)
                outer_pid = _tracer_of(traced_by)  # runuser's child
            if how == "setuid":  # running a setuid-root program, as the account and root
                assert load.wait_until(lambda: 0 in _uids(tracer), 10)
                assert _uids(tracer)[0] != 0
            end, took = _terminated(sess)
        finally:
            sess.close()
            for pid in (tracer, outer_pid):
                if pid > 0 and _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if holder is not None:
                holder.wait()
        # Ended as any terminated session whose shell ignores SIGHUP, and not by the bound.
        assert (end["reason"], end["code"], end["signal"]) == ("terminated", None, 9)
        assert took < GRACE + KILLED_WAIT
        assert d.wait_event(sid, "session.ended")["exit_status"] == {"code": None, "signal": 9}
        assert load.wait_until(lambda: not _alive(tracer), 5)  # a killed process's threads end
        assert sid not in [s["session_id"] for s in d.client.sessions()]
        killed = [(k["shell_pid"], k["tracer_pid"]) for k in _logged(d, "session.tracer_killed")]
        if outer:
            assert killed == [(shell, tracer), (shell, outer_pid)]
            assert load.wait_until(lambda: not _alive(outer_pid), 5)
        else:
            assert killed == [(shell, tracer)]


# Run as the account, outside the session, as a process group of its own. "chain PID N": N
# processes, each seizing the one before with PTRACE_O_TRACEEXIT (the first seizes PID), none
# ever waiting; prints "SEIZED" once all have. "respin PID N": N processes that try to seize
# PID (the shell) with PTRACE_O_TRACEEXIT over and over, to take it the moment its tracer is
# gone; prints "SEIZED" once they run.
GANG = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
how, target, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r, w = os.pipe()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        if how == "chain":
            ok = libc.ptrace(0x4206, target, None, 0x40) == 0
            os.write(w, b"y" if ok else b"n")
        else:
            os.write(w, b"y")
            while libc.ptrace(0x4206, target, None, 0x40) != 0:
                if ctypes.get_errno() == 3:  # ESRCH: the shell is gone
                    os._exit(0)
        while True:
            time.sleep(3600)
    if how == "chain":
        target = pid
got = b""
while len(got) < n:
    got += os.read(r, n)
print("SEIZED" if got == b"y" * n else f"FAILED {got!r}", flush=True)
while True:
    time.sleep(3600)
"""


@pytest.mark.parametrize("gang", ["chain", "respin"])
def test_a_long_chain_of_tracers_or_one_that_takes_the_shell_again_is_killed_too(
        users: Users, held_script: str, gang: str) -> None:
    """"chain": ten tracers, each of the account's, each keeping the one it traces stopped in
    its exit; a walk that stopped after eight left the session's end to the bound. "respin":
    processes of the account that seize the dying shell again as soon as its tracer is gone;
    the tracers are looked for until the shell's status comes."""
    sid = f"held-{gang}"
    with running({"session": {"grace_period": GRACE}}) as d:
        sess = load.start(d.client, users.bob, sid, f"exec {SYSTEM_PYTHON} -I {held_script} "
                          "process - exit", None)
        gang_proc = None
        try:
            assert sess.stdout is not None
            tracer = int(read_until(sess.stdout, b"\n").decode().split()[1])
            assert tracer > 0
            shell = int(sess.info["pid"])
            target, n = (tracer, 9) if gang == "chain" else (shell, 4)
            gang_proc = subprocess.Popen(
                ["runuser", "-u", users.bob, "--", SYSTEM_PYTHON, "-I", "-c", GANG, gang,
                 str(target), str(n)], stdout=subprocess.PIPE, cwd="/", start_new_session=True)
            _seized(gang_proc)
            end, took = _terminated(sess)
        finally:
            sess.close()
            if gang_proc is not None:
                os.killpg(gang_proc.pid, signal.SIGKILL)
                gang_proc.wait()
        assert (end["reason"], end["code"], end["signal"]) == ("terminated", None, 9)
        assert took < GRACE + KILLED_WAIT
        killed = [k["tracer_pid"] for k in _logged(d, "session.tracer_killed")]
        assert killed[0] == tracer
        if gang == "chain":
            assert len(killed) == 10, killed


def test_a_traced_zombie_left_by_the_session_does_not_stall_the_process_walk(
        users: Users, held_script: str) -> None:
    """End mode `all` where no cgroup can be used ends the session by walking its processes:
    a process the shell left (orphaned to the supervisor) that exits while a process of the
    account outside the session traces it is a zombie the supervisor cannot reap, and the
    walk waited for it without end."""
    d = make_daemon({"session": {"end_mode": "all", "grace_period": GRACE}})
    d.start(prefix=("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'umount -l /sys/fs/cgroup && exec "$@"', "sh"))
    holder = None
    try:
        assert "cgroup.unavailable" in d.log()
        sess = load.start(d.client, users.bob, "held-orphan",
                          f"exec {SYSTEM_PYTHON} -I {held_script} orphan", None)
        try:
            assert sess.stdout is not None
            assert sess.stdin is not None
            orphan = int(read_until(sess.stdout, b"\n").decode().split()[1])
            holder = _outer(users.bob, orphan, 0)
            os.write(sess.stdin, b"exit now\n")
            assert load.wait_until(lambda: not _alive(orphan), 5)
            assert _tracer_of(orphan) > 0  # a zombie the process outside the session holds
            end, took = _terminated(sess)
        finally:
            sess.close()
        assert end["reason"] == "terminated"
        assert took < GRACE + 5.5  # the walk's own bound: SIGKILL rounds of 0.1 s
        d.wait_event("held-orphan", "session.ended")
    finally:
        if holder is not None:
            subprocess.run(["pkill", "-KILL", "-P", str(holder.pid)], check=False)
            holder.kill()
            holder.wait()
        d.stop()
        d.cleanup()


def test_a_root_tracer_is_left_alone_and_the_end_waits_for_it_only_so_long(
        users: Users) -> None:
    with running({"session": {"grace_period": GRACE}}) as d:
        sess = load.start(d.client, users.bob, "held-by-root", "exec sleep 600", None)
        holder = subprocess.Popen([sys.executable, "-I", "-c", OUTER, str(sess.info["pid"]),
                                   "0"], stdout=subprocess.PIPE)
        try:
            _seized(holder)
            end, took = _terminated(sess)
            assert holder.poll() is None  # root's tracer is not the agent's to kill
        finally:
            sess.close()
            holder.kill()
            holder.wait()
        assert (end["reason"], end["code"], end["signal"]) == ("terminated", None, None)
        assert took >= KILLED_WAIT  # it waited for the shell's status, then no longer
        ended = d.wait_event("held-by-root", "session.ended")
        assert ended["exit_status"] == {"code": None, "signal": None}
        assert "held-by-root" not in [s["session_id"] for s in d.client.sessions()]
        assert _logged(d, "session.tracer_killed") == []
        assert len(_logged(d, "session.shell_not_reaped")) == 1


def test_the_walk_of_tracers_stops_at_its_deadline() -> None:
    """A chain of tracers is as long as the account makes it (thousands of processes made one
    session's end take 10 s): the walk stops at its deadline, and the end then goes on, bounded.
    Here with a tracer of root's (uid 0 given as the account's), walked by the function itself."""
    from agent.session import _kill_tracers

    traced = subprocess.Popen(["sleep", "60"])
    holder = subprocess.Popen([sys.executable, "-I", "-c", OUTER, str(traced.pid), "0"],
                              stdout=subprocess.PIPE)
    try:
        _seized(holder)
        assert _kill_tracers(traced.pid, 0, "linux", time.monotonic() - 1) == []
        assert holder.poll() is None
        assert _kill_tracers(traced.pid, 1, "linux", time.monotonic() + 5) == []  # not uid 1's
        assert _kill_tracers(traced.pid, 0, "linux", time.monotonic() + 5) == [holder.pid]
        assert holder.wait(5) == -signal.SIGKILL
    finally:
        for p in (holder, traced):
            p.kill()
            p.wait()
