"""docs/protocol.md, checked from the wire: a raw-socket client written from the specification
alone (not agent/client.py), against the real daemon, real accounts and real shells.

bob's shell is /bin/sh, so `sleep` in a command that goes on after it is a second process in the
session's group: the case where the end of a session has to wait for more than the shell.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from tests.conftest import REPO, Users
from tests.support.daemon import DaemonProc, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
# The specification asks for 50 ms between the session's processes being gone and the `exit`
# frame; the bound here leaves room for a loaded 2-core machine. bench/run reports the real
# figures.
END_BOUND = 0.2
GRACE = 5.0  # long, so an end that waits for the grace period shows


# -- the raw client ---------------------------------------------------------------------------


def frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def start_msg(sid: str, user: str, command: Optional[str] = None,
              terminal: Optional[tuple[str, int, int]] = None, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": 1, "type": "start", "session_id": sid,
        "principal": {"arn": "arn:aws:iam::1:role/conformance", "tags": {TAG: user}},
        "preferences": {"run_as_enabled": True}, "command": command,
    }
    if terminal is not None:
        msg["terminal"] = {"term": terminal[0], "rows": terminal[1], "cols": terminal[2]}
    msg.update(extra)
    return msg


class Wire:
    """One connection: frames in, frames (and SCM_RIGHTS descriptors) out."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.fds: list[int] = []
        self.eof = False

    def send(self, *msgs: dict[str, Any], raw: bytes = b"") -> None:
        self.sock.sendall(b"".join(frame(m) for m in msgs) + raw)

    def read(self, timeout: float = 15) -> Optional[dict[str, Any]]:
        """The next frame, or None at end of stream (EOF or ECONNRESET)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return dict(json.loads(body))
            if self.eof:
                return None
            left = deadline - time.monotonic()
            assert left > 0, f"no frame within {timeout} s"
            if not select.select([self.sock], [], [], left)[0]:
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            except ConnectionResetError:
                data, fds = b"", []
            self.fds.extend(fds)
            if not data:
                self.eof = True
            self.buf += data

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.sock.close()


@pytest.fixture
def wires(users: Users) -> Iterator[list[Wire]]:
    opened: list[Wire] = []
    yield opened
    for w in opened:
        w.close()


@pytest.fixture(scope="module")
def daemon(users: Users) -> Iterator[DaemonProc]:
    with running({"session": {"grace_period": GRACE}}) as d:
        yield d


def connect(d: DaemonProc, wires: list[Wire]) -> Wire:
    w = Wire(d.socket)
    wires.append(w)
    return w


def started(w: Wire) -> dict[str, Any]:
    msg = w.read()
    assert msg is not None, "no reply"
    assert msg["type"] == "started", msg
    return msg


def read_until(fd: int, needle: bytes, timeout: float = 15) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, out
        if select.select([fd], [], [], left)[0]:
            chunk = read_chunk(fd)
            assert chunk, out
            out += chunk
    return out


def read_chunk(fd: int) -> bytes:
    """Read output; a PTY master whose terminal is closed on every side gives EIO (Linux),
    which is its end of file."""
    try:
        return os.read(fd, 65536)
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return b""


def group_pidfds(pgid: int, at_least: int, timeout: float = 10) -> list[int]:
    """pidfds of the processes in process group PGID once it has AT_LEAST of them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    pids.append(int(name))
        if len(pids) >= at_least:
            out = []
            for pid in pids:
                try:
                    out.append(os.pidfd_open(pid))
                except ProcessLookupError:
                    pass
            return out
        assert time.monotonic() < deadline, pids
        time.sleep(0.01)


def end_latency(w: Wire, pidfds: list[int], timeout: float = 15) -> tuple[dict[str, Any], float]:
    """Wait for the `exit` frame (or the end of the stream) and for every process in PIDFDS
    to exit; returns the frame and how long after the last process exited it came."""
    gone: dict[int, float] = {}
    got: Optional[float] = None
    msg: Optional[dict[str, Any]] = None
    deadline = time.monotonic() + timeout
    try:
        while got is None or len(gone) < len(pidfds):
            watch = [fd for fd in pidfds if fd not in gone]
            if got is None:
                watch.append(w.sock.fileno())
            left = deadline - time.monotonic()
            assert left > 0, (gone, got)
            ready, _, _ = select.select(watch, [], [], left)
            now = time.monotonic()
            for fd in ready:
                if fd == w.sock.fileno():
                    msg = w.read()
                    got = now
                else:
                    gone[fd] = now
    finally:
        for fd in pidfds:
            os.close(fd)
    assert got is not None
    return msg or {}, got - max(gone.values(), default=got)


def wait_unlisted(d: DaemonProc, sid: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(s["id"] == sid for s in d.client.sessions()):
        assert time.monotonic() < deadline, sid
        time.sleep(0.01)


def supervisor_pidfd(d: DaemonProc, sid: str) -> int:
    (rec,) = [s for s in d.client.sessions() if s["id"] == sid]
    return os.pidfd_open(int(rec["pid"]))


# -- 1. a session ends promptly -----------------------------------------------------------------

FORKING = "echo ready; sleep 30; echo never"  # /bin/sh forks sleep: two processes in the group


@pytest.mark.parametrize("how", ["control", "request"])
def test_terminate_reports_the_exit_promptly(daemon: DaemonProc, users: Users,
                                             wires: list[Wire], how: str) -> None:
    sid = f"end-term-{how}"
    w = connect(daemon, wires)
    w.send(start_msg(sid, users.bob, FORKING))
    st = started(w)
    read_until(w.fds[1], b"ready")
    pidfds = group_pidfds(st["pid"], 2)
    t0 = time.monotonic()
    if how == "control":
        w.send({"v": 1, "type": "terminate"})
    else:
        r = connect(daemon, wires)
        r.send({"v": 1, "type": "terminate", "session_id": sid})
        assert r.read() == {"v": 1, "type": "ok", "session_id": sid}
    msg, lag = end_latency(w, pidfds)
    assert (msg["type"], msg["reason"]) == ("exit", "terminated"), msg
    assert (msg["code"], msg["signal"]) == (None, 1)  # the shell was hung up
    assert lag < END_BOUND, lag
    assert time.monotonic() - t0 < 1.0
    assert w.read() is None  # then the connection closes
    assert sid not in [s["id"] for s in daemon.client.sessions()]


def test_hangup_ends_the_session_promptly(daemon: DaemonProc, users: Users,
                                          wires: list[Wire]) -> None:
    sid = "end-hangup"
    w = connect(daemon, wires)
    w.send(start_msg(sid, users.bob, FORKING))
    st = started(w)
    read_until(w.fds[1], b"ready")
    pidfds = group_pidfds(st["pid"], 2)
    sup = supervisor_pidfd(daemon, sid)
    w.close()
    # The supervisor exits once the end is recorded and the session unlisted.
    sup_gone: list[float] = []
    gone: list[float] = []
    try:
        while len(gone) < len(pidfds) or not sup_gone:
            ready, _, _ = select.select([*pidfds, sup], [], [], 15)
            assert ready
            now = time.monotonic()
            for fd in ready:
                if fd == sup:
                    sup_gone.append(now)
                    sup = -1
                elif fd in pidfds:
                    gone.append(now)
                    pidfds.remove(fd)
                    os.close(fd)
    finally:
        for fd in pidfds:
            os.close(fd)
        if sup != -1:
            os.close(sup)
    assert sup_gone[0] - max(gone) < END_BOUND, sup_gone[0] - max(gone)
    assert sid not in [s["id"] for s in daemon.client.sessions()]
    assert daemon.wait_event(sid, "session.ended")["reason"] == "hangup"


def test_a_session_that_ends_by_itself_reports_at_once(daemon: DaemonProc, users: Users,
                                                       wires: list[Wire]) -> None:
    # The shell exits; its background job is hung up with the group.
    w = connect(daemon, wires)
    w.send(start_msg("end-self", users.bob, "sleep 30 & echo ready; read x; exit 3"))
    st = started(w)
    read_until(w.fds[1], b"ready")
    pidfds = group_pidfds(st["pid"], 2)
    os.write(w.fds[0], b"go\n")
    msg, lag = end_latency(w, pidfds)
    assert (msg["reason"], msg["code"], msg["signal"]) == ("exited", 3, None)
    assert lag < END_BOUND, lag


@pytest.mark.parametrize("limit", ["max_duration", "idle_timeout"])
def test_limits_end_sessions_promptly(users: Users, wires: list[Wire], limit: str) -> None:
    with running({"session": {limit: 1.0, "grace_period": GRACE}}) as d:
        w = connect(d, wires)
        w.send(start_msg(f"end-{limit}", users.bob, FORKING, terminal=("xterm", 24, 80)))
        st = started(w)
        read_until(w.fds[0], b"ready")
        pidfds = group_pidfds(st["pid"], 2)
        msg, lag = end_latency(w, pidfds)
        assert (msg["reason"], msg["code"], msg["signal"]) == (limit, None, 1)
        assert lag < END_BOUND, lag


def test_cli_returns_promptly_after_ctrl_c(daemon: DaemonProc, users: Users) -> None:
    """`runas-agent session -t` on a terminal: ^C reaches the session's foreground job; the
    CLI returns as soon as the session is over."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "session", "--socket", daemon.socket, "-t",
         "--run-as", "--tag", f"{TAG}={users.bob}", "--",
         "sh", "-c", "echo ready; sleep 30; echo never"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TERM": "xterm"}, cwd=REPO)
    os.close(slave)
    try:
        read_until(master, b"ready")
        t0 = time.monotonic()
        os.write(master, b"\x03")
        proc.wait(15)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 128 + 2  # the command was killed by SIGINT
    assert took < 0.5, took  # the specification asks for 100 ms; bench/run measures it


