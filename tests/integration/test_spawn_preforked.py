"""The child spawn.prefork() forks ahead of its plan, attacked where the plan is handed over:
real accounts, real processes. A child that cannot take its plan (stopped, by a signal or by a
debugger) must neither hang nor fail the start: it is killed and reaped, and a fork replaces it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Optional

import pytest

from agent import accounts
from agent.config import PolicyConfig
from agent.environ import build_env
from agent.platform.linux import Linux
from agent.spawn import SpawnPlan, describe_status, prefork, spawn
from tests.conftest import Users
from tests.support.procio import drain, wait_exit

pytestmark = pytest.mark.privileged

# A root debugger that attaches to PID and stops it (PTRACE_SEIZE, PTRACE_INTERRUPT): a stop its
# parent's waitpid(WUNTRACED) does not see. It holds it stopped until it ends (as a debugger does,
# it waits for its end, which lets the parent reap it).
TRACER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
if libc.ptrace(0x4206, pid, None, None) or libc.ptrace(0x4207, pid, None, None):
    sys.exit(f"ptrace: {os.strerror(ctypes.get_errno())}")
os.waitpid(pid, 0x40000000)  # __WALL: the stop
sys.stdout.write("stopped\n")
sys.stdout.flush()
while True:
    _, status = os.waitpid(pid, 0x40000000)
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break
"""


class Hung(Exception):
    pass


def _hung(_signum: int, _frame: Optional[FrameType]) -> None:
    raise Hung("spawn() still sending the plan to a stopped child")


def test_a_child_stopped_after_it_was_found_waiting_is_replaced_by_a_fork(users: Users) -> None:
    acct = accounts.require(users.bob, PolicyConfig(), Linux())
    # A plan larger than the socket's buffer: the send needs the child to read.
    env = {**build_env(acct, term=None, client_env={}),
           **{f"BIG{i}": "x" * 65536 for i in range(16)}}
    pre = prefork()
    ahead = pre.pid
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(ahead)],
                              stdout=subprocess.PIPE)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    old = signal.signal(signal.SIGALRM, _hung)
    try:
        assert tracer.stdout is not None
        assert tracer.stdout.readline() == b"stopped\n"
        signal.alarm(20)
        try:
            pid = spawn(SpawnPlan(acct, 'echo "ran ${#BIG15}"', env, in_r, out_w, out_w,
                                  tty=False), preforked=pre, timeout=3)
        finally:
            signal.alarm(0)
        os.close(in_w)
        in_w = -1
        os.close(out_w)
        out_w = -1
        (out,) = drain([out_r])
        assert describe_status(wait_exit(pid))["code"] == 0
        assert pid != ahead
        assert out == b"ran 65536\n"
        assert not os.path.exists(f"/proc/{ahead}")  # killed and reaped
    finally:
        signal.signal(signal.SIGALRM, old)
        for fd in (in_r, in_w, out_r, out_w):
            if fd != -1:
                os.close(fd)
        tracer.kill()
        tracer.wait()
        try:  # (what the old code left behind: unreaped, so the pid is still the child's)
            os.kill(ahead, signal.SIGKILL)
            os.waitpid(ahead, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
