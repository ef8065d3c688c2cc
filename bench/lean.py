"""How fast could a Python agent with the required shape start `true`? A lean model, timed
against `runuser` in the same run.

Run as root: `.venv/bin/python bench/lean.py [N]`. It works inside a private mount namespace
(tests/support/isolation.py) with a throwaway account, so the host is untouched; its audit
files are on the root filesystem (a temporary directory in /tmp), as `bench/run`'s are.

Each model is a server process of a few lines (a Unix socket, no protocol, no checks, no
configuration) doing only what the agent's start must do, step by step:

- `direct`: the server accepts, sends a shell's process forked ahead the word to go; that
  process drops to the account (setgroups, setresgid, setresuid, chdir to its home) and execs
  `/bin/sh -c true`; the server waits for it and answers the exit status. No record.
- `records`: the same, with the three audit records, each appended and fsync'd: `requested`
  (its fsync while the shell's process drops its privileges), `started` (before the shell's
  process may exec: the exec gate, one more round trip with it), `ended` (before the answer).
- `supervisor`: `records` done by a supervisor of its own for each session (as the agent must,
  so that a session outlives the daemon): the server forks a spare ahead, hands it each
  accepted connection (SCM_RIGHTS), and forks the next one; the spare forks the shell's
  process ahead.
- `supervisor, agent's image`: `supervisor` in a server that has first imported the modules
  the agent's daemon imports before it forks (agent.server.prepare_for_fork's list), so each
  fork copies an address space of the agent's size.

The difference between the last model and the agent is what the agent's own steps cost
(protocol, checks, registry, environment, PAM, logging, the hand-over's frame); the difference
between `runuser` and the last model is what no such Python design can take away.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import isolation

USER = "leanbench"


class _Ahead:
    """A shell's process forked ahead: it waits for its plan, drops to the account, reports at
    the gate, waits for the word to go and execs the shell."""

    def __init__(self, acct: pwd.struct_passwd, groups: list[int]) -> None:
        self.chan, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.chan.close()
                if theirs.recv(1) != b"p":
                    return
                os.setgroups(groups)
                os.setresgid(acct.pw_gid, acct.pw_gid, acct.pw_gid)
                os.setresuid(acct.pw_uid, acct.pw_uid, acct.pw_uid)
                os.chdir(acct.pw_dir)
                theirs.send(b"r")
                if theirs.recv(1) == b"g":
                    os.execv("/bin/sh", ["sh", "-c", "true"])
            finally:
                os._exit(127)
        theirs.close()


def _record(path: str, event: str, sync: bool) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(fd, b'{"event": "%s", "ts": %f}\n' % (event.encode(), time.time()))
    if sync:
        os.fsync(fd)
    return fd


def _session(conn: socket.socket, ahead: _Ahead, audit: Optional[str]) -> None:
    conn.recv(4096)
    fd = _record(audit, "session.requested", False) if audit else -1
    ahead.chan.send(b"p")
    if audit:
        os.fsync(fd)
        os.close(fd)
    ahead.chan.recv(1)  # at the gate
    if audit:
        os.close(_record(audit, "session.started", True))
    ahead.chan.send(b"g")
    _, status = os.waitpid(ahead.pid, 0)
    if audit:
        os.close(_record(audit, "session.ended", True))
    conn.send(b"%d\n" % os.waitstatus_to_exitcode(status))
    conn.close()
    ahead.chan.close()


def _serve(listener: socket.socket, mode: str, audit: str, image: bool) -> None:
    if image:  # what the daemon has imported when it forks (its RSS is printed)
        import importlib

        for name in ("agent.config", "agent.logsetup", "agent.server", "structlog", "yaml"):
            importlib.import_module(name)
        from agent import server

        server.prepare_for_fork()
    acct = pwd.getpwnam(USER)
    groups = os.getgrouplist(USER, acct.pw_gid)
    if mode != "supervisor":
        while True:
            ahead = _Ahead(acct, groups)
            conn, _ = listener.accept()
            _session(conn, ahead, audit if mode == "records" else None)
    while True:  # a spare ahead, handed each connection
        ours, theirs = socket.socketpair()
        spare = os.fork()
        if spare == 0:
            listener.close()
            ours.close()
            ahead = _Ahead(acct, groups)
            _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
            _session(socket.socket(fileno=fds[0]), ahead, audit)
            os._exit(0)
        theirs.close()
        conn, _ = listener.accept()
        socket.send_fds(ours, [b"c"], [conn.fileno()])
        conn.close()
        ours.close()
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _start_server(workdir: str, mode: str, image: bool) -> tuple[int, str]:
    path = os.path.join(workdir, f"{mode}-{int(image)}.sock")
    audit = os.path.join(workdir, f"{mode}-{int(image)}.audit")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    pid = os.fork()
    if pid == 0:
        try:
            _serve(listener, mode, audit, image)
        finally:
            os._exit(1)
    listener.close()
    return pid, path


def _client(path: str) -> Callable[[], None]:
    def start() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.send(b"start true")
            assert s.recv(16) == b"0\n"
    return start


def _runuser() -> None:
    subprocess.run(["runuser", "-u", USER, "--", "true"], check=True)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    iso = isolation.enter()
    workdir = tempfile.mkdtemp(prefix="runas-agent-lean-", dir="/tmp")
    servers: list[int] = []
    daemon = None
    try:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "--", USER], check=True)
        variants: list[tuple[str, Callable[[], None]]] = [("runuser -u U -- true", _runuser)]
        for label, mode, image in (("direct", "direct", False), ("records", "records", False),
                                   ("supervisor", "supervisor", False),
                                   ("supervisor, agent's image", "supervisor", True)):
            pid, path = _start_server(workdir, mode, image)  # forked before what follows
            servers.append(pid)
            variants.append((label, _client(path)))
        from bench import harness

        daemon = harness.bench_daemon(workdir)  # the agent, as bench/run starts it
        ids = harness.Ids("lean")

        def agent() -> None:
            harness.agent_true(daemon.client, USER, ids.next())

        variants.insert(1, ("the agent (bench/run's `runas-agent`)", agent))
        samples: dict[str, list[float]] = {label: [] for label, _ in variants}
        for i in range(n + 20):
            for label, fn in variants:
                t = time.perf_counter()
                fn()
                took = time.perf_counter() - t
                if i >= 20:  # warm-up
                    samples[label].append(took)
        for pid in (daemon.pid, *servers):
            with open(f"/proc/{pid}/status") as fh:
                rss = next(ln for ln in fh if ln.startswith("VmRSS:")).split()[1]
            role = "the agent's daemon" if pid == daemon.pid else "server"
            print(f"{role} {pid}: RSS {int(rss) / 1024:.1f} MB")
        base = statistics.median(samples[variants[0][0]])
        for label, values in samples.items():
            p50 = statistics.median(values)
            print(f"{p50 * 1000:7.2f} ms  {p50 / base:5.2f} x runuser  {label}")
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.cleanup()
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
        subprocess.run(["userdel", "-r", "--", USER], capture_output=True, check=False)
        isolation.leave(iso)


if __name__ == "__main__":
    main()
