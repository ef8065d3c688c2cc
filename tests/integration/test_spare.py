"""The spare supervisor: forked by the daemon ahead of each start, handed the connection.

Real daemon, real accounts and shells in the isolated namespace. What is checked: one idle spare
at a time, reachable by nothing but the daemon; a session it takes over runs exactly as one the
daemon forks for itself; a spare that dies, is stopped or outlives its daemon never costs a
session or stays behind. Each spare forks its session's shell process ahead too: the shell is
that process, one that died is replaced by a fork, and it never outlives its spare. It also
opens its session's PTY ahead, which nobody but root can open until a PTY session takes it.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator

import pytest

from agent.errors import AgentError
from agent.server import SPARE_NAME
from tests.conftest import Users
from tests.support import load
from tests.support.daemon import DaemonProc, make_daemon, running
from tests.support.procio import drain

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"


@pytest.fixture
def daemon(users: Users) -> Iterator[DaemonProc]:
    with running() as d:
        yield d




def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in fh if ":" in line)}


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _socket_inodes(pid: int) -> list[int]:
    return [int(t[8:-1]) for t in load.fd_targets(pid) if t.startswith("socket:[")]


def _unix_peers() -> dict[int, int]:
    """inode -> peer inode of every connected Unix socket (ss -x)."""
    text = subprocess.run(["ss", "-xaH"], check=True, capture_output=True, text=True).stdout
    out = {}
    for line in text.splitlines():
        f = line.split()
        # Netid State Recv-Q Send-Q Local-Address Port Peer-Address Port
        if len(f) >= 8 and f[5].isdigit() and f[7].isdigit():
            out[int(f[5])] = int(f[7])
    return out


def _preforked_of(spare: int, timeout: float = 10) -> list[int]:
    """The spare's children: the process it forked ahead for its session's shell."""
    assert load.wait_until(lambda: len(load.all_children_of(spare)) == 1, timeout)
    return load.all_children_of(spare)


def _read_all(fd: int) -> bytes:
    (out,) = drain([fd])
    return out


def _fd_of(pid: int, inode: int) -> int:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
            return int(fd)
    raise AssertionError(f"no fd of {pid} is socket {inode}")


def _gone(pid: int) -> bool:
    """PID has exited (a zombie its new parent has not reaped yet counts as gone)."""
    try:
        return _stat(pid)[0] == "Z"
    except FileNotFoundError:
        return True


def _start(d: DaemonProc, user: str, sid: str, command: str) -> dict[str, object]:
    sess = load.start(d.client, user, sid, command)
    try:
        return sess.wait()
    finally:
        sess.close()


def test_one_idle_spare_reachable_only_by_the_daemon(daemon: DaemonProc, users: Users) -> None:
    # A connection that is open (no request yet) while a spare is forked must not be in it.
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(daemon.socket)
    try:
        first = daemon.spare()
        assert _start(daemon, users.bob, "spare-1", "true")["code"] == 0
        assert load.wait_until(lambda: load.spares_of(daemon.pid) not in ([], [first]), 10)
        spare = daemon.spare()
        assert spare != first
        st = _status(spare)
        assert st["Name"] == SPARE_NAME
        assert st["Uid"].split() == ["0"] * 4  # root, as any supervisor, and nothing else
        fields = _stat(spare)
        assert int(fields[1]) == daemon.pid  # ppid: the daemon's child (it reaps it)
        assert int(fields[3]) == spare  # its own session
        assert int(fields[2]) == spare  # and process group
        # Two sockets, both connected and unnamed: one to the daemon, one to the next shell's
        # process it forked ahead (its one child). No listener, no client connection: nothing
        # but the daemon can hand it anything.
        (child,) = _preforked_of(spare)
        peers = _unix_peers()
        mine = sorted(_socket_inodes(spare))
        assert len(mine) == 2
        assert sorted(peers.get(inode) in set(_socket_inodes(daemon.pid)) for inode in mine) \
            == [False, True]
        # The child: root, in the spare's session, every signal blocked, holding only stdio and
        # its end of the pair, whose peer is the spare's.
        (theirs,) = _socket_inodes(child)
        assert peers.get(theirs) in mine
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{child}/fd")) \
            == [0, 1, 2, _fd_of(child, theirs)]
        cst = _status(child)
        assert cst["Uid"].split() == ["0"] * 4
        standard = (1 << 31) - 1  # signals 1-31; KILL and STOP cannot be blocked
        assert int(cst["SigBlk"], 16) & standard == standard & ~(1 << 8) & ~(1 << 18)
        assert int(_stat(child)[3]) == spare
        assert load.spares_of(daemon.pid) == [spare]
        # Its rehearsal ran on this configuration without an error.
        assert "spare.rehearsal_failed" not in daemon.log()
        # (the session's supervisor is gone once it has recorded the end; the spare stays and
        # is not counted as a session)
        assert load.wait_until(lambda: load.children_of(daemon.pid) == [], 10)
        assert load.spares_of(daemon.pid) == [spare]
    finally:
        idle.close()


def test_a_handed_over_session_runs_as_one_the_daemon_forks(daemon: DaemonProc,
                                                              users: Users) -> None:
    spare = daemon.spare()
    (ahead,) = _preforked_of(spare)
    sess = load.start(daemon.client, users.alice, "spare-held", "sleep 30")
    try:
        started = sess.info
        # The session's shell is the process the spare forked ahead: no fork on the start's path.
        assert started["pid"] == ahead
        assert _status(ahead)["Uid"].split() == [str(pwd.getpwnam(users.alice).pw_uid)] * 4
        rec = next(r for r in daemon.client.sessions() if r["id"] == "spare-held")
        # The spare became the session's supervisor: listed under its pid, the daemon's
        # child, its process name back to the daemon's.
        assert rec["pid"] == spare
        # (the next spare, just forked, has the daemon's name until it renames itself)
        assert load.wait_until(lambda: load.children_of(daemon.pid) == [spare], 10)
        assert _status(spare)["Name"] != SPARE_NAME
        assert started["user"] == users.alice
        # The connection it was handed is close-on-exec, as accept() makes it.
        for fd in os.listdir(f"/proc/{spare}/fd"):
            if os.readlink(f"/proc/{spare}/fd/{fd}").startswith("socket:"):
                with open(f"/proc/{spare}/fdinfo/{fd}") as fh:
                    flags = int(next(x for x in fh if x.startswith("flags:")).split()[1], 8)
                assert flags & os.O_CLOEXEC, fd
        assert daemon.events("spare-held") == ["session.requested", "session.started"]
        daemon.client.terminate("spare-held")
        assert sess.wait()["reason"] == "terminated"
    finally:
        sess.close()
    assert daemon.events("spare-held") == ["session.requested", "session.started",
                                           "session.terminate_requested", "session.ended"]
    assert load.wait_until(lambda: not load.children_of(daemon.pid), 10)


def test_control_frames_sent_with_the_start_reach_the_spare(daemon: DaemonProc,
                                                            users: Users) -> None:
    """The bytes that followed the start request in the daemon's buffer go with the handover:
    a terminate written in the same send as the start ends the session before its shell."""
    from agent import protocol

    daemon.spare()
    start = {"v": protocol.VERSION, "type": "start", "session_id": "spare-early",
             "principal": {"arn": "arn:spare", "tags": {TAG: users.bob}},
             "preferences": {"run_as_enabled": True}, "command": "touch /tmp/spare-early",
             "env": {}, "terminal": None}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(daemon.socket)
    try:
        terminate = {"v": protocol.VERSION, "type": "terminate"}
        conn.sendall(protocol.encode(start) + protocol.encode(terminate))
        conn.settimeout(10)
        decoder = protocol.FrameDecoder()
        msgs: list[dict[str, object]] = []
        while not msgs:
            data = conn.recv(65536)
            assert data
            msgs = decoder.feed(data)
    finally:
        conn.close()
    assert msgs[0]["type"] == "error", msgs
    assert msgs[0]["reason"] == "terminated", msgs
    assert daemon.events("spare-early") == ["session.requested", "session.denied"]
    assert not os.path.exists("/tmp/spare-early")


def test_a_spare_that_dies_is_replaced_and_sessions_still_start(daemon: DaemonProc,
                                                                 users: Users) -> None:
    spare = daemon.spare()
    os.kill(spare, signal.SIGKILL)
    assert load.wait_until(lambda: load.spares_of(daemon.pid) == [], 10)
    # Logged when the daemon reaps it, which may come just after the test sees it gone.
    assert load.wait_until(lambda: "spare.died" in daemon.log(), 10), daemon.log()
    # The next start forks its own supervisor; a new spare follows it.
    assert _start(daemon, users.bob, "after-death", "true")["code"] == 0
    assert daemon.spare() != spare
    assert _start(daemon, users.bob, "after-death-2", "true")["code"] == 0
    for sid in ("after-death", "after-death-2"):
        assert daemon.events(sid) == ["session.requested", "session.started", "session.ended"]


@pytest.mark.parametrize(("how", "signum", "state"), [("died", signal.SIGKILL, "Z"),
                                                      ("stopped", signal.SIGSTOP, "T")])
def test_a_process_forked_ahead_that_died_or_stopped_is_replaced_by_a_fork(
        daemon: DaemonProc, users: Users, how: str, signum: int, state: str) -> None:
    """A process that died, or is stopped (it would never read its plan), is not waited on:
    the start forks the shell's process as if none had been forked ahead, and lets it go."""
    spare = daemon.spare()
    (ahead,) = _preforked_of(spare)
    os.kill(ahead, signum)
    assert load.wait_until(lambda: _stat(ahead)[0] == state, 10)
    sid = f"ahead-{how}"
    sess = load.start(daemon.client, users.bob, sid, "echo ran")
    try:
        assert sess.info["pid"] != ahead
        assert sess.stdout is not None
        assert _read_all(sess.stdout) == b"ran\n"
        assert sess.wait()["code"] == 0
    finally:
        sess.close()
    if how == "died":
        assert not os.path.exists(f"/proc/{ahead}")  # reaped, not left a zombie
    else:
        assert load.wait_until(lambda: not os.path.exists(f"/proc/{ahead}"), 10)  # killed
    assert daemon.events(sid) == ["session.requested", "session.started", "session.ended"]


def test_signals_the_process_forked_ahead_got_while_waiting_never_reach_its_session(
        daemon: DaemonProc, users: Users) -> None:
    """Signals sent to the waiting process (blocked there, so kept pending even where its
    disposition was to ignore them) were sent before it was any session's: the session starts
    without them, as a process forked at the start would."""
    spare = daemon.spare()
    (ahead,) = _preforked_of(spare)
    sent = (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGRTMIN + 2)
    for signum in sent:
        os.kill(ahead, signum)
    want = sum(1 << (s - 1) for s in sent)
    assert load.wait_until(lambda: int(_status(ahead)["ShdPnd"], 16) & want == want, 10)
    sess = load.start(daemon.client, users.bob, "ahead-signalled",
                      "grep -E '^(SigPnd|ShdPnd):' /proc/$$/status")
    try:
        assert sess.info["pid"] == ahead  # that process is the shell, and it ran
        assert sess.stdout is not None
        assert _read_all(sess.stdout) == b"SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n"
        assert sess.wait()["code"] == 0
    finally:
        sess.close()
    assert daemon.events("ahead-signalled") == ["session.requested", "session.started",
                                                "session.ended"]


def test_a_denied_start_lets_the_process_forked_ahead_go(daemon: DaemonProc,
                                                         users: Users) -> None:
    spare = daemon.spare()
    (ahead,) = _preforked_of(spare)
    with pytest.raises(AgentError):
        _start(daemon, users.missing, "ahead-denied", "true")
    assert load.wait_until(lambda: not os.path.exists(f"/proc/{ahead}"), 10)
    assert daemon.events("ahead-denied") == ["session.requested", "session.denied"]


def test_the_spare_opens_its_sessions_pty_ahead_for_root_alone(daemon: DaemonProc,
                                                               users: Users) -> None:
    """A spare holds the next session's PTY: until a session takes it, its slave is root's
    alone (mode 0600: no account can open it or write to it). A PTY session gets that very
    terminal, given to its account as a PTY opened at the start is; a session without a
    terminal closes it."""
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    st = os.stat(tty)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    opened = subprocess.run(["runuser", "-u", users.bob, "--", "sh", "-c", f"exec 3<>{tty}"],
                            capture_output=True, text=True, check=False)
    assert opened.returncode != 0
    assert "Permission denied" in opened.stderr
    sess = load.start(daemon.client, users.bob, "pty-ahead", "sleep 30", ("xterm", 24, 80))
    try:
        assert sess.info["tty"] == tty
        st = os.stat(tty)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            pwd.getpwnam(users.bob).pw_uid, grp.getgrnam("tty").gr_gid, 0o620)
    finally:
        sess.close()
    # The next spare has a PTY of its own; a session without a terminal closes it at once.
    spare = daemon.spare()
    tty = load.pty_ahead_of(spare)
    sess = load.start(daemon.client, users.bob, "pty-ahead-pipes", "sleep 30")
    try:
        assert sess.info["tty"] is None
        assert load.terminals_of(spare) == []  # the session's supervisor, live
    finally:
        sess.close()


def test_a_stopped_spare_exits_without_a_trace(daemon: DaemonProc, users: Users) -> None:
    spare = daemon.spare()
    (ahead,) = _preforked_of(spare)
    audit_before = len(daemon.audit())
    os.kill(spare, signal.SIGTERM)
    assert load.wait_until(lambda: load.spares_of(daemon.pid) == [], 10)
    assert load.wait_until(lambda: not os.path.exists(f"/proc/{ahead}"), 10)
    assert len(daemon.audit()) == audit_before
    assert not os.path.exists(daemon.state_dir) or os.listdir(daemon.state_dir) == []
    assert _start(daemon, users.bob, "after-term", "true")["code"] == 0


def test_a_reload_replaces_the_spare(daemon: DaemonProc) -> None:
    spare = daemon.spare()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert load.wait_until(lambda: load.spares_of(daemon.pid) not in ([], [spare]), 10)
    assert load.wait_until(lambda: _gone(spare), 10)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_spare_does_not_outlive_its_daemon(users: Users, how: int) -> None:
    d = make_daemon()
    d.start()
    try:
        sess = load.start(d.client, users.bob, "outlive", "sleep 30")
        spare = d.spare()
        (ahead,) = _preforked_of(spare)
        supervisor = load.children_of(d.pid)
        assert d.stop(how) is not None
        assert load.wait_until(lambda: _gone(spare), 10)
        assert load.wait_until(lambda: _gone(ahead), 10)
        # The session's supervisor lives on and still ends the session on record.
        assert supervisor
        assert not any(_gone(p) for p in supervisor)
        sess.close()  # a hang-up
        d.wait_event("outlive", "session.ended")
        with pytest.raises((AgentError, OSError)):
            d.client.ping()
    finally:
        d.stop()
        d.cleanup()
