"""The PAM process (agent.pam.open_login: a root process per session that holds the PAM handle
and runs pam_close_session at the end) dying early is noticed by the session's supervisor and
put on record, never passed over: `session.ended` says whether PAM closed the session
(`pam_closed`, and `pam_error` when it did not), and the daemon's log says so as it happens. A
PAM process that dies before the session stage has opened the session refuses the start.
Replayed for real: the shipped PAM service, a real daemon, kill -9 of the real PAM process."""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent.errors import AgentError
from tests.conftest import Users
from tests.support.daemon import REPO, DaemonProc, read_until, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
KILL_PARENT = "/etc/runas-agent-test-kill-pam-process"
PROBE = "echo READY; read line || true"


@pytest.fixture
def daemon(request: pytest.FixtureRequest, users: Users) -> Iterator[DaemonProc]:
    """The shipped PAM service (with, when the test's parameter says so, a last session module
    that kills the PAM process from inside pam_open_session) and a daemon with PAM on."""
    with open(SERVICE_FILE) as fh:
        service = fh.read()
    if getattr(request, "param", "") == "killed-in-open":
        with open(KILL_PARENT, "w") as fh:
            fh.write("#!/bin/sh\nkill -9 \"$PPID\"\nsleep 1\n")
        os.chmod(KILL_PARENT, 0o700)
        service += f"session   required    pam_exec.so {KILL_PARENT}\n"
    elif getattr(request, "param", "") == "killed-in-close":
        with open(KILL_PARENT, "w") as fh:
            fh.write("#!/bin/sh\nkill -9 \"$PPID\"\nsleep 1\n")
        os.chmod(KILL_PARENT, 0o700)
        service += f"session   required    pam_exec.so type=close_session {KILL_PARENT}\n"
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(service)
    try:
        with running({"session": {"pam": True}}) as d:
            yield d
    finally:
        for path in ("/etc/pam.d/runas-agent", KILL_PARENT):
            if os.path.exists(path):
                os.unlink(path)


def _start_as_alice(d: DaemonProc, users: Users, sid: str) -> Any:
    """A session as alice running PROBE (its shell prints READY, then waits for input)."""
    return d.client.start(session_id=sid, principal_arn="arn:aws:iam::1:role/A",
                          tags={TAG: users.alice}, run_as_enabled=True, command=PROBE)


def _ends_with_pam_closed(d: DaemonProc, sess: Any, sid: str) -> None:
    """SESS's shell printed READY; once it is closed, the session's end says PAM was closed."""
    try:
        assert sess.stdout is not None
        read_until(sess.stdout, b"READY\n")
    finally:
        sess.close()
    assert d.wait_event(sid, "session.ended")["pam_closed"] is True


def _session(d: DaemonProc, users: Users, sid: str, *,
             kill_pam: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A live session as alice; with KILL_PAM its PAM process is killed (SIGKILL) while the
    session runs. Then the session ends (stdin closed): its exit and its session.ended."""
    sess = _start_as_alice(d, users, sid)
    try:
        assert sess.stdout is not None
        assert sess.stdin is not None
        read_until(sess.stdout, b"READY\n")
        (record,) = [s for s in d.client.sessions() if s["id"] == sid]
        (pam_process,) = [p for p in psutil.Process(record["pid"]).children()
                          if p.pid != record["shell_pid"]]
        assert pam_process.uids().real == 0
        if kill_pam:
            pam_process.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + 20  # the supervisor reaps it: no zombie stays
            while pam_process.is_running() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not pam_process.is_running()
        os.close(sess.stdin)
        sess.stdin = None
        status = sess.wait()
    finally:
        sess.close()
    return status, d.wait_event(sid, "session.ended")


def _log_events(d: DaemonProc) -> list[dict[str, Any]]:
    with open(d.log_path) as fh:
        return [json.loads(line) for line in fh if line.startswith("{")]


def test_a_session_whose_pam_process_was_killed_says_pam_did_not_close_it(
        daemon: DaemonProc, users: Users) -> None:
    status, ended = _session(daemon, users, "pam-killed", kill_pam=True)
    assert status.get("code") == 0, status  # the session itself ran to its end
    assert ended["pam_closed"] is False, ended
    assert "killed by signal 9" in ended["pam_error"], ended
    assert "pam_close_session did not run" in ended["pam_error"], ended
    logged = [r for r in _log_events(daemon) if r.get("session_id") == "pam-killed"]
    (early,) = [r for r in logged if r["event"] == "session.pam_process_ended"]
    assert early["level"] == "warning", early
    assert early["status"] == "killed by signal 9", early
    assert [r for r in logged if r["event"] == "session.pam_not_closed"], logged


def test_a_session_whose_pam_process_lived_says_pam_closed_it(
        daemon: DaemonProc, users: Users) -> None:
    status, ended = _session(daemon, users, "pam-lived", kill_pam=False)
    assert status.get("code") == 0, status
    assert ended["pam_closed"] is True, ended
    assert "pam_error" not in ended
    assert not [r for r in _log_events(daemon) if r.get("session_id") == "pam-lived"
                and r["event"] in ("session.pam_process_ended", "session.pam_not_closed")]


@pytest.mark.parametrize("daemon", ["killed-in-open"], indirect=True)
def test_a_pam_process_killed_while_opening_the_session_refuses_the_start(
        daemon: DaemonProc, users: Users) -> None:
    ran = os.path.join(pwd.getpwnam(users.alice).pw_dir, "pam-open-killed-ran")
    with pytest.raises(AgentError) as refused:
        daemon.client.start(session_id="pam-open-killed", principal_arn="arn:aws:iam::1:role/A",
                            tags={TAG: users.alice}, run_as_enabled=True,
                            command=f"touch {ran}")
    assert refused.value.reason == "pam_failed", refused.value
    events = daemon.events("pam-open-killed")
    assert "session.started" not in events, events
    assert "session.denied" in events, events
    assert not os.path.exists(ran)
    assert daemon.client.sessions() == []


# The session's own account against its PAM process: a root process it must not be able to end
# early (pam_close_session would not run), stop or read.
ATTACK = r"""
for p in $(cat /proc/$PPID/task/*/children); do
  [ "$p" = "$$" ] && continue
  grep '^Uid:' /proc/$p/status | tr '\t' ' '
  kill -0 "$p" 2>/dev/null && echo "SIGNAL $p ok" || echo "SIGNAL $p refused"
  kill -STOP "$p" 2>/dev/null && echo "STOP $p ok"
  kill -KILL "$p" 2>/dev/null && echo "KILL $p ok"
  head -c1 /proc/$p/environ >/dev/null 2>&1 && echo "ENVIRON $p read"
  head -c1 /proc/$p/mem >/dev/null 2>&1 && echo "MEM $p read"
done
kill -KILL -1 2>/dev/null
echo DONE
"""


def test_the_sessions_account_cannot_signal_or_read_its_pam_process(
        daemon: DaemonProc, users: Users) -> None:
    """From inside the session, alice finds her PAM process (her supervisor's other child) and
    tries to signal, stop, kill and read it, then kills all she may (kill -1): each refused,
    and PAM closes the session at its end."""
    sess = daemon.client.start(session_id="pam-own-kill", principal_arn="arn:aws:iam::1:role/A",
                               tags={TAG: users.alice}, run_as_enabled=True, command=ATTACK)
    try:
        assert sess.stdout is not None
        out = b""
        deadline = time.monotonic() + 20
        while b"DONE" not in out and time.monotonic() < deadline:
            if select.select([sess.stdout], [], [], 1)[0]:
                chunk = os.read(sess.stdout, 65536)
                if not chunk:
                    break
                out += chunk
        status = sess.wait()
    finally:
        sess.close()
    text = out.decode()
    assert "refused" in text, text  # it found its PAM process
    assert "DONE" in text, text
    assert "Uid: 0 0 0 0" in text, text  # real, effective, saved, fs: root, PAM done
    assert " ok" not in text, text
    assert " read" not in text, text
    ended = daemon.wait_event("pam-own-kill", "session.ended")
    assert ended["pam_closed"] is True, (ended, status, text)


@pytest.mark.parametrize("daemon", ["killed-in-close"], indirect=True)
def test_a_pam_process_killed_while_closing_the_session_says_pam_did_not_close_it(
        daemon: DaemonProc, users: Users) -> None:
    """Killed in the middle of pam_close_session (a close module kills it): not a clean close,
    and session.ended says so."""
    status, ended = _session(daemon, users, "pam-close-killed", kill_pam=False)
    assert status.get("code") == 0, status
    assert ended["pam_closed"] is False, ended
    assert "-9" in ended["pam_error"] or "signal 9" in ended["pam_error"], ended


GATE_MARK = "/run/runas-agent-test-pam-gate"
GATE_SCRIPT = "/etc/runas-agent-test-pam-gate"
GATE_CODE = """if True:
    import json, os, pwd, sys
    from agent import pam

    user, give_up = sys.argv[1], sys.argv[2] == "give-up"
    def before():
        if give_up:
            raise RuntimeError("given up")
    try:
        opened = pam.open_login("runas-agent", user, pwd.getpwnam(user).pw_gid, before=before)
    except RuntimeError as exc:
        children = [p for p in os.listdir("/proc") if p.isdigit()
                    and open(f"/proc/{p}/stat").read().rpartition(")")[2].split()[1]
                    == str(os.getpid())]
        print(json.dumps({"raised": str(exc), "children": children}))
    else:
        opened.close()
        print(json.dumps({"raised": None, "children": []}))
"""


@pytest.mark.parametrize("give_up", [False, True])
def test_a_start_given_up_while_the_pam_process_prepares_runs_no_pam(
        users: Users, give_up: bool) -> None:
    """open_login's BEFORE (the supervisor making session.requested durable) runs while the
    PAM process prepares itself. When it fails, that process is killed and reaped before it
    called anything of libpam: no stage ran (a pam_exec account module, first in the stack,
    leaves no mark). When it returns, PAM runs (the mark is there)."""
    with open(SERVICE_FILE) as fh:
        service = fh.read()
    with open(GATE_SCRIPT, "w") as fh:
        fh.write(f"#!/bin/sh\ntouch {GATE_MARK}\n")
    os.chmod(GATE_SCRIPT, 0o700)
    service = service.replace("account   required    pam_nologin.so",
                              f"account   required    pam_exec.so {GATE_SCRIPT}\n"
                              "account   required    pam_nologin.so", 1)
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(service)
    try:
        out = subprocess.run([sys.executable, "-c", GATE_CODE, users.alice,
                              "give-up" if give_up else "go"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=True)
        got = json.loads(out.stdout)
        if give_up:
            assert got == {"raised": "given up", "children": []}
            assert not os.path.exists(GATE_MARK)
        else:
            assert got["raised"] is None
            assert os.path.exists(GATE_MARK)
    finally:
        for path in ("/etc/pam.d/runas-agent", GATE_SCRIPT, GATE_MARK):
            if os.path.exists(path):
                os.unlink(path)


def _spare_children(d: DaemonProc, want: int = 2) -> list[int]:
    """The daemon's idle spare's children (the shell's and the PAM process, forked ahead)."""
    from tests.support import load

    assert d.proc is not None
    daemon_pid = d.proc.pid

    def ready() -> bool:
        spares = load.spares_of(daemon_pid)
        return len(spares) == 1 and len(load.all_children_of(spares[0])) == want

    assert load.wait_until(ready, 10), load.all_children_of(daemon_pid)
    (spare,) = load.spares_of(daemon_pid)
    return sorted(load.all_children_of(spare))


def _blocked(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(x for x in fh if x.startswith("SigBlk:")).split()[1], 16)


def _live_with_pam(d: DaemonProc, users: Users, sid: str) -> tuple[Any, dict[str, Any], int]:
    """A live session as alice (its shell has printed READY): the session, its registry record
    and its PAM process's pid (the supervisor's child that is not the shell)."""
    sess = _start_as_alice(d, users, sid)
    try:
        assert sess.stdout is not None
        read_until(sess.stdout, b"READY\n")
        (record,) = [s for s in d.client.sessions() if s["id"] == sid]
        (pam_process,) = [p.pid for p in psutil.Process(record["pid"]).children()
                          if p.pid != record["shell_pid"]]
    except BaseException:
        sess.close()
        raise
    return sess, record, pam_process


def test_the_pam_process_is_the_one_the_spare_forked_ahead(daemon: DaemonProc,
                                                           users: Users) -> None:
    ahead = _spare_children(daemon)
    (pam_ahead,) = [p for p in ahead if _blocked(p) == 0]  # the shell's blocks every signal
    # Idle: root, holding stdio and its two pipes only, PAM not begun.
    fds = os.listdir(f"/proc/{pam_ahead}/fd")
    assert sorted(int(f) for f in fds)[:3] == [0, 1, 2]
    assert len(fds) == 5
    assert all(os.readlink(f"/proc/{pam_ahead}/fd/{f}").startswith("pipe:")
               for f in fds if int(f) > 2)
    assert psutil.Process(pam_ahead).uids().real == 0
    sess, record, pam_process = _live_with_pam(daemon, users, "pam-ahead")
    try:
        assert sorted([pam_process, record["shell_pid"]]) == ahead
    finally:
        sess.close()
    ended = daemon.wait_event("pam-ahead", "session.ended")
    assert ended["pam_closed"] is True


def test_a_pam_process_forked_ahead_that_died_is_replaced(daemon: DaemonProc,
                                                          users: Users) -> None:
    (pam_ahead,) = [p for p in _spare_children(daemon) if _blocked(p) == 0]
    os.kill(pam_ahead, signal.SIGKILL)
    _ends_with_pam_closed(daemon, _start_as_alice(daemon, users, "pam-ahead-died"),
                          "pam-ahead-died")
    assert not os.path.exists(f"/proc/{pam_ahead}")  # reaped, not left a zombie


def test_a_denied_start_lets_the_processes_forked_ahead_go(daemon: DaemonProc,
                                                           users: Users) -> None:
    from tests.support import load

    ahead = _spare_children(daemon)
    with pytest.raises(AgentError):
        daemon.client.start(session_id="pam-ahead-denied", principal_arn="a",
                            tags={TAG: users.missing}, run_as_enabled=True, command="true")
    assert load.wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in ahead), 10)


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as fh:
        return fh.read().rstrip("\n")


def test_a_live_sessions_pam_process_forked_ahead_is_no_idle_spare_by_name(
        daemon: DaemonProc, users: Users) -> None:
    """`runas-spare` in ps is an idle spare (or its shell's process until it execs): the PAM
    process of a live session, forked ahead in a spare, carries its supervisor's name, as one
    forked at the start does, so nothing that goes by the name takes it for an idle spare."""
    (pam_ahead,) = [p for p in _spare_children(daemon) if _blocked(p) == 0]
    assert _comm(pam_ahead) == "runas-spare"  # idle, it is the spare's
    sess, record, pam_process = _live_with_pam(daemon, users, "pam-ahead-name")
    try:
        assert pam_process == pam_ahead
        assert _comm(pam_process) == _comm(record["pid"]) != "runas-spare"
    finally:
        sess.close()
    ended = daemon.wait_event("pam-ahead-name", "session.ended")
    assert ended["pam_closed"] is True


@pytest.mark.parametrize("signum", [signal.SIGSTOP, signal.SIGHUP, signal.SIGTERM,
                                    signal.SIGINT, signal.SIGUSR1])
def test_a_signalled_pam_process_forked_ahead_neither_stalls_nor_fails_a_start(
        daemon: DaemonProc, users: Users, signum: int) -> None:
    """Stopped: killed and replaced by a fork; HUP, INT, TERM: ignored; any other: it died
    and is replaced. The start runs PAM in either case, at once."""
    (pam_ahead,) = [p for p in _spare_children(daemon) if _blocked(p) == 0]
    os.kill(pam_ahead, signum)
    if signum == signal.SIGSTOP:
        from tests.support import load

        assert load.wait_until(lambda: psutil.Process(pam_ahead).status() == "stopped", 10)
    sid = f"pam-ahead-sig{int(signum)}"
    started = time.monotonic()
    sess = _start_as_alice(daemon, users, sid)
    try:
        assert sess.stdout is not None
        read_until(sess.stdout, b"READY\n")
        assert time.monotonic() - started < 10
        (record,) = [s for s in daemon.client.sessions() if s["id"] == sid]
        (pam_process,) = [p.pid for p in psutil.Process(record["pid"]).children()
                          if p.pid != record["shell_pid"]]
        if signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            assert pam_process == pam_ahead
        else:
            assert pam_process != pam_ahead
            assert not os.path.exists(f"/proc/{pam_ahead}")  # killed and reaped
    finally:
        sess.close()
    ended = daemon.wait_event(sid, "session.ended")
    assert ended["pam_closed"] is True


FREEZER = "/sys/fs/cgroup/freezer"


@pytest.mark.skipif(not os.path.isdir(FREEZER),
                    reason="no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer (CI has one)")
def test_a_pam_process_forked_ahead_killed_as_its_start_takes_it_is_replaced(
        daemon: DaemonProc, users: Users) -> None:
    """Killed after the start found it waiting but before it read what to open (held frozen
    over that moment here, so the race is replayed every time): PAM never began in it, so the
    start forks a PAM process of its own instead of failing."""
    import threading

    (pam_ahead,) = [p for p in _spare_children(daemon) if _blocked(p) == 0]
    frozen = os.path.join(FREEZER, f"runas-test-pam-ahead-{os.getpid()}")
    os.mkdir(frozen)
    try:
        with open(os.path.join(frozen, "cgroup.procs"), "w") as fh:
            fh.write(str(pam_ahead))
        with open(os.path.join(frozen, "freezer.state"), "w") as fh:
            fh.write("FROZEN")
        got: dict[str, Any] = {}

        def start() -> None:
            try:
                got["sess"] = _start_as_alice(daemon, users, "pam-ahead-raced")
            except BaseException as exc:
                got["error"] = exc

        thread = threading.Thread(target=start)
        thread.start()
        # The start has taken it once session.requested is on record (its word follows).
        assert daemon_wait_requested(daemon, "pam-ahead-raced")
        time.sleep(0.5)
        os.kill(pam_ahead, signal.SIGKILL)  # pending until it thaws: it reads nothing
        with open(os.path.join(frozen, "freezer.state"), "w") as fh:
            fh.write("THAWED")
        thread.join(30)
        assert "error" not in got, got.get("error")
        _ends_with_pam_closed(daemon, got["sess"], "pam-ahead-raced")
        assert not os.path.exists(f"/proc/{pam_ahead}")
    finally:
        with open(os.path.join(frozen, "freezer.state"), "w") as fh:
            fh.write("THAWED")
        from tests.support import load

        load.wait_until(lambda: not _read(os.path.join(frozen, "cgroup.procs")), 10)
        os.rmdir(frozen)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def daemon_wait_requested(d: DaemonProc, sid: str) -> bool:
    from tests.support import load

    return load.wait_until(lambda: "session.requested" in d.events(sid), 10)
