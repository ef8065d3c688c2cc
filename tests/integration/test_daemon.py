"""The daemon end to end: real socket, real accounts, real shells, inside the isolated namespace."""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.errors import AgentError
from tests.conftest import Users, sh
from tests.support import load
from tests.support.daemon import (
    MARKERS,
    DaemonProc,
    make_daemon,
    running,
)

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"


@pytest.fixture(scope="module")
def daemon(users: Users) -> Iterator[DaemonProc]:
    with running({"limits": {"read_timeout": 1.0}}) as d:
        yield d


def run_as(d: DaemonProc, user: str, *cmd: str, tty: bool = False,
           input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    args = ["session", "--run-as", "--tag", f"{TAG}={user}"]
    if tty:
        args.append("-t")
    return d.cli(*args, "--", *cmd, input=input)


def test_acceptance_id_un(daemon: DaemonProc, users: Users) -> None:
    proc = run_as(daemon, users.alice, "id", "-un")
    assert proc.stdout == b"alice\n", proc.stderr
    assert proc.returncode == 0


PROBE = r"""
echo "==status"; grep -E '^(Uid|Gid):' /proc/self/status
echo "==groups"; id -G
echo "==fds"; ls -1 /proc/self/fd
echo "==cwd"; pwd
echo "==env"; env
echo "==tty"; if tty >/dev/null; then stat -c '%U %G %a' "$(tty)"; else echo none; fi
echo "==end"
"""


def sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in text.replace("\r\n", "\n").splitlines():
        if line.startswith("=="):
            cur = line[2:]
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return out


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
@pytest.mark.parametrize("who", ["alice", "dirk", "bob"])
def test_session_identity_and_hygiene(daemon: DaemonProc, users: Users, who: str,
                                      tty: bool) -> None:
    user = getattr(users, who)
    pw = pwd.getpwnam(user)
    proc = run_as(daemon, user, "sh", "-c", PROBE, tty=tty)
    assert proc.returncode == 0, proc.stderr
    s = sections(proc.stdout.decode())
    assert "end" in s, proc.stdout
    u, g = pw.pw_uid, pw.pw_gid
    assert s["status"] == [f"Uid:\t{u}\t{u}\t{u}\t{u}", f"Gid:\t{g}\t{g}\t{g}\t{g}"]
    expected = set(os.getgrouplist(user, g))
    assert {int(x) for x in s["groups"][0].split()} == expected
    if who == "alice":
        assert grp.getgrnam(users.devs_group).gr_gid in expected
    assert 0 not in expected
    assert sorted(int(x) for x in s["fds"]) == [0, 1, 2, 3]
    assert s["cwd"] == [pw.pw_dir]
    env = dict(line.split("=", 1) for line in s["env"] if "=" in line)
    assert env["HOME"] == pw.pw_dir
    assert env["USER"] == env["LOGNAME"] == user
    assert env["SHELL"] == pw.pw_shell
    for leaked in MARKERS:
        assert leaked not in env, leaked
    assert not any(k.startswith(("LD_", "PYTHON")) for k in env)
    if tty:
        assert s["tty"] == [f"{user} tty 620"]
        assert env.get("TERM")
    else:
        assert s["tty"] == ["none"]


def test_stdout_and_stderr_are_separate(daemon: DaemonProc, users: Users) -> None:
    proc = run_as(daemon, users.alice, "sh", "-c", "echo out; echo err >&2; echo out2")
    assert proc.stdout == b"out\nout2\n"
    assert proc.stderr == b"err\n"


def test_words_reach_the_program_exactly(daemon: DaemonProc, users: Users) -> None:
    proc = run_as(daemon, users.bob, "printf", "%s|", "a b", "$HOME", "it's", "*", ";id", "")
    assert proc.stdout == b"a b|$HOME|it's|*|;id||"


def test_stdin_is_relayed(daemon: DaemonProc, users: Users) -> None:
    proc = run_as(daemon, users.alice, "cat", input=b"hello\nworld\n")
    assert proc.stdout == b"hello\nworld\n"


@pytest.mark.parametrize(("script", "code"), [("exit 7", 7), ("kill -TERM $$", 128 + 15),
                                              ("true", 0)])
def test_exit_status_passes_through(daemon: DaemonProc, users: Users, script: str,
                                    code: int) -> None:
    assert run_as(daemon, users.alice, "sh", "-c", script).returncode == code
    assert run_as(daemon, users.alice, "sh", "-c", script, tty=True).returncode == code


def test_login_shell_and_profile(daemon: DaemonProc, users: Users) -> None:
    c = daemon.client
    sess = c.start(session_id="login-1", principal_arn="arn:test", tags={TAG: users.alice},
                   run_as_enabled=True, shell_profile="export PROFILE_RAN=yes",
                   terminal=("xterm", 24, 80))
    assert sess.master is not None
    os.write(sess.master, b"echo \"argv0=$0 profile=$PROFILE_RAN\"; exit 3\n")
    out = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = os.read(sess.master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if b"profile=yes" in out and b"argv0=-bash" in out:
            break
    status = sess.wait()
    sess.close()
    assert b"argv0=-bash profile=yes" in out
    assert status == {"code": 3, "signal": None, "reason": "exited"}


@pytest.mark.parametrize(
    ("who", "reason"),
    [("root", "root_refused"), ("toor", "root_refused"), ("nobody-here", "user_not_found"),
     ("nolog", "shell_disabled"), ("-oProxy", "invalid_name")],
)
def test_refusals_spawn_nothing(daemon: DaemonProc, users: Users, who: str,
                                reason: str) -> None:
    sid = f"deny-{who.strip('-')}"
    proc = daemon.cli("session", "--session-id", sid, "--run-as", "--tag", f"{TAG}={who}",
                      "--", "touch", "/tmp/should-not-exist")
    assert proc.returncode == 255
    assert reason.encode() in proc.stderr
    assert proc.stdout == b""
    assert daemon.events(sid) == ["session.requested", "session.denied"]
    assert daemon.wait_event(sid, "session.denied")["reason"] == reason
    assert not os.path.exists("/tmp/should-not-exist")
    assert not os.path.exists(os.path.join(daemon.state_dir, sid + ".json"))


def test_run_as_user_missing(daemon: DaemonProc, users: Users) -> None:
    proc = daemon.cli("session", "--run-as", "--", "true")
    assert proc.returncode == 255
    assert b"run_as_user_missing" in proc.stderr


def test_exec_failure_is_an_error_not_a_hang(daemon: DaemonProc, users: Users) -> None:
    os.makedirs("/var/lib/runas-test", exist_ok=True)
    shell = "/var/lib/runas-test/broken-shell"
    with open(shell, "w") as fh:
        fh.write("#!/nonexistent/interpreter\n")
    os.chmod(shell, 0o755)
    sh("useradd", "-m", "-s", shell, "--", "brokensh")
    t0 = time.monotonic()
    proc = run_as(daemon, "brokensh", "true")
    assert proc.returncode == 255
    assert b"spawn_failed" in proc.stderr
    assert time.monotonic() - t0 < 10


def test_audit_records(daemon: DaemonProc, users: Users) -> None:
    proc = daemon.cli("session", "--session-id", "audit-1", "--principal", "arn:aws:iam::1:u/x",
                      "--run-as", "--tag", f"{TAG}={users.alice}", "--", "sh", "-c", "exit 4")
    assert proc.returncode == 4
    recs = [r for r in daemon.audit() if r.get("session_id") == "audit-1"]
    assert [r["event"] for r in recs] == ["session.requested", "session.started",
                                          "session.ended"]
    uid = pwd.getpwnam(users.alice).pw_uid
    for r in recs:
        assert r["principal"] == "arn:aws:iam::1:u/x"
        assert r["peer_uid"] == 0
        assert r["ts"]
    assert recs[1]["user"] == users.alice
    assert recs[1]["uid"] == uid
    assert recs[1]["source"] == "tag"
    assert recs[2]["exit_status"] == {"code": 4, "signal": None}
    assert recs[2]["reason"] == "exited"
    st = os.stat(daemon.audit_path)
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(daemon.audit_path)).st_mode & 0o777 == 0o700


def test_sessions_list_and_terminate(daemon: DaemonProc, users: Users) -> None:
    c = daemon.client
    sess = c.start(session_id="term-1", principal_arn="arn:p", tags={TAG: users.bob},
                   run_as_enabled=True, command="sleep 60")
    proc = daemon.cli("sessions", "--json")
    rows = json.loads(proc.stdout)
    row = next(r for r in rows if r["id"] == "term-1")
    assert row["user"] == users.bob
    assert row["uid"] == pwd.getpwnam(users.bob).pw_uid
    assert row["source"] == "tag"
    assert row["principal"] == "arn:p"
    assert isinstance(row["pid"], int)
    assert row["started_at"]
    text = daemon.cli("sessions").stdout.decode()
    assert "term-1" in text
    assert text.splitlines()[0].split()[:3] == ["ID", "USER", "UID"]
    proc = daemon.cli("terminate", "term-1")
    assert proc.returncode == 0, proc.stderr
    status = sess.wait()
    sess.close()
    assert status["reason"] == "terminated"
    assert status["signal"] == signal.SIGHUP
    assert daemon.wait_event("term-1", "session.ended")["reason"] == "terminated"
    assert "term-1" not in daemon.cli("sessions").stdout.decode()
    proc = daemon.cli("terminate", "term-1")
    assert proc.returncode == 1
    assert b"session_not_found" in proc.stderr


def test_duplicate_session_id(daemon: DaemonProc, users: Users) -> None:
    c = daemon.client
    sess = c.start(session_id="dup-1", principal_arn="a", tags={TAG: users.bob},
                   run_as_enabled=True, command="sleep 30")
    with pytest.raises(AgentError) as info:
        c.start(session_id="dup-1", principal_arn="a", tags={TAG: users.bob},
                run_as_enabled=True, command="true")
    assert info.value.reason == "session_exists"
    sess.terminate()
    assert sess.wait()["reason"] == "terminated"
    sess.close()


def test_hangup_ends_the_session(daemon: DaemonProc, users: Users) -> None:
    sess = daemon.client.start(session_id="hup-1", principal_arn="a", tags={TAG: users.alice},
                               run_as_enabled=True, command="sleep 60",
                               terminal=("xterm", 24, 80))
    shell = int(sess.info["pid"])
    sess.close()
    rec = daemon.wait_event("hup-1", "session.ended")
    assert rec["reason"] == "hangup"
    assert not _alive(shell)


def test_resize_reaches_the_pty(daemon: DaemonProc, users: Users) -> None:
    sess = daemon.client.start(session_id="resize-1", principal_arn="a",
                               tags={TAG: users.alice}, run_as_enabled=True,
                               command="sleep 1; stty size", terminal=("xterm", 24, 80))
    sess.resize(33, 101)
    out = _read_all(sess.master)
    sess.wait()
    sess.close()
    assert b"33 101" in out


# -- hostile input ----------------------------------------------------------------------------


def _raw(d: DaemonProc, data: bytes, *, close_write: bool = True) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(d.socket)
    try:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        s.close()


def _reply(data: bytes) -> dict[str, object]:
    (n,) = struct.unpack(">I", data[:4])
    return dict(json.loads(data[4:4 + n]))


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _hostile(payload: bytes, name: str, *, answered: bool = True) -> Any:
    return pytest.param(payload, answered, id=name)


@pytest.mark.parametrize(
    ("payload", "answered"),
    [
        _hostile(struct.pack(">I", 10_000_000) + b"x" * 100, "oversize"),
        # The client stops writing before the frame is complete: the daemon closes, silently.
        _hostile(_frame(b"{\"v\":1,\"type\":\"ping\"")[:-3], "truncated", answered=False),
        _hostile(_frame(b"{not json"), "invalid-json"),
        _hostile(_frame(b"[1,2,3]"), "not-object"),
        _hostile(_frame(b"{\"v\":1,\"type\":\"start\",\"session_id\":5}"), "wrong-type"),
        _hostile(_frame(b"{\"v\":1,\"type\":\"rm -rf\"}"), "unknown-op"),
        _hostile(_frame(b"{\"v\":99,\"type\":\"ping\"}"), "version"),
        # Seeded, so the test is the same every run: a header far above the frame limit.
        _hostile(random.Random(0).randbytes(3000), "random"),
        _hostile(b"", "empty", answered=False),
        _hostile(_frame(b"{\"v\":1,\"type\":\"ping\"}") * 2, "two-frames"),
        _hostile(_frame(b"[" * 60000), "deep-nesting"),
        _hostile(_frame(b'{"v":1,"type":"start","session_id":"x","principal":{"arn":"a",'
                        b'"tags":{"\\ud800":1}}}'), "surrogate-tag"),
        _hostile(_frame(b'{"v":1,"type":"start","session_id":"x",'
                        b'"principal":{"arn":"\\ud800"},"command":"true"}'), "surrogate-arn"),
        _hostile(_frame(b'{"v":1,"type":"start","session_id":"x","principal":{"arn":"a"},'
                        b'"env":{"\\udfff":5}}'), "surrogate-env"),
    ],
)
def test_hostile_frames_leave_the_daemon_serving(daemon: DaemonProc, users: Users,
                                                 payload: bytes, answered: bool) -> None:
    out = _raw(daemon, payload)
    if answered:
        rep = _reply(out)
        assert rep["type"] == "error"
        assert rep["reason"] == "bad_request"
    else:
        assert out == b""
    assert daemon.client.ping()["type"] == "pong"
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def test_slow_client_cannot_hold_the_daemon(daemon: DaemonProc, users: Users) -> None:
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(daemon.socket)
    slow.sendall(struct.pack(">I", 100) + b"{")  # and then nothing
    t0 = time.monotonic()
    assert daemon.client.ping()["type"] == "pong"  # served while the slow one waits
    assert time.monotonic() - t0 < 1.0
    slow.settimeout(5)
    data = slow.recv(65536)
    slow.close()
    assert _reply(data)["reason"] == "bad_request"
    assert time.monotonic() - t0 < 4.0


def _padded_ping(size: int) -> bytes:
    """A valid ping frame whose body is SIZE bytes (JSON allows the trailing blanks)."""
    body = b'{"v":1,"type":"ping"}'
    return _frame(body + b" " * (size - len(body)))


def test_the_configured_frame_limit_is_the_one_enforced(users: Users) -> None:
    with running({"limits": {"max_frame": 1024}}) as d:
        assert _reply(_raw(d, _padded_ping(1024)))["type"] == "pong"
        rep = _reply(_raw(d, _padded_ping(4096)))  # under the default limit, over this one
        assert (rep["type"], rep.get("reason")) == ("error", "bad_request")
        assert "exceeds the limit of 1024" in str(rep["message"])
        assert d.client.ping()["type"] == "pong"


# -- directories the daemon trusts --------------------------------------------------------------

# (mode, owned by alice instead of root): each one someone other than root could write into.
UNSAFE_DIRS = [
    pytest.param(0o775, False, id="group-writable"),
    pytest.param(0o1777, False, id="world-writable"),
    pytest.param(0o700, True, id="owned-by-a-user"),
]


def _unsafe_dir(path: str, mode: int, user_owned: bool, user: str) -> None:
    os.makedirs(path)
    os.chmod(path, mode)
    if user_owned:
        os.chown(path, pwd.getpwnam(user).pw_uid, -1)


def _serve_refused(d: DaemonProc) -> str:
    """Run `serve`, which must refuse to start: its output. A daemon that binds its socket
    instead is stopped and the test fails."""
    proc = subprocess.Popen([sys_executable(), "-m", "agent", "serve", "--config",
                             d.config_path], cwd=REPO_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if os.path.exists(d.socket):
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"the daemon bound {d.socket} instead of refusing its directory")
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    assert proc.returncode == 2, out
    return out


@pytest.mark.parametrize(("mode", "user_owned"), UNSAFE_DIRS)
def test_the_daemon_refuses_a_socket_directory_others_could_write(
        users: Users, mode: int, user_owned: bool) -> None:
    d = make_daemon()
    sock_dir = os.path.dirname(d.socket)
    _unsafe_dir(sock_dir, mode, user_owned, users.alice)
    out = _serve_refused(d)
    assert f"{sock_dir}: must be a directory owned by root and not writable by group or " \
        "others" in out
    assert os.listdir(sock_dir) == []


def _running(uid: int, cmdline: bytes) -> list[int]:
    """The processes of real uid UID whose command line is CMDLINE."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as fh:
                real = next(x for x in fh if x.startswith("Uid:")).split()[1]
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().rstrip(b"\0")
        except (OSError, ValueError, StopIteration):
            continue
        if real == str(uid) and argv == cmdline:
            found.append(int(name))
    return found


def test_a_session_that_cannot_be_listed_ends_on_record(users: Users) -> None:
    """The registry takes the claim (one page of a one-page tmpfs) but not the started record
    (a second file): the session, started and on record, ends at once as internal_error."""
    d = make_daemon()
    os.makedirs(d.state_dir, mode=0o700, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", d.state_dir)
    d.start()
    try:
        with pytest.raises(AgentError) as info:
            d.client.start(session_id="unlisted", principal_arn="a", tags={TAG: users.alice},
                           run_as_enabled=True, command="sleep 30")
        assert info.value.reason == "internal_error"
        assert d.events("unlisted") == ["session.requested", "session.started",
                                        "session.ended"]
        ended = [r for r in d.audit() if r.get("session_id") == "unlisted"][-1]
        assert ended["reason"] == "internal_error"
        # (unlisted by its supervisor just after the error frame)
        assert load.wait_until(lambda: os.listdir(d.state_dir) == [], 10)
        uid = pwd.getpwnam(users.alice).pw_uid
        assert load.wait_until(lambda: not _running(uid, b"sleep\x0030"), 10)
    finally:
        d.stop()
        sh("umount", d.state_dir)


@pytest.mark.parametrize(("mode", "user_owned"), UNSAFE_DIRS)
def test_sessions_are_refused_with_a_registry_directory_others_could_write(
        users: Users, mode: int, user_owned: bool) -> None:
    d = make_daemon()
    out_dir = os.path.join(d.workdir, "out")
    os.mkdir(out_dir)
    os.chmod(out_dir, 0o1777)
    marker = os.path.join(out_dir, "ran")
    _unsafe_dir(d.state_dir, mode, user_owned, users.alice)
    d.start()
    try:
        with pytest.raises(AgentError) as info:
            d.client.start(session_id="reg-dir", principal_arn="a", tags={TAG: users.alice},
                           run_as_enabled=True, command=f"touch {marker}")
        assert info.value.reason == "internal_error"
        assert f"{d.state_dir} must be a directory of the agent's user, mode 0700" \
            in str(info.value)
        assert d.events("reg-dir") == ["session.requested", "session.denied"]
        assert os.listdir(d.state_dir) == []
        assert not os.path.exists(marker)
    finally:
        d.stop()
        d.cleanup()


# -- peers ------------------------------------------------------------------------------------


def _as_user(user: str, code: str, pkg: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", "/usr/bin/python3", "-I", "-c",
         f"import sys; sys.path.insert(0, {pkg!r}); {code}"],
        capture_output=True, text=True, timeout=30, cwd="/",
    )


PING = ("from agent.client import Client; from agent.errors import AgentError\n"
        "try:\n  print(Client(sys.argv[-1] if False else {sock!r}).ping()['type'])\n"
        "except AgentError as e:\n  print(e.reason)")


def test_unauthorized_peer_is_refused(users: Users, agent_pkg: str) -> None:
    pkg = agent_pkg
    with running({"socket": {"group": users.devs_group}}) as d:
        os.chmod(os.path.dirname(d.socket), 0o755)
        # alice can reach the socket (group devs) but is not an allowed peer
        out = _as_user(users.alice, PING.format(sock=d.socket), pkg)
        assert out.stdout.strip() == "unauthorized", out.stderr
        # bob cannot even open the socket (mode 0660, not in its group)
        out = _as_user(users.bob, PING.format(sock=d.socket), pkg)
        assert out.stdout.strip() == "unreachable", out.stderr
        assert "connection.unauthorized" in d.log()


def test_allowed_group_peer_is_served(users: Users, agent_pkg: str) -> None:
    pkg = agent_pkg
    with running({"socket": {"group": users.devs_group},
                 "peers": {"allowed_groups": [users.devs_group]}}) as d:
        os.chmod(os.path.dirname(d.socket), 0o755)
        out = _as_user(users.alice, PING.format(sock=d.socket), pkg)
        assert out.stdout.strip() == "pong", out.stderr + d.log()
        st = os.stat(d.socket)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (
            0o660, 0, grp.getgrnam(users.devs_group).gr_gid)


# -- limits and lifecycle -----------------------------------------------------------------------


def test_max_duration(users: Users) -> None:
    with running({"session": {"max_duration": 1.0}}) as d:
        t0 = time.monotonic()
        proc = d.cli("session", "--session-id", "maxdur", "--run-as", "--tag",
                     f"{TAG}={users.alice}", "--", "sleep", "30")
        assert time.monotonic() - t0 < 10
        assert proc.returncode == 128 + signal.SIGHUP
        assert d.wait_event("maxdur", "session.ended")["reason"] == "max_duration"


def test_idle_timeout_pty(users: Users) -> None:
    with running({"session": {"idle_timeout": 1.0}}) as d:
        sess = d.client.start(session_id="idle-1", principal_arn="a", tags={TAG: users.alice},
                              run_as_enabled=True, command="sleep 30",
                              terminal=("xterm", 24, 80))
        t0 = time.monotonic()
        status = sess.wait()
        sess.close()
        assert status["reason"] == "idle_timeout"
        assert time.monotonic() - t0 < 10


def test_max_sessions_limit(users: Users) -> None:
    with running({"session": {"max_sessions": 2}}) as d:
        a = d.client.start(session_id="l1", principal_arn="a", tags={TAG: users.bob},
                           run_as_enabled=True, command="sleep 30")
        b = d.client.start(session_id="l2", principal_arn="a", tags={TAG: users.bob},
                           run_as_enabled=True, command="sleep 30")
        with pytest.raises(AgentError) as info:
            d.client.start(session_id="l3", principal_arn="a", tags={TAG: users.bob},
                           run_as_enabled=True, command="true")
        assert info.value.reason == "limit_reached"
        for s in (a, b):
            s.terminate()
            s.wait()
            s.close()


def test_a_session_over_frees_its_place_at_once(users: Users) -> None:
    """With max_sessions 1, each start right after the previous session's exit status (or a
    denial) gets the place, though that supervisor may not have exited yet; a live session
    still holds it, whatever account the next start is for."""
    with running({"session": {"max_sessions": 1}}) as d:
        for i in range(40):
            sess = d.client.start(session_id=f"row-{i}", principal_arn="a",
                                  tags={TAG: users.bob}, run_as_enabled=True, command="true")
            assert sess.wait()["code"] == 0
            sess.close()
            if i % 10 == 0:
                with pytest.raises(AgentError) as denied:
                    d.client.start(session_id=f"row-{i}-denied", principal_arn="a",
                                   tags={TAG: "root"}, run_as_enabled=True, command="true")
                assert denied.value.reason != "limit_reached"
        held = d.client.start(session_id="row-held", principal_arn="a", tags={TAG: users.bob},
                              run_as_enabled=True, command="sleep 30")
        try:
            for account in (users.bob, users.alice):
                with pytest.raises(AgentError) as info:
                    d.client.start(session_id=f"row-over-{account}", principal_arn="a",
                                   tags={TAG: account}, run_as_enabled=True, command="true")
                assert info.value.reason == "limit_reached"
        finally:
            held.terminate()
            held.wait()
            held.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _read_all(fd: int | None, timeout: float = 10) -> bytes:
    assert fd is not None
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _wait_file(path: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text:
                return text
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


ESCAPE = (
    "setsid sh -c 'echo $$ > {d}/setsid.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &\n"
    "(sh -c 'echo $$ > {d}/double.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &)\n"
    "sleep 60\n"
)


@pytest.mark.parametrize("end_mode", ["process_group", "all"])
def test_escapees_per_end_mode(users: Users, end_mode: str) -> None:
    out_dir = f"/home/{users.alice}/esc-{end_mode}"
    os.makedirs(out_dir)
    uid = pwd.getpwnam(users.alice).pw_uid
    os.chown(out_dir, uid, -1)
    with running({"session": {"end_mode": end_mode}}) as d:
        sess = d.client.start(session_id=f"esc-{end_mode}", principal_arn="a",
                              tags={TAG: users.alice}, run_as_enabled=True,
                              command=ESCAPE.format(d=out_dir))
        pids = [int(_wait_file(f"{out_dir}/{n}.pid")) for n in ("setsid", "double")]
        d.extra_pids.extend(pids)
        assert all(_alive(p) for p in pids)
        sess.terminate()
        status = sess.wait()
        sess.close()
        assert status["reason"] == "terminated"
        time.sleep(0.3)
        alive = [_alive(p) for p in pids]
        if end_mode == "all":
            assert alive == [False, False]
        else:
            # The setsid one left the process group and survives, as with sshd; the double-forked
            # one is still in the group and is hung up with it.
            assert alive == [True, False]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_sessions_survive_the_daemon(users: Users, how: int) -> None:
    sid = f"survive-{int(how)}"
    with running() as d:
        sess = d.client.start(session_id=sid, principal_arn="a", tags={TAG: users.alice},
                              run_as_enabled=True, command="sleep 60")
        shell = int(sess.info["pid"])
        rc = d.stop(how)
        assert rc == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        time.sleep(0.2)
        assert _alive(shell)
        # The session is still usable: its control channel and I/O did not depend on the daemon.
        d.start()
        rows = json.loads(d.cli("sessions", "--json").stdout)
        assert [r["id"] for r in rows] == [sid]
        assert d.cli("terminate", sid).returncode == 0
        status = sess.wait()
        sess.close()
        assert status["reason"] == "terminated"
        assert d.events(sid) == ["session.requested", "session.started",
                                 "session.terminate_requested", "session.ended"]
        assert not _alive(shell)


def test_daemon_accepts_an_inherited_listener(users: Users) -> None:
    d = make_daemon()
    os.makedirs(os.path.dirname(d.socket), exist_ok=True)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(d.socket)
    lsock.listen(16)
    fd = lsock.fileno()
    os.set_inheritable(fd, True)
    # The child must see the listener as fd 3 and LISTEN_PID as its own pid (as systemd does).
    import sys

    wrapper = [sys.executable, "-c",
               f"import os, sys; os.dup2({fd}, 3); os.close({fd});"
               "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1';"
               "os.execv(sys.argv[1], sys.argv[1:])"]
    env = {"PATH": "/usr/bin:/bin"}

    log = open(os.path.join(d.workdir, "daemon.log"), "ab")  # noqa: SIM115
    d.log_path = log.name
    d.proc = subprocess.Popen([*wrapper, sys.executable, "-m", "agent", "serve", "--config",
                               d.config_path], env=env, pass_fds=(fd,), stdout=log,
                              stderr=log, cwd=os.path.dirname(os.path.dirname(__file__)) + "/..")
    log.close()
    lsock.close()
    try:
        d.wait_ready()
        assert "socket.inherited" in d.log()
        proc = d.cli("session", "--run-as", "--tag", f"{TAG}={users.alice}", "--", "id", "-un")
        assert proc.stdout == b"alice\n"
    finally:
        d.stop()
        d.cleanup()


def test_sighup_reloads_config(users: Users) -> None:
    with running() as d:
        assert run_as(d, users.alice, "true").returncode == 0
        with open(d.config_path) as fh:
            cfg = json.load(fh)
        cfg["policy"] = {"deny_users": [users.alice]}
        with open(d.config_path, "w") as fh:
            json.dump(cfg, fh)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config.reloaded" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = run_as(d, users.alice, "true")
        assert proc.returncode == 255
        assert b"denied_by_policy" in proc.stderr
        # A broken config on reload is reported and the running one is kept.
        with open(d.config_path, "w") as fh:
            fh.write("policy: {nope: 1}\n")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config.reload_failed" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "config.reload_failed" in d.log()
        assert d.client.ping()["type"] == "pong"
        assert b"denied_by_policy" in run_as(d, users.alice, "true").stderr


def test_shell_profile_runs_before_a_command(daemon: DaemonProc, users: Users) -> None:
    out = _command_output(daemon, "prof-cmd", users.alice, 'echo "$GREETING $(pwd)"',
                          shell_profile="GREETING=hi; cd /tmp")
    assert out == b"hi /tmp\n"


def _command_output(d: DaemonProc, sid: str, user: str, command: str,
                    shell_profile: str) -> bytes:
    """Run COMMAND as USER with no input (through the client library); its stdout."""
    sess = d.client.start(session_id=sid, principal_arn="a", tags={TAG: user},
                          run_as_enabled=True, shell_profile=shell_profile, command=command)
    assert sess.stdin is not None
    os.close(sess.stdin)
    sess.stdin = None
    out = _read_all(sess.stdout)
    sess.wait()
    sess.close()
    return out


def test_interactive_session_on_a_terminal(daemon: DaemonProc, users: Users) -> None:
    """`runas-agent session` with no command, run on a real terminal (raw mode, resize)."""
    import fcntl
    import select
    import sys
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    pid = os.fork()
    if pid == 0:  # the CLI, on the slave side of a fresh PTY
        try:  # (the child never returns into pytest, whatever fails)
            os.close(master)
            os.setsid()  # os.login_tty does these three steps, on Python 3.11+ only
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.close(slave)
            os.chdir(REPO_DIR)
            os.execve(sys.executable, [sys.executable, "-m", "agent", "session", "--socket",
                                       daemon.socket, "--run-as", "--tag",
                                       f"{TAG}={users.alice}"],
                      {"PATH": "/usr/bin:/bin", "TERM": "xterm"})
        finally:
            os._exit(127)
    os.close(slave)
    out = b""

    def expect(token: bytes, timeout: float = 10) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while token not in out and time.monotonic() < deadline:
            if not select.select([master], [], [], 0.2)[0]:
                continue
            try:
                out += os.read(master, 4096)
            except OSError:
                break
        assert token in out, out

    expect(b"$ ")  # the prompt
    os.write(master, b"echo who=$(id -un); stty size\n")
    expect(b"who=alice")
    expect(b"30 90")
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 120, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    time.sleep(0.3)
    os.write(master, b"stty size; exit 5\n")
    expect(b"41 120")
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.waitstatus_to_exitcode(status) == 5


# -- ssm-user (Run As off) --------------------------------------------------------------------


def _no_ssm_user() -> None:
    subprocess.run(["userdel", "-r", "--", "ssm-user"], capture_output=True)
    for path in ("/etc/sudoers.d/ssm-agent-users", "/var/lib/runas-agent/ssm-user.created"):
        if os.path.exists(path):
            os.unlink(path)


@pytest.fixture
def no_ssm_user() -> Iterator[None]:
    _no_ssm_user()
    yield
    _no_ssm_user()


@pytest.mark.usefixtures("no_ssm_user")
def test_first_sessions_with_run_as_off_create_ssm_user_once(users: Users) -> None:
    with running() as d:
        first = d.cli("session", "--no-run-as", "--", "sh", "-c", "id -un; sudo -n id -u")
        assert first.stdout == b"ssm-user\n0\n", first.stderr
        with open("/etc/sudoers.d/ssm-agent-users", "rb") as fh:
            assert fh.read() == (b"# User rules for ssm-user\n"
                                 b"ssm-user ALL=(ALL) NOPASSWD:ALL\n")
        st = os.stat("/etc/sudoers.d/ssm-agent-users")
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o440, 0, 0)
        assert subprocess.run(["visudo", "-c"], capture_output=True).returncode == 0
        created = [r for r in d.audit() if r["event"] == "ssm_user.created"]
        assert len(created) == 1


@pytest.mark.usefixtures("no_ssm_user")
def test_twenty_concurrent_first_sessions(users: Users) -> None:
    with running() as d:
        procs = [subprocess.Popen(
            [sys_executable(), "-m", "agent", "session", "--socket", d.socket, "--no-run-as",
             "--", "id", "-un"], cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(20)]
        results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
        assert [r[2] for r in results] == [0] * 20, [r[1] for r in results]
        assert {r[0] for r in results} == {b"ssm-user\n"}
        assert len([r for r in d.audit() if r["event"] == "ssm_user.created"]) == 1
        assert len([r for r in d.audit() if r["event"] == "sudoers.written"]) == 1
        assert [n for n in os.listdir("/etc/sudoers.d") if "ssm" in n] == ["ssm-agent-users"]
        with open("/etc/passwd") as fh:
            assert sum(line.startswith("ssm-user:") for line in fh) == 1


@pytest.mark.usefixtures("no_ssm_user")
def test_run_as_on_never_creates_ssm_user(users: Users) -> None:
    with running({"run_as": {"enabled": False}}) as d:
        assert run_as(d, users.alice, "true").returncode == 0
        assert d.cli("session", "--run-as", "--", "true").returncode == 255
        with pytest.raises(KeyError):
            pwd.getpwnam("ssm-user")
        assert not os.path.exists("/etc/sudoers.d/ssm-agent-users")


def sys_executable() -> str:
    import sys

    return sys.executable


REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- PAM and login records through the daemon -------------------------------------------------


@pytest.fixture
def pam_service() -> Iterator[str]:
    """The shipped PAM service file, installed inside the namespace for one test."""
    import shutil

    dest = "/etc/pam.d/runas-agent"
    shutil.copyfile(os.path.join(REPO_DIR, "packaging", "pam", "runas-agent"), dest)
    # The utmp file, as systemd-update-utmp creates it at boot (this machine did not boot one).
    made_utmp = not os.path.exists("/run/utmp")
    if made_utmp:
        os.close(os.open("/run/utmp", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o664))
        shutil.chown("/run/utmp", "root", "utmp")
    try:
        yield dest
    finally:
        os.unlink(dest)
        if made_utmp:
            os.unlink("/run/utmp")


def test_pam_session_through_the_daemon(daemon: DaemonProc, users: Users,
                                        pam_service: str) -> None:
    uid = pwd.getpwnam(users.alice).pw_uid
    with open("/etc/security/limits.d/runas-test.conf", "w") as fh:
        fh.write(f"{users.alice} soft nofile 1234\n{users.alice} hard nofile 2345\n")
    try:
        proc = run_as(daemon, users.alice, "sh", "-c",
                      "cat /proc/self/loginuid; echo; ulimit -n; who | grep -c alice", tty=True)
        lines = proc.stdout.decode().replace("\r", "").split()
        assert lines == [str(uid), "1234", "1"], proc.stdout
        with open("/proc/self/loginuid") as fh:
            assert fh.read().strip() != str(uid)  # the test process kept its own
        daemon_pid = daemon.proc.pid if daemon.proc is not None else 0
        with open(f"/proc/{daemon_pid}/loginuid") as fh:
            assert fh.read().strip() != str(uid)
        last = subprocess.run(["last", "-w", "-f", "/var/log/wtmp", users.alice],
                              capture_output=True, text=True)
        assert users.alice in last.stdout
    finally:
        os.unlink("/etc/security/limits.d/runas-test.conf")


def test_expired_account_is_refused_with_nothing_spawned(daemon: DaemonProc, users: Users,
                                                         pam_service: str) -> None:
    sh("useradd", "-m", "-s", "/bin/bash", "--", "expired")
    sh("chage", "-E", "0", "--", "expired")
    proc = daemon.cli("session", "--session-id", "expired-1", "--run-as", "--tag",
                      f"{TAG}=expired", "--", "touch", "/tmp/expired-ran")
    assert proc.returncode == 255
    assert b"account_refused" in proc.stderr
    assert not os.path.exists("/tmp/expired-ran")
    assert daemon.wait_event("expired-1", "session.denied")["reason"] == "account_refused"
    assert "session.started" not in daemon.events("expired-1")


def test_pam_off_still_works(users: Users, pam_service: str) -> None:
    with running({"session": {"pam": False}}) as d:
        sh("useradd", "-m", "-s", "/bin/bash", "--", "expired2")
        sh("chage", "-E", "0", "--", "expired2")
        proc = run_as(d, "expired2", "id", "-un")  # no account stage without PAM
        assert proc.stdout == b"expired2\n", proc.stderr



# -- what a hostile or broken client must not be able to do to a session -----------------------


def _account_processes(user: str) -> list[int]:
    uid = pwd.getpwnam(user).pw_uid
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and _alive(int(name)):
                    out.append(int(name))
            except OSError:
                pass
    return out


def _wait_gone(user: str, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while _account_processes(user) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _account_processes(user)


def test_terminate_racing_the_start_never_orphans_a_shell(users: Users) -> None:
    sh("useradd", "-m", "-s", "/bin/sh", "--", "racer")
    with running() as d:
        for i in range(20):
            sid = f"race-{i}"
            cli = subprocess.Popen(
                [sys_executable(), "-m", "agent", "session", "--socket", d.socket,
                 "--session-id", sid, "--run-as", "--tag", f"{TAG}=racer", "--", "sleep", "30"],
                cwd=REPO_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    d.client.terminate(sid)
                    break
                except AgentError:
                    time.sleep(0.001 * (i % 5))
            cli.wait(timeout=20)
        assert _wait_gone("racer") == []
        by_session: dict[str, list[str]] = {}
        terminates: dict[str, list[bool]] = {}
        for r in d.audit():
            if r["event"] == "session.terminate_requested":
                terminates.setdefault(r["session_id"], []).append(r["allowed"])
            else:
                by_session.setdefault(r["session_id"], []).append(r["event"])
        assert set(terminates) == {f"race-{i}" for i in range(20)}
        assert all(allowed[-1] for allowed in terminates.values()), terminates
        for sid, events in by_session.items():
            assert events[0] == "session.requested", (sid, events)
            assert events[-1] in ("session.ended", "session.denied"), (sid, events)
            if "session.started" in events:
                assert events[-1] == "session.ended", (sid, events)


def test_a_client_flooding_bad_control_frames_cannot_stall_its_session(users: Users) -> None:
    with running({"session": {"max_duration": 2.0}}) as d:
        sess = d.client.start(session_id="flood", principal_arn="a", tags={TAG: users.bob},
                              run_as_enabled=True, command="sleep 30")
        shell = int(sess.info["pid"])
        sess.sock.setblocking(False)
        junk = _frame(b"1") * 1000
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4:  # never reads the error replies
            try:
                sess.sock.send(junk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        rec = d.wait_event("flood", "session.ended", timeout=6)
        assert rec["reason"] in ("max_duration", "hangup")
        assert not _alive(shell)
        sess.close()


def test_a_client_that_never_reads_cannot_keep_a_session_past_its_end(users: Users) -> None:
    with running({"session": {"max_duration": 1.0}}) as d:
        sess = d.client.start(session_id="noread", principal_arn="a", tags={TAG: users.bob},
                              run_as_enabled=True, command="sleep 30")
        shell = int(sess.info["pid"])
        sess.sock.setblocking(False)
        for _ in range(2000):  # an oversize header: the stream cannot be resynchronized
            try:
                sess.sock.send(struct.pack(">I", 10_000_000) + b"x" * 4096)
            except (BlockingIOError, OSError):
                break
        rec = d.wait_event("noread", "session.ended", timeout=8)
        assert rec["reason"] in ("hangup", "max_duration")
        assert not _alive(shell)
        sess.close()


def test_a_huge_shell_profile_does_not_block_the_supervisor(users: Users) -> None:
    profile = "seq 1 200000\n" + "#" * 16000
    with running({"session": {"max_duration": 2.0}}) as d:
        t0 = time.monotonic()
        sess = d.client.start(session_id="bigprof", principal_arn="a", tags={TAG: users.bob},
                              run_as_enabled=True, shell_profile=profile,
                              terminal=("xterm", 24, 80))
        assert time.monotonic() - t0 < 3  # started, though nobody reads the terminal yet
        rec = d.wait_event("bigprof", "session.ended", timeout=8)
        assert rec["reason"] == "max_duration"
        sess.close()
        assert _wait_gone(users.bob) == []


def test_the_profile_is_not_on_the_command_line(daemon: DaemonProc, users: Users) -> None:
    out = _command_output(daemon, "secret-prof", users.alice,
                          'echo "token=$API_TOKEN"; cat /proc/$$/cmdline; sleep 1',
                          shell_profile="export API_TOKEN=s3cr3t-value")
    assert b"token=s3cr3t-value" in out
    assert out.count(b"s3cr3t-value") == 1  # not in argv


def test_when_the_shell_exits_its_process_group_is_hung_up(daemon: DaemonProc,
                                                           users: Users) -> None:
    proc = run_as(daemon, users.alice, "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!")
    pid = int(proc.stdout)
    deadline = time.monotonic() + 3
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _tiny_tmpfs(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                   check=True)


def test_no_room_for_the_session_record_is_a_clean_denial(users: Users) -> None:
    with running() as d:
        _tiny_tmpfs(d.state_dir, "4k")
        try:
            subprocess.run(["dd", "if=/dev/zero", f"of={d.state_dir}/filler", "bs=1k"],
                           capture_output=True)  # fills it (and fails: no space left)
            proc = d.cli("session", "--session-id", "nospace", "--run-as", "--tag",
                         f"{TAG}={users.bob}", "--", "sleep", "30")
            assert proc.returncode == 255
            assert b"internal_error" in proc.stderr
            assert d.events("nospace") == ["session.requested", "session.denied"]
            assert _wait_gone(users.bob) == []
            assert d.client.ping()["type"] == "pong"
        finally:
            subprocess.run(["umount", d.state_dir], check=True)


def test_a_broken_daemon_log_does_not_stop_the_daemon(users: Users) -> None:
    d = make_daemon()
    r, w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    d.proc = subprocess.Popen([sys_executable(), "-m", "agent", "serve", "--config",
                               d.config_path], cwd=REPO_DIR, env=env, stdout=w, stderr=w)
    os.close(w)
    try:
        d.log_path = "/dev/null"
        d.wait_ready()
        os.close(r)  # the log reader goes away (journald restarting)
        for _ in range(5):
            _raw(d, _frame(b"{bad json"))
        assert d.client.ping()["type"] == "pong"
        assert d.proc.poll() is None
    finally:
        d.stop()
        d.cleanup()


def test_pam_items_name_the_principal_and_the_terminal(daemon: DaemonProc, users: Users,
                                                       pam_service: str) -> None:
    os.makedirs("/var/lib/runas-test", exist_ok=True)
    script, seen = "/var/lib/runas-test/pamseen", "/var/lib/runas-test/pamseen.out"
    with open(script, "w") as fh:
        fh.write(f'#!/bin/sh\necho "$PAM_TYPE user=$PAM_USER ruser=$PAM_RUSER tty=$PAM_TTY" '
                 f'>> {seen}\n')
    os.chmod(script, 0o755)
    with open(pam_service, "a") as fh:
        fh.write(f"session optional pam_exec.so {script}\n")
    sess = daemon.client.start(session_id="pam-items", principal_arn="arn:aws:iam::1:role/Ops",
                               tags={TAG: users.alice}, run_as_enabled=True, command="true",
                               terminal=("xterm", 24, 80))
    sess.wait()
    sess.close()
    deadline = time.monotonic() + 5  # the PAM session closes right after the exit is reported
    lines: list[str] = []
    while time.monotonic() < deadline and not any(x.startswith("close_session") for x in lines):
        time.sleep(0.05)
        with open(seen) as fh:
            lines = fh.read().splitlines()
    opened = next(line for line in lines if line.startswith("open_session"))
    assert f"user={users.alice}" in opened
    assert "ruser=arn:aws:iam::1:role/Ops" in opened
    assert "tty=/dev/pts/" in opened
    assert any(line.startswith("close_session") for line in lines)


def test_large_input_never_deadlocks(daemon: DaemonProc, users: Users,
                                     tmp_path: os.PathLike[str]) -> None:
    """`cat` writes as much as it reads: the client must read while it writes."""
    data = os.urandom(3 * 1024 * 1024)
    proc = run_as(daemon, users.alice, "cat", input=data)  # stdin is a pipe
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    path = os.path.join(str(tmp_path), "big")
    with open(path, "wb") as fh:
        fh.write(data)
    with open(path, "rb") as fh:  # stdin is a regular file (cannot be polled)
        proc = subprocess.run(
            [sys_executable(), "-m", "agent", "session", "--socket", daemon.socket, "--run-as",
             "--tag", f"{TAG}={users.alice}", "--", "cat"],
            cwd=REPO_DIR, stdin=fh, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_large_paste_into_a_terminal(daemon: DaemonProc, users: Users) -> None:
    lines = b"".join(b"%06d %s\n" % (i, b"x" * 90) for i in range(3000))
    proc = run_as(daemon, users.alice, "wc", "-l", tty=True, input=lines)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == b"3000"


def test_a_session_record_keeps_only_what_list_shows_of_a_long_command(
        daemon: DaemonProc, users: Users) -> None:
    """Every `sessions` request reads every live session's record: a record's size is not the
    start request's to choose (a peer once made `sessions` take seconds for every peer with
    commands of 64 KB, escaped to 190 KB each). The record keeps the first 1024 characters of
    the command and "...", which `sessions` shows."""
    command = "sleep 30 # " + "\U0001f600" * 4000  # each character 12 bytes as escaped JSON
    sess = daemon.client.start(session_id="long-cmd", principal_arn="a",
                               tags={TAG: users.bob}, run_as_enabled=True, command=command)
    try:
        listed = [r for r in daemon.client.sessions() if r["id"] == "long-cmd"]
        assert [r["command"] for r in listed] == [command[:1024] + "..."]
        with open(os.path.join(daemon.state_dir, "long-cmd.json")) as fh:
            kept = fh.read()
        assert json.loads(kept)["command"] == command[:1024] + "..."
        assert len(kept) < 1024 * 12 + 1024
    finally:
        sess.terminate()
        sess.wait()
        sess.close()
