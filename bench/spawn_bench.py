"""Median wall time of agent.spawn for `/bin/true` from a warm parent, against the bare floor.

Run as root: `.venv/bin/python bench/spawn_bench.py [N]`. It works inside a private mount
namespace (tests/support/isolation.py) with throwaway accounts, so the host is untouched.
Each sample is start + waitpid. The floor is fork + setgroups/setresgid/setresuid + execv +
waitpid with nothing else (no verification, fd closing, signal reset, report pipe or chdir),
as in design §10; the variants run interleaved so that the machine's noise hits them alike.
"""

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import accounts, environ, spawn, terminal
from agent.config import PolicyConfig
from agent.platform.linux import Linux
from agent.values import replace
from tests.support import isolation
from tests.support.procio import drain


def floor(acct: accounts.Account, argv: Sequence[str]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(list(acct.groups))
            os.setresgid(acct.gid, acct.gid, acct.gid)
            os.setresuid(acct.uid, acct.uid, acct.uid)
            os.execv(argv[0], list(argv))
        finally:
            os._exit(127)
    return pid


def pty_session(acct: accounts.Account, env: dict[str, str]) -> int:
    pty = terminal.open_pty(acct, 24, 80)
    try:
        pid = spawn.spawn(spawn.SpawnPlan(acct, "echo ready", env, pty.slave, pty.slave,
                                          pty.slave, tty=True))
    finally:
        os.close(pty.slave)
    try:
        (out,) = drain([pty.master], timeout=10)  # until the shell exits (EIO)
    finally:
        os.close(pty.master)
    assert b"ready" in out, out
    return pid


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    isolation.enter()
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", "--", "benchuser"], check=True)
    acct = accounts.require("benchuser", PolicyConfig(), Linux())
    null = os.open(os.devnull, os.O_RDWR)
    env = environ.build_env(acct, term=None, client_env={})
    tenv = environ.build_env(acct, term="xterm", client_env={})

    def plan(shell: str) -> spawn.SpawnPlan:
        return spawn.SpawnPlan(replace(acct, shell=shell), "/bin/true", env,
                               null, null, null, tty=False)

    true_plan, sh_plan, bash_plan = plan("/bin/true"), plan("/bin/sh"), plan("/bin/bash")
    variants: list[tuple[str, Callable[[], int]]] = [
        ("floor: fork + drop + exec /bin/true", lambda: floor(acct, ["/bin/true"])),
        ("spawn(): exec /bin/true directly (shell=/bin/true)", lambda: spawn.spawn(true_plan)),
        ("floor: fork + drop + exec /bin/sh -c /bin/true",
         lambda: floor(acct, ["/bin/sh", "-c", "/bin/true"])),
        ("spawn(): /bin/sh -c /bin/true", lambda: spawn.spawn(sh_plan)),
        ("spawn(): /bin/bash -c /bin/true", lambda: spawn.spawn(bash_plan)),
        ("spawn(): PTY + bash -c 'echo ready'", lambda: pty_session(acct, tenv)),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in variants}
    for i in range(n + 10):
        for label, fn in variants:
            t = time.perf_counter()
            pid = fn()
            _, status = os.waitpid(pid, 0)
            took = time.perf_counter() - t
            assert status == 0, (label, status)
            if i >= 10:  # warm-up
                samples[label].append(took)
    for label, values in samples.items():
        print(f"{statistics.median(values) * 1000:7.2f} ms  {label}")


if __name__ == "__main__":
    main()
