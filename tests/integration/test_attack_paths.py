"""Files and directories the daemon writes through or believes, attacked by real accounts, with
a real daemon and real files, inside the isolated namespace."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from typing import Any, Optional

import pytest

from agent.client import Client, Session
from agent.registry import process_start_time
from tests.conftest import Users, sh
from tests.support.daemon import DaemonProc, make_daemon

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter the test accounts can execute
LASTLOG = "/var/log/lastlog"
LOGWRITER = "logwriter"  # an account whose group may write /var/log (Ubuntu's `syslog`)
LOGGROUP = "logwriters"
INTRUDER = "regowner"  # owns a directory above the session records
PEERS = "regpeers"
# A start takes a fraction of a second here; a writer stuck on a FIFO takes for ever.
START_BOUND = 15.0


def _as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          timeout=60, cwd="/")


def _gid(group: str) -> int:
    return int(sh("getent", "group", group).split(":")[2])


def _kill_all(user: str) -> None:
    """Every process of USER, gone."""
    uid = str(pwd.getpwnam(user).pw_uid)
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "kill", "-9", "-1"], check=False, capture_output=True)


# -- lastlog: a FIFO planted where the file is expected --------------------------------------


def _release(fifo: str) -> None:
    """Let a writer stuck opening FIFO go on (a reader opens it), so its process can end."""
    try:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_planted_as_lastlog_does_not_hold_up_a_session_start(users: Users) -> None:
    """Whoever may write /var/log (the `syslog` group on Ubuntu, where /var/log is
    root:syslog 0775) replaces lastlog with a FIFO: opening it for writing would wait for a
    reader for ever, in the supervisor, before the shell runs."""
    sh("groupadd", LOGGROUP)
    sh("useradd", "-M", "-s", "/bin/sh", "-G", LOGGROUP, "--", LOGWRITER)
    log_dir = os.stat("/var/log")
    saved = os.path.join(tempfile.mkdtemp(dir="/run"), "lastlog")
    had_lastlog = os.path.exists(LASTLOG)
    if had_lastlog:
        shutil.copy2(LASTLOG, saved)
    os.chown("/var/log", 0, _gid(LOGGROUP))
    os.chmod("/var/log", 0o775)
    d = make_daemon()
    try:
        planted = _as(LOGWRITER, "/bin/sh", "-c", f"rm -f {LASTLOG} && mkfifo -m 0622 {LASTLOG}")
        assert planted.returncode == 0, planted.stderr
        assert stat.S_ISFIFO(os.lstat(LASTLOG).st_mode)
        d.start()
        started: list[Session] = []
        starter = threading.Thread(target=lambda: started.append(Client(d.socket).start(
            session_id="fifo-1", principal_arn="a", tags={TAG: users.bob}, run_as_enabled=True,
            command="echo started", terminal=("xterm", 24, 80))))
        starter.start()
        starter.join(START_BOUND)
        if starter.is_alive():
            _release(LASTLOG)
            starter.join(30)
            pytest.fail(f"a FIFO as {LASTLOG} held up a session start for over {START_BOUND} s")
        assert started, d.log()
        sess = started[0]
        try:
            assert sess.wait() == {"code": 0, "signal": None, "reason": "exited"}
        finally:
            sess.close()
        # The record that could not be written was skipped, and said so.
        deadline = time.monotonic() + 10
        while "lastlog" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"lastlog: {LASTLOG}: not a regular file" in d.log(), d.log()
    finally:
        _release(LASTLOG)
        if d.proc is not None:
            d.stop()
        d.cleanup()
        os.unlink(LASTLOG)
        if had_lastlog:
            shutil.copy2(saved, LASTLOG)
            os.chown(LASTLOG, 0, _gid("utmp"))
        shutil.rmtree(os.path.dirname(saved))
        os.chown("/var/log", log_dir.st_uid, log_dir.st_gid)
        os.chmod("/var/log", stat.S_IMODE(log_dir.st_mode))
        _kill_all(LOGWRITER)


# -- the session records: a directory above them that a user controls ------------------------


def _served(d: DaemonProc) -> tuple[bool, str]:
    """Start the daemon: (True, "") once it answers, (False, its output) if it exits."""
    try:
        d.start()
    except AssertionError:
        assert d.proc is not None
        return False, d.log()
    return True, ""


def _forge(state_dir: str, victim: int, intruder_uid: int) -> None:
    """What the owner of the directory above STATE_DIR can do while the daemon runs: move the
    daemon's directory aside and put one of their own in its place, holding a record of a
    "session" that names VICTIM's process (its start time is public, in /proc) and
    INTRUDER_UID as the peer that started it."""
    record = {"id": "forged", "pid": victim, "pid_start": process_start_time(victim),
              "state": "started", "peer_uid": intruder_uid, "user": "root",
              "started_at": "2000-01-01T00:00:00Z"}
    swap = _as(INTRUDER, "/bin/sh", "-c",
               f"{{ [ ! -e {state_dir} ] || mv {state_dir} {state_dir}.old; }} && "
               f"mkdir -m 0700 {state_dir}")
    assert swap.returncode == 0, swap.stderr
    out = subprocess.run(["runuser", "-u", INTRUDER, "--", "/bin/sh", "-c",
                          f"cat > {state_dir}/forged.json"], input=json.dumps(record),
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr


def _terminate_as(user: str, socket_path: str, pkg: str, session_id: str) -> Any:
    code = (f"import sys, json; sys.path.insert(0, {pkg!r})\n"
            "from agent.client import Client\nfrom agent.errors import AgentError\n"
            f"try:\n    Client({socket_path!r}).terminate({session_id!r}); print('\"ok\"')\n"
            "except AgentError as e:\n    print(json.dumps(e.reason))\n")
    out = _as(user, SYSTEM_PYTHON, "-I", "-c", code)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_daemon_refuses_session_records_under_a_directory_a_user_controls(
        users: Users, agent_pkg: str) -> None:
    """session.state_dir below a directory a user owns: that user swaps the records directory
    for their own and forges a record naming any process, as a session they started; their
    `terminate` then has the root daemon signal that process. The daemon must refuse such a
    state_dir at start-up, as it refuses such a socket path."""
    sh("groupadd", PEERS)
    sh("useradd", "-M", "-s", "/bin/sh", "-G", PEERS, "--", INTRUDER)
    intruder_uid = pwd.getpwnam(INTRUDER).pw_uid
    base = tempfile.mkdtemp(prefix="runas-agent-reg-", dir="/run")
    os.chmod(base, 0o755)
    shared = os.path.join(base, "shared")
    os.mkdir(shared, 0o755)
    os.chown(shared, intruder_uid, -1)
    state = os.path.join(shared, "sessions")
    d = make_daemon({"session": {"state_dir": state}, "socket": {"group": PEERS},
                     "peers": {"allowed_groups": [PEERS]}})
    victim = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a process of root's
    pkg: Optional[str] = None
    try:
        served, out = _served(d)
        if served:
            os.chmod(os.path.dirname(d.socket), 0o755)
            pkg = agent_pkg
            _forge(state, victim.pid, intruder_uid)
            answer = _terminate_as(INTRUDER, d.socket, pkg, "forged")
            try:
                victim.wait(5)
            except subprocess.TimeoutExpired:
                pass
            assert victim.returncode is None, (
                f"{INTRUDER} had the daemon send signal {-victim.returncode} to a process of "
                f"root's through a forged session record (terminate: {answer})")
            pytest.fail(f"the daemon serves with its session records under {shared}, a "
                        f"directory of {INTRUDER}'s")
        assert d.proc is not None
        assert d.proc.returncode == 2, out
        assert f"{shared} is owned by uid {intruder_uid}" in out, out
        assert "session.state_dir" in out, out
        assert not os.path.exists(state)  # nothing created under it
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        d.cleanup()
        victim.kill()
        victim.wait()
        _kill_all(INTRUDER)
        shutil.rmtree(base)
        if pkg is not None:
            shutil.rmtree(pkg)
