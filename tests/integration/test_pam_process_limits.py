"""What PAM's session stage sets in the calling process (pam_limits: resource limits and the
nice value; pam_umask: the umask) reaches the session's processes only, never the root
supervisor: the stage runs in a process of its own (agent.pam.open_login).

The attack replayed: `alice fsize 8` (8 KiB) in limits.d, and an audit log already larger than
that. Had the supervisor taken alice's limit, it could not append `session.started`
(`audit_failed: File too large`) and every alice session would be refused. A lowered hard limit
could not even be put back without CAP_SYS_RESOURCE (which a container's bounding set may lack):
the supervisor must never get it in the first place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import Users
from tests.support.daemon import REPO, DaemonProc, make_daemon, read_until

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
LIMITS_FILE = "/etc/security/limits.d/runas-agent-fsize.conf"
PAD_BYTES = 64 * 1024  # the audit log before the first session: eight times alice's fsize


@pytest.fixture
def daemon(request: pytest.FixtureRequest, users: Users) -> Iterator[DaemonProc]:
    """The shipped PAM service plus pam_umask, alice's limits in limits.d (fsize: the kind given
    by the test's parameter), and a daemon whose audit log is already past alice's fsize."""
    with open(SERVICE_FILE) as fh:
        service = fh.read()
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(service + "session   optional    pam_umask.so umask=0077\n")
    with open(LIMITS_FILE, "w") as fh:
        fh.write(f"{users.alice} {request.param} fsize 8\n"
                 f"{users.alice} soft nofile 1234\n{users.alice} hard nofile 2345\n"
                 f"{users.alice} - priority 7\n")
    d = make_daemon({"session": {"pam": True}})
    os.makedirs(os.path.dirname(d.audit_path), mode=0o700)
    with open(d.audit_path, "w") as fh:
        n = 0
        while fh.tell() < PAD_BYTES:
            fh.write(json.dumps({"ts": "2026-01-01T00:00:00.000Z", "event": "test.padding",
                                 "n": n}) + "\n")
            n += 1
    os.chmod(d.audit_path, 0o600)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()
        for path in (LIMITS_FILE, "/etc/pam.d/runas-agent"):
            if os.path.exists(path):
                os.unlink(path)


def _proc(pid: int) -> dict[str, Any]:
    """What /proc tells of a process's limits, umask and nice value."""
    with open(f"/proc/{pid}/limits") as fh:
        rows = fh.read().splitlines()[1:]
    limits = {ln[:26].strip(): ln[26:].split()[:2] for ln in rows}
    with open(f"/proc/{pid}/status") as fh:
        umask = next(ln.split()[1] for ln in fh if ln.startswith("Umask:"))
    with open(f"/proc/{pid}/stat") as fh:
        nice = fh.read().rsplit(")", 1)[1].split()[16]  # field 19, counted after the comm
    return {"limits": limits, "umask": umask, "nice": nice}


PROBE = ('echo "fsize=$(ulimit -f) nofile=$(ulimit -n)/$(ulimit -Hn) nice=$(nice) '
         'umask=$(umask)"; echo READY; read line || true')


@pytest.mark.parametrize("daemon", ["soft", "hard"], indirect=True)
def test_pam_limits_bind_the_session_not_the_supervisor(daemon: DaemonProc,
                                                        users: Users) -> None:
    assert daemon.proc is not None
    size = os.stat(daemon.audit_path).st_size
    assert size >= PAD_BYTES
    sess = daemon.client.start(
        session_id="pam-fsize", principal_arn="arn:aws:iam::1:role/A", tags={TAG: users.alice},
        run_as_enabled=True, command=PROBE)
    try:
        assert sess.stdout is not None
        assert sess.stdin is not None
        out = read_until(sess.stdout, b"READY\n").decode()
        assert "fsize=8 nofile=1234/2345 nice=7 umask=0077" in out, out
        (record,) = [s for s in daemon.client.sessions() if s["id"] == "pam-fsize"]
        supervisor, shell = _proc(record["pid"]), _proc(record["shell_pid"])
        own = _proc(daemon.proc.pid)
        # The session has what PAM set; its supervisor has the daemon's own back.
        assert shell["limits"]["Max file size"][0] == "8192"
        assert shell["limits"]["Max open files"] == ["1234", "2345"]
        assert (shell["umask"], shell["nice"]) == ("0077", "7")
        assert (supervisor["umask"], supervisor["nice"]) == (own["umask"], own["nice"])
        assert supervisor["limits"] == own["limits"]
        # PAM ran in a root process of its own, the supervisor's child, held for the session.
        (pam_process,) = [p for p in psutil.Process(record["pid"]).children()
                          if p.pid != record["shell_pid"]]
    finally:
        if sess.stdin is not None:
            os.close(sess.stdin)
            sess.stdin = None
        status = sess.wait()
        sess.close()
    assert status.get("code") == 0, status
    daemon.wait_event("pam-fsize", "session.ended")
    assert daemon.events("pam-fsize") == ["session.requested", "session.started",
                                          "session.ended"]
    assert os.stat(daemon.audit_path).st_size > size  # the audit log kept growing
    # The PAM process closed the session and is gone with its supervisor (reaped, no orphan).
    deadline = time.monotonic() + 20
    while pam_process.is_running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pam_process.is_running()


def _sig_ignored(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1], 16) for ln in fh if ln.startswith("SigIgn:"))


@pytest.mark.parametrize("daemon", ["hard"], indirect=True)
def test_the_pam_process_holds_nothing_of_the_client_and_ends_with_its_supervisor(
        daemon: DaemonProc, users: Users) -> None:
    """The PAM process has none of the client's descriptors (no socket, no terminal), ignores
    SIGHUP and SIGINT, and ends the PAM session when its supervisor dies (no orphan left)."""
    sess = daemon.client.start(
        session_id="pam-proc", principal_arn="arn:aws:iam::1:role/A", tags={TAG: users.alice},
        run_as_enabled=True, command=PROBE)
    shell = None
    try:
        assert sess.stdout is not None
        read_until(sess.stdout, b"READY\n")
        (record,) = [s for s in daemon.client.sessions() if s["id"] == "pam-proc"]
        supervisor = psutil.Process(record["pid"])
        shell = record["shell_pid"]
        (pam_process,) = [p for p in supervisor.children() if p.pid != shell]
        targets = {fd: os.readlink(f"/proc/{pam_process.pid}/fd/{fd}")
                   for fd in map(int, os.listdir(f"/proc/{pam_process.pid}/fd"))}
        held = {fd: t for fd, t in targets.items() if fd > 2}
        assert all(t.startswith("pipe:") for t in held.values()), targets
        assert len(held) <= 2, targets  # its report pipe (closed once sent) and its control pipe
        ignored = _sig_ignored(pam_process.pid)
        for signum in (signal.SIGHUP, signal.SIGINT):
            assert ignored & (1 << (signum - 1)), hex(ignored)
        pam_process.send_signal(signal.SIGHUP)
        pam_process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        assert pam_process.status() != psutil.STATUS_ZOMBIE
        supervisor.kill()  # the session's supervisor dies: the PAM process sees its pipe close
        deadline = time.monotonic() + 20
        while (pam_process.is_running() and pam_process.status() != psutil.STATUS_ZOMBIE
               and time.monotonic() < deadline):
            time.sleep(0.02)
        assert (not pam_process.is_running()
                or pam_process.status() == psutil.STATUS_ZOMBIE), "the PAM process stayed"
    finally:
        if shell is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell, signal.SIGKILL)
        sess.close()
