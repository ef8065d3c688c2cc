"""Attacks on the PAM process of a session (agent.pam.open_login), replayed for real: real
accounts, the real daemon, real PAM stacks written to /etc/pam.d/runas-agent inside the test
namespace.

- A session module that takes its time (pam_exec running sleep, a directory that does not
  answer): a `terminate` sent meanwhile was acknowledged and audited as allowed, yet the
  supervisor went on waiting for PAM and then started the shell anyway, which ran the command
  it had been told not to. Terminated while PAM works, nothing of the session runs, and the
  client hears so at once.
- An unset login uid (PAM off; or a stack without pam_loginuid, or where it is optional and
  failed) can be set once by anyone: the session's user wrote 0 to /proc/self/loginuid and
  every audit event of the session then named root as the one who logged in. Where it is
  unset, the session's process sets it to the account's uid before the drop.
- A small `nofile` limit for the account (limits.d): the session's child set the limit before
  it wrote the login uid, so opening /proc/self/loginuid failed (EMFILE) and every session of
  the account was refused. The login uid is written first, as root, the limits after.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent.errors import AgentError
from tests.conftest import Users
from tests.support.daemon import REPO, DaemonProc, make_daemon, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
LIMITS_FILE = "/etc/security/limits.d/runas-agent-attack.conf"
SLEEP = ("/bin/sleep", "6.25")  # the slow module's program: a distinctive argv to find it by


def _install(extra: str) -> None:
    with open(SERVICE_FILE) as fh:
        service = fh.read()
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(service + extra)


def _kill_account(name: str) -> None:
    uid = pwd.getpwnam(name).pw_uid
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "kill", "-9", "-1"], check=False)


def _slow_modules() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if tuple(p.info["cmdline"] or ()) == SLEEP:
            found.append(p)
    return found


@pytest.fixture
def slow_pam(users: Users) -> Iterator[DaemonProc]:
    """A PAM service whose session stage takes SLEEP seconds for alice (pam_exec)."""
    _install(f"session [success=1 default=ignore] pam_succeed_if.so quiet user != {users.alice}\n"
             f"session required pam_exec.so {' '.join(SLEEP)}\n")
    try:
        with running({"session": {"pam": True}}) as d:
            yield d
    finally:
        _kill_account(users.alice)
        for p in _slow_modules():
            p.kill()
        os.unlink("/etc/pam.d/runas-agent")


def test_terminate_while_a_pam_module_hangs_runs_nothing(slow_pam: DaemonProc,
                                                         users: Users) -> None:
    d = slow_pam
    marker = f"/tmp/runas-attack-pam-{os.getpid()}"
    out: dict[str, Any] = {}

    def start() -> None:
        try:
            out["session"] = d.client.start(
                session_id="pam-slow", principal_arn="arn:aws:iam::1:role/A",
                tags={TAG: users.alice}, run_as_enabled=True, command=f"touch {marker}")
        except AgentError as exc:
            out["error"] = exc
        out["at"] = time.monotonic()

    began = time.monotonic()
    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        deadline = time.monotonic() + 10
        while not _slow_modules():  # alice's session stage is under way
            assert time.monotonic() < deadline, "the slow module never ran"
            time.sleep(0.05)
        asked = time.monotonic()
        d.client.terminate("pam-slow")
        starter.join(3.0)
        assert not starter.is_alive(), "the start still waits for PAM after terminate"
        assert "session" not in out, "the session started after it was terminated"
        assert getattr(out.get("error"), "reason", None) == "terminated", out
        assert out["at"] - asked < 3.0
        # Well past the module's end: still nothing ran, and the record says why.
        time.sleep(max(0.0, began + float(SLEEP[1]) + 1.5 - time.monotonic()))
        assert not os.path.exists(marker), "the terminated session's command ran"
        assert d.events("pam-slow") == ["session.requested", "session.terminate_requested",
                                        "session.denied"], d.events("pam-slow")
        (denied,) = [r for r in d.audit() if r.get("session_id") == "pam-slow"
                     and r["event"] == "session.denied"]
        assert denied["reason"] == "terminated"
        assert [s for s in d.client.sessions() if s["id"] == "pam-slow"] == []
    finally:
        starter.join(15)
        if "session" in out:
            out["session"].close()
        if os.path.exists(marker):
            os.unlink(marker)


def test_a_terminate_frame_while_a_pam_module_hangs_runs_nothing(slow_pam: DaemonProc,
                                                                 users: Users) -> None:
    """The same through the control channel: the client's own terminate frame, sent right
    after its start request."""
    import socket

    from agent import protocol

    d = slow_pam
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(20)
    try:
        sock.connect(d.socket)
        start = {"v": protocol.VERSION, "type": "start", "session_id": "pam-slow-frame",
                 "principal": {"arn": "arn:aws:iam::1:role/A", "tags": {TAG: users.alice}},
                 "preferences": {"run_as_enabled": True}, "command": "sleep 30", "env": {},
                 "terminal": None}
        sock.sendall(protocol.encode(start))
        deadline = time.monotonic() + 10
        while not _slow_modules():
            assert time.monotonic() < deadline, "the slow module never ran"
            time.sleep(0.05)
        asked = time.monotonic()
        sock.sendall(protocol.encode({"v": protocol.VERSION, "type": "terminate"}))
        assert select.select([sock], [], [], 3.0)[0], "no answer within 3 s of terminate"
        decoder = protocol.FrameDecoder(1 << 20)
        msg = None
        while msg is None:
            data = sock.recv(65536)
            assert data, "closed without an answer"
            decoder.push(data)
            msg = decoder.pop()
        assert (msg["type"], msg.get("reason")) == ("error", "terminated"), msg
        assert time.monotonic() - asked < 3.0
        assert "session.started" not in d.events("pam-slow-frame")
    finally:
        sock.close()


def test_a_hanging_module_is_given_up_after_the_open_timeout(slow_pam: DaemonProc,
                                                            users: Users) -> None:
    """Without a terminate, the wait for PAM is bounded all the same (open_login's timeout,
    here 1 s instead of pam.OPEN_TIMEOUT): pam_failed, and no PAM process is left."""
    code = f"""
import json, pwd, time
from agent import pam
from agent.errors import AgentError
pw = pwd.getpwnam({users.alice!r})
began = time.monotonic()
try:
    pam.open_login("runas-agent", pw.pw_name, pw.pw_gid, timeout=1.0)
    print(json.dumps({{"opened": True}}))
except AgentError as exc:
    print(json.dumps({{"reason": exc.reason, "message": exc.message,
                      "took": time.monotonic() - began}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res.get("reason") == "pam_failed", res
    assert "within 1 s" in res["message"], res
    assert res["took"] < float(SLEEP[1]) - 2, res


@pytest.fixture
def few_files(users: Users) -> Iterator[DaemonProc]:
    """The shipped service (pam_loginuid, pam_limits) and a small `nofile` for alice."""
    _install("")
    with open(LIMITS_FILE, "w") as fh:
        fh.write(f"{users.alice} hard nofile 8\n{users.alice} soft nofile 8\n")
    try:
        with running({"session": {"pam": True}}) as d:
            yield d
    finally:
        _kill_account(users.alice)
        for path in (LIMITS_FILE, "/etc/pam.d/runas-agent"):
            os.unlink(path)


def test_a_small_nofile_limit_still_gets_its_login_uid(few_files: DaemonProc,
                                                       users: Users) -> None:
    d = few_files
    sess = d.client.start(session_id="pam-nofile", principal_arn="arn:aws:iam::1:role/A",
                          tags={TAG: users.alice}, run_as_enabled=True,
                          command='echo "$(ulimit -n) $(cat /proc/self/loginuid)"')
    try:
        assert sess.stdout is not None
        data = b""
        while not data.endswith(b"\n"):
            assert select.select([sess.stdout], [], [], 20)[0], data
            chunk = os.read(sess.stdout, 4096)
            assert chunk, data
            data += chunk
        assert data.decode().split() == ["8", str(pwd.getpwnam(users.alice).pw_uid)]
        assert sess.wait().get("code") == 0
    finally:
        sess.close()


LOGINUID_PROBE = ('cat /proc/self/loginuid; echo; echo 0 > /proc/self/loginuid 2>/dev/null; '
                  'echo "rc=$?"; cat /proc/self/loginuid; echo; echo DONE')


@pytest.mark.parametrize("pam", ["off", "no pam_loginuid"])
def test_the_account_cannot_choose_its_login_uid(users: Users, pam: str) -> None:
    with open("/proc/self/loginuid") as fh:
        assert fh.read().strip() == "4294967295"  # the daemon's is unset, as under systemd
    if pam != "off":
        with open(SERVICE_FILE) as fh:
            service = fh.read()
        with open("/etc/pam.d/runas-agent", "w") as fh:
            fh.write("".join(ln for ln in service.splitlines(keepends=True)
                             if "pam_loginuid" not in ln))
    d = make_daemon({"session": {"pam": pam != "off"}})
    d.start()
    try:
        sess = d.client.start(session_id="loginuid", principal_arn="arn:aws:iam::1:role/A",
                              tags={TAG: users.alice}, run_as_enabled=True,
                              command=LOGINUID_PROBE)
        try:
            assert sess.stdout is not None
            data = b""
            while b"DONE" not in data:
                assert select.select([sess.stdout], [], [], 20)[0], data
                chunk = os.read(sess.stdout, 4096)
                assert chunk, data
                data += chunk
            assert sess.wait().get("code") == 0
        finally:
            sess.close()
        uid = str(pwd.getpwnam(users.alice).pw_uid)
        before, rc, after, _ = data.decode().split("\n", 3)
        assert (before, after) == (uid, uid), data
        assert rc != "rc=0", data
    finally:
        d.stop()
        d.cleanup()
        _kill_account(users.alice)
        if os.path.exists("/etc/pam.d/runas-agent"):
            os.unlink("/etc/pam.d/runas-agent")


# -- a module that hangs leaves nothing behind once the PAM process is given up -------------------

OPEN_HANG = ("/bin/sleep", "7.25")  # a session module's program that hangs in pam_open_session
CLOSE_HANG = ("/bin/sleep", "7.75")  # ... in pam_close_session


def _running_argv(argv: tuple[str, ...]) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if tuple(p.info["cmdline"] or ()) == argv]


@pytest.fixture
def hanging_pam(users: Users) -> Iterator[None]:
    """alice's session stage runs OPEN_HANG when the session opens (for alice's `open` user
    name only: bob's opens at once) and CLOSE_HANG when it closes (pam_exec, as root)."""
    _install(f"session [success=1 default=ignore] pam_succeed_if.so quiet user != {users.alice}\n"
             f"session required pam_exec.so type=open_session {' '.join(OPEN_HANG)}\n"
             f"session required pam_exec.so type=close_session {' '.join(CLOSE_HANG)}\n")
    try:
        yield
    finally:
        for p in _running_argv(OPEN_HANG) + _running_argv(CLOSE_HANG):
            p.kill()
        os.unlink("/etc/pam.d/runas-agent")


def _given_up(code: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_a_module_hanging_in_open_is_killed_with_the_pam_process(hanging_pam: None,
                                                                 users: Users) -> None:
    """The open timeout kills the PAM process and every process its modules started (a
    pam_exec program runs as root): none of them outlives the refused start."""
    res = _given_up(f"""
import json, pwd
from agent import pam
from agent.errors import AgentError
pw = pwd.getpwnam({users.alice!r})
try:
    pam.open_login("runas-agent", pw.pw_name, pw.pw_gid, timeout=1.0)
    print(json.dumps({{"opened": True}}))
except AgentError as exc:
    print(json.dumps({{"reason": exc.reason}}))
""")
    assert res == {"reason": "pam_failed"}, res
    left = _running_argv(OPEN_HANG)
    assert not left, f"a module's program outlived the PAM process: {left}"


def test_a_module_hanging_in_close_is_killed_with_the_pam_process(hanging_pam: None,
                                                                  users: Users) -> None:
    """The close timeout kills the PAM process (pam_close_session did not end: PamFailed) and
    every process its modules started: none of them outlives the session."""
    res = _given_up(f"""
import json, pwd
from agent import pam
from agent.errors import AgentError
pw = pwd.getpwnam({users.bob!r})
opened = pam.open_login("runas-agent", pw.pw_name, pw.pw_gid)
try:
    opened.close(timeout=1.0)
    print(json.dumps({{"closed": True}}))
except AgentError as exc:
    print(json.dumps({{"reason": exc.reason, "message": exc.message}}))
""")
    assert res.get("reason") == "pam_failed", res
    assert "killed" in res["message"], res
    left = _running_argv(CLOSE_HANG)
    assert not left, f"a module's program outlived the PAM process: {left}"
