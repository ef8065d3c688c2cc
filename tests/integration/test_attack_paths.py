"""Files and directories the daemon writes through or believes, attacked by real accounts, with
a real daemon and real files, inside the isolated namespace."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from agent.client import Client, Session
from tests.conftest import Users, sh
from tests.support.daemon import make_daemon

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
LASTLOG = "/var/log/lastlog"
LOGWRITER = "logwriter"  # an account whose group may write /var/log (Ubuntu's `syslog`)
LOGGROUP = "logwriters"
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

