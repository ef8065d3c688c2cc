"""Attacks on the session's start path (the supervisor's steps around the exec gate), replayed
for real: real accounts, the real daemon, a real PAM stack in the test namespace.

- The session is listed as started once its shell is let through the exec gate, while the exec
  completes. When the exec then fails, the start is refused, but the refusal first undoes what
  the start did (the PAM session's close among them, which a module may make take seconds):
  all that time `sessions` listed as running a session that was refused, with the pid of a
  shell that never ran. A start refused after it was listed is unlisted first.
- The process that is to become the shell waits at the exec gate as the account already, so
  any process of the account may kill it there. The supervisor's word to go on then failed
  (EPIPE) with an error no step expects: the supervisor died on it, the client got no answer,
  and the audit log kept `session.started` without any end. A child gone at the gate is a
  failed spawn like any other.
- The supervisor looked for a `terminate` only before it wrote `session.started`, then let the
  shell through the gate: a terminate sent while that record was being made (an fsync, a lock
  another writer of the audit log holds) was applied only once the shell ran, so the command
  it was sent to stop ran anyway. The terminate is looked for again once the record is made:
  the start is refused `terminated`, and the record of a start that never ran is ended.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent import accounts
from agent.config import PolicyConfig
from agent.environ import build_env
from agent.errors import AgentError, SpawnFailed
from agent.platform.linux import Linux
from agent.spawn import SpawnPlan
from tests.conftest import BROKEN_SHELL_ACCOUNT, Users, broken_shell_account
from tests.support import spawning
from tests.support.daemon import REPO, DaemonProc, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
BROKEN = BROKEN_SHELL_ACCOUNT  # its shell cannot be exec'd (a missing interpreter)
CLOSE_SLOW = ("/bin/sleep", "3.25")  # its PAM session's close takes this long (pam_exec)


@contextlib.contextmanager
def _pam_daemon(*lines: str) -> Iterator[DaemonProc]:
    """A daemon with PAM on, its service the shipped one followed by LINES."""
    with open(SERVICE_FILE) as fh:
        service = fh.read()
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(service + "".join(lines))
    try:
        with running({"session": {"pam": True}}) as d:
            yield d
    finally:
        os.unlink("/etc/pam.d/runas-agent")


def _slow_closes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if tuple(p.info["cmdline"] or ()) == CLOSE_SLOW]


@pytest.fixture
def slow_close(users: Users) -> Iterator[DaemonProc]:
    broken_shell_account()
    try:
        with _pam_daemon(
                f"session [success=1 default=ignore] pam_succeed_if.so quiet user != {BROKEN}\n",
                f"session required pam_exec.so type=close_session {' '.join(CLOSE_SLOW)}\n") as d:
            yield d
    finally:
        for p in _slow_closes():
            p.kill()


def test_a_start_refused_after_its_exec_failed_is_never_listed(slow_close: DaemonProc) -> None:
    d = slow_close
    out: dict[str, Any] = {}

    def start() -> None:
        try:
            out["session"] = d.client.start(session_id="exec-fails", principal_arn="arn:x",
                                            tags={TAG: BROKEN}, run_as_enabled=True,
                                            command="true")
        except AgentError as exc:
            out["error"] = exc

    began = time.monotonic()
    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    listed: list[dict[str, Any]] = []
    while starter.is_alive():
        listed += [r for r in d.client.sessions() if r["id"] == "exec-fails"]
        time.sleep(0.02)
    starter.join()
    took = time.monotonic() - began
    assert "session" not in out, "a shell that cannot be exec'd started"
    assert out["error"].reason == "spawn_failed", out
    # The refusal waited for the PAM session's close: the window was there.
    assert took >= float(CLOSE_SLOW[1]) - 0.25, took
    assert d.wait_event("exec-fails", "session.denied")["reason"] == "spawn_failed"
    assert not listed, f"a refused start was listed as a running session: {listed[0]}"


@pytest.mark.parametrize("way", spawning.WAYS)
def test_a_child_the_account_kills_at_the_gate_is_a_failed_spawn(users: Users, way: str) -> None:
    acct = accounts.require(users.alice, PolicyConfig(), Linux())
    null = os.open("/dev/null", os.O_RDWR)
    plan = SpawnPlan(acct, "true", build_env(acct, term=None, client_env={}), null, null, null,
                     tty=False)
    went: list[int] = []

    def killed_by_the_account(pid: int) -> None:
        # The account's own process kills the child waiting at the gate (it may: same uid).
        uid = str(acct.uid)
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        "kill", "-KILL", str(pid)], check=True)
        deadline = time.monotonic() + 10
        while _state(pid) not in ("Z", None):
            assert time.monotonic() < deadline, "the child did not die"
            time.sleep(0.01)

    try:
        with pytest.raises(SpawnFailed):
            spawning.spawn_by(way)(plan, before_exec=killed_by_the_account,
                                   after_go=went.append)
    finally:
        os.close(null)
    assert went == [], "the session was listed although its child was gone at the gate"


def _state(pid: int) -> Any:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


# -- what a peer sends with its request, read as the connection is accepted ----------------------


def _frames(*msgs: dict[str, Any]) -> bytes:
    from agent import protocol

    return b"".join(protocol.encode(m) for m in msgs)


def _reply(sock: Any) -> dict[str, Any]:
    from agent import protocol

    dec = protocol.FrameDecoder()
    sock.settimeout(30)
    while True:
        data = sock.recv(65536)
        assert data, "the daemon closed the connection without a reply"
        dec.push(data)
        msg = dec.pop()
        if msg is not None:
            return msg


@pytest.mark.parametrize("split", ["one_write", "byte_by_byte"])
def test_a_start_sent_with_its_terminate_runs_nothing(users: Users, split: str) -> None:
    """A start and a terminate frame behind it, in the same write or trickled a byte at a
    time: the session is refused `terminated`, its command never runs."""
    import socket

    from agent import protocol

    marker = f"/var/lib/runas-test/attk-start-term-{split}"
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    os.chmod(os.path.dirname(marker), 0o1777)
    if os.path.exists(marker):
        os.unlink(marker)
    sid = f"start-term-{split.replace('_', '-')}"
    start = {"v": protocol.VERSION, "type": "start", "session_id": sid,
             "principal": {"arn": "arn:x", "tags": {TAG: users.bob}},
             "preferences": {"run_as_enabled": True}, "command": f"touch {marker}",
             "env": {}, "terminal": None}
    data = _frames(start, {"v": protocol.VERSION, "type": "terminate"},
                   {"v": protocol.VERSION, "type": "resize", "rows": 5, "cols": 5})
    with running() as d:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(d.socket)
            if split == "one_write":
                sock.sendall(data)
            else:
                for i in range(len(data)):
                    sock.sendall(data[i:i + 1])
            got = _reply(sock)
        finally:
            sock.close()
        assert got.get("reason") == "terminated", got
        assert d.wait_event(sid, "session.denied")["reason"] == "terminated"
        assert "session.started" not in d.events(sid)
        assert not os.path.exists(marker)


def test_a_list_with_a_frame_behind_it_is_refused(users: Users) -> None:
    import socket

    from agent import protocol

    with running() as d:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(d.socket)
            sock.sendall(_frames({"v": protocol.VERSION, "type": "list"},
                                 {"v": protocol.VERSION, "type": "ping"}))
            got = _reply(sock)
        finally:
            sock.close()
        assert got.get("reason") == "bad_request", got
        assert "one request per connection" in got["message"], got
        assert d.client.ping()["type"] == "pong"


# -- a terminate sent while session.started is being recorded ------------------------------------

PAM_SLOW = ("/bin/sleep", "1.75")  # the session stage's time, during which the test takes the lock


def _flock_waiters(path: str) -> int:
    ino = os.stat(path).st_ino
    with open("/proc/locks") as fh:
        return sum(1 for line in fh if "-> FLOCK" in line and f":{ino} " in line)


@pytest.fixture
def slow_open(users: Users) -> Iterator[DaemonProc]:
    try:
        with _pam_daemon(
                f"session [success=1 default=ignore] pam_succeed_if.so quiet user != {users.bob}\n",
                f"session required pam_exec.so type=open_session {' '.join(PAM_SLOW)}\n") as d:
            yield d
    finally:
        subprocess.run(["setpriv", f"--reuid={pwd.getpwnam(users.bob).pw_uid}",
                        f"--regid={pwd.getpwnam(users.bob).pw_gid}", "--clear-groups",
                        "kill", "-9", "-1"], capture_output=True)


def test_a_terminate_sent_while_the_start_is_recorded_runs_nothing(slow_open: DaemonProc,
                                                                   users: Users) -> None:
    """The audit log's lock is held (as another writer holds it while it appends) when the
    supervisor comes to record session.started; the client's terminate arrives meanwhile,
    before the shell was let through: the session is refused `terminated`, nothing runs."""
    import fcntl
    import socket

    from agent import protocol

    d = slow_open
    marker = "/var/lib/runas-test/attk-term-while-recorded"
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    os.chmod(os.path.dirname(marker), 0o1777)
    if os.path.exists(marker):
        os.unlink(marker)
    sid = "term-while-recorded"
    start = {"v": protocol.VERSION, "type": "start", "session_id": sid,
             "principal": {"arn": "arn:x", "tags": {TAG: users.bob}},
             "preferences": {"run_as_enabled": True}, "command": f"touch {marker}",
             "env": {}, "terminal": None}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lock = -1
    try:
        sock.connect(d.socket)
        sock.sendall(protocol.encode(start))
        deadline = time.monotonic() + 20
        while not any(tuple(p.info["cmdline"] or ()) == PAM_SLOW
                      for p in psutil.process_iter(["cmdline"])):
            assert time.monotonic() < deadline, "the session stage never ran"
            time.sleep(0.02)
        lock = os.open(d.audit_path, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX)
        while not _flock_waiters(d.audit_path):  # the supervisor, recording session.started
            assert time.monotonic() < deadline, "the supervisor never came to the record"
            time.sleep(0.02)
        sock.sendall(protocol.encode({"v": protocol.VERSION, "type": "terminate"}))
        time.sleep(0.2)  # (the frame is there before the lock is let go)
        os.close(lock)
        lock = -1
        got = _reply(sock)
    finally:
        if lock != -1:
            os.close(lock)
        sock.close()
    assert got.get("reason") == "terminated", got
    time.sleep(0.5)
    assert not os.path.exists(marker), "the command ran although it was terminated first"
    # session.started was on record when the terminate was seen: its end is on record too.
    ended = d.wait_event(sid, "session.ended")
    assert ended["reason"] == "terminated", ended
    assert d.events(sid) == ["session.requested", "session.started", "session.ended"]
