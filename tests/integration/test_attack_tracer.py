"""A session's account traces its own shell and never waits for it, replayed for real: real
accounts, the real daemon, real ptrace.

A process that traces another sees its exit first, and until the tracer waits for it the dead
tracee is a zombie its parent cannot reap. The supervisor, ending a session, killed the shell's
group and then waited for the shell without a bound: a tracer of the account's (outside the
group: setsid and a double fork) that never waits kept every end from completing. `terminate`,
`max_duration` and a hang-up never reached `session.ended`, the session stayed listed and
counted against the session limits, and in end mode `all` the cgroup's kill, which came after
that wait, never ran. Now the shell's tracer, when it is the account's, is killed, and no wait
for the shell is unbounded: a zombie that root's tracer holds ends the session with its status
unknown.
"""

from __future__ import annotations

import json
import os
import select
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
from tests.support.daemon import DaemonProc, read_until, running

pytestmark = pytest.mark.privileged

GRACE = 1.0
SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter the test accounts can execute

# Run as the session's shell (exec'd by `sh -c`): lets any process of the account trace it
# (Yama's ptrace_scope 1 would allow only its ancestors), then forks a tracer outside its
# process group (setsid, a double fork) that seizes it and never waits; prints "SEIZED <pid>"
# (or "SEIZED -<errno>") and sleeps; with the argument "thread", a thread of the tracer other
# than its first seizes it (TracerPid then names that thread). SIGCHLD stays blocked: a traced
# process stops on any signal delivered, and its tracer never lets it go on.
HELD = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(0x59616d61, ctypes.c_ulong(2**64 - 1), 0, 0, 0)  # PR_SET_PTRACER, any process
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
me = os.getpid()
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    for fd in (0, 1, 2):
        os.close(fd)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

    def seize():
        seized = libc.ptrace(0x4206, me, None, None) == 0  # PTRACE_SEIZE
        os.write(w, str(os.getpid() if seized else -ctypes.get_errno()).encode())
        os.close(w)
        while True:
            time.sleep(3600)

    if sys.argv[1:] == ["thread"]:  # a thread other than the process's first traces it
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

# Run as root: seizes the pid given and never waits; prints "SEIZED" once it traces it.
ROOT_TRACER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
assert libc.ptrace(0x4206, int(sys.argv[1]), None, None) == 0, ctypes.get_errno()
print("SEIZED", flush=True)
while True:
    time.sleep(3600)
"""


@pytest.fixture
def held_script() -> Iterator[str]:
    """HELD, where the test accounts can read it."""
    with tempfile.TemporaryDirectory(prefix="runas-agent-tracer-", dir="/run") as work:
        os.chmod(work, 0o755)
        path = os.path.join(work, "held.py")
        with open(path, "w") as fh:
            fh.write(HELD)
        os.chmod(path, 0o644)
        yield path


def _tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln for ln in fh if ln.startswith("TracerPid:")).split()[1])


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


def _ends_within(sess: Session, seconds: float) -> dict[str, Any]:
    """SESS's exit frame, which must come within SECONDS."""
    ready = select.select([sess.control_fd], [], [], seconds)[0]
    assert ready, f"no end within {seconds} s"
    return sess.wait()


@pytest.mark.parametrize(("end_mode", "how"), [("process_group", "process"), ("all", "process"),
                                               ("process_group", "thread")])
def test_a_tracer_that_never_waits_cannot_keep_its_session_from_ending(
        users: Users, held_script: str, end_mode: str, how: str) -> None:
    with running({"session": {"end_mode": end_mode, "grace_period": GRACE}}) as d:
        sess = load.start(d.client, users.bob, f"held-{end_mode}",
                          f"exec {SYSTEM_PYTHON} -I {held_script} {how}", None)
        tracer = 0
        try:
            assert sess.stdout is not None
            line = read_until(sess.stdout, b"\n").decode()
            tracer = int(line.split()[1])
            assert tracer > 0, f"the account could not trace its shell: {line}"
            shell = int(sess.info["pid"])
            traced_by = _tracer_of(shell)  # the attack is in place
            assert traced_by > 0
            assert (traced_by == tracer) == (how == "process")
            assert os.path.exists(f"/proc/{tracer}/task/{traced_by}")
            began = time.monotonic()
            sess.terminate()
            end = _ends_within(sess, GRACE + KILLED_WAIT + 10)
            took = time.monotonic() - began
        finally:
            sess.close()
            if tracer > 0 and _alive(tracer):
                os.kill(tracer, signal.SIGKILL)
        # Ended as any terminated session whose shell ignores SIGHUP, and not by the bound.
        assert (end["reason"], end["code"], end["signal"]) == ("terminated", None, 9)
        assert took < GRACE + KILLED_WAIT
        ended = d.wait_event(f"held-{end_mode}", "session.ended")
        assert ended["exit_status"] == {"code": None, "signal": 9}
        assert not _alive(tracer)
        assert f"held-{end_mode}" not in [s["session_id"] for s in d.client.sessions()]
        killed = _logged(d, "session.tracer_killed")
        assert [(k["shell_pid"], k["tracer_pid"]) for k in killed] == [(shell, tracer)]


def test_a_root_tracer_is_left_alone_and_the_end_waits_for_it_only_so_long(
        users: Users) -> None:
    with running({"session": {"grace_period": GRACE}}) as d:
        sess = load.start(d.client, users.bob, "held-by-root", "exec sleep 600", None)
        holder = subprocess.Popen([sys.executable, "-I", "-c", ROOT_TRACER,
                                   str(sess.info["pid"])], stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"SEIZED\n"
            began = time.monotonic()
            sess.terminate()
            end = _ends_within(sess, GRACE + KILLED_WAIT + 10)
            took = time.monotonic() - began
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
