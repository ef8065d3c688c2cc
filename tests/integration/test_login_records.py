"""Login records (utmp, wtmp) of PTY sessions through the real daemon, when another local user
holds locks on those files.

utmp and wtmp are world-readable, so any user can take a read lock on them (fcntl F_RDLCK, what
`who` and `last` take while they read). A writer that waits for its write lock (glibc's
pututxline and updwtmpx wait 10 s each) lets that user hold up every PTY session's start and
end. Here a real unprivileged account holds both locks while sessions start and end, and the
timings are compared with the same sessions without the locks, in the same run.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Users, sh
from tests.support.daemon import DaemonProc, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
UTMP = "/var/run/utmp"
WTMP = "/var/log/wtmp"
HOLDER = "lockholder"
RUNS = 3
# What the held locks may add to a start or an end: twice the unlocked time, or the unlocked
# time plus half a second where that is more. The floor keeps a 2-core machine shared with
# other jobs from failing a start of a few tens of milliseconds by noise alone; it is still
# forty times less than the 20 s that the locks cost a writer waiting for them.
SLACK = 0.5

# Run by the unprivileged account with the system interpreter (/root, where the test's own
# interpreter may live, is 0700). Takes a read lock on all of each file and keeps it until its
# stdin closes.
LOCK_HOLDER = r"""
import fcntl, os, sys
fds = [os.open(path, os.O_RDONLY) for path in sys.argv[1:]]
for fd in fds:
    fcntl.lockf(fd, fcntl.LOCK_SH)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def daemon(users: Users) -> Iterator[DaemonProc]:
    made_utmp = not os.path.exists(UTMP)
    if made_utmp:  # as systemd-update-utmp creates it at boot (this machine did not boot one)
        os.close(os.open(UTMP, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o664))
        shutil.chown(UTMP, "root", "utmp")
    # (Kept afterwards, like the suite's other accounts: it exists only in the namespace.)
    sh("useradd", "-M", "-s", "/bin/sh", "--", HOLDER)
    try:
        with running() as d:
            yield d
    finally:
        if made_utmp:
            os.unlink(UTMP)


class Locks:
    """Read locks on utmp and wtmp, held by a process of the unprivileged account HOLDER."""

    def __enter__(self) -> Locks:
        self.proc = subprocess.Popen(
            ["runuser", "-u", HOLDER, "--", "/usr/bin/python3", "-I", "-c", LOCK_HOLDER,
             UTMP, WTMP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "locked\n"
        for path in (UTMP, WTMP):  # held for real: a writer cannot lock the file now
            assert not _writable(path), path
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.communicate("", timeout=10)


def _writable(path: str) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _listed(d: DaemonProc, sid: str) -> bool:
    return any(s["id"] == sid for s in d.client.sessions())


def _session(d: DaemonProc, user: str, sid: str, *,
             locks_from_the_start: bool, locks_at_the_end: bool) -> tuple[float, float, float]:
    """One PTY session whose shell waits for a line. Returns how long the start took, how long
    the exit frame took to come after the shell was told to end, and how long after the exit
    frame the session was still listed (the supervisor releases it after the logout record)."""
    hold = Locks() if locks_from_the_start else None
    if hold is not None:
        hold.__enter__()
    try:
        t0 = time.monotonic()
        sess = d.client.start(session_id=sid, principal_arn="a", tags={TAG: user},
                              run_as_enabled=True, command="read line; echo got-$line",
                              terminal=("xterm", 24, 80))
        start = time.monotonic() - t0
        if hold is None and locks_at_the_end:
            hold = Locks().__enter__()
        try:
            assert sess.master is not None
            t1 = time.monotonic()
            os.write(sess.master, b"x\n")
            status = sess.wait()
            end = time.monotonic() - t1
            assert status == {"code": 0, "signal": None, "reason": "exited"}, status
            t2 = time.monotonic()
            while _listed(d, sid) and time.monotonic() - t2 < 60:
                time.sleep(0.005)
            release = time.monotonic() - t2
        finally:
            sess.close()
    finally:
        if hold is not None:
            hold.__exit__()
    return start, end, release


def _bound(unlocked: float) -> float:
    return max(2 * unlocked, unlocked + SLACK)


def _median(samples: list[tuple[float, float, float]], i: int) -> float:
    return statistics.median(s[i] for s in samples)


def test_locks_another_user_holds_do_not_delay_a_session_start(daemon: DaemonProc,
                                                               users: Users) -> None:
    free = [_session(daemon, users.alice, f"free-start-{i}", locks_from_the_start=False,
                     locks_at_the_end=False) for i in range(RUNS)]
    held = [_session(daemon, users.alice, f"held-start-{i}", locks_from_the_start=True,
                     locks_at_the_end=True) for i in range(RUNS)]
    start_free, start_held = _median(free, 0), _median(held, 0)
    assert start_held <= _bound(start_free), (start_free, start_held)
    # The whole life under the locks: the end is not held up either.
    for i in (1, 2):
        assert _median(held, i) <= _bound(_median(free, i)), (free, held)
    # The records that could not be written were skipped, and said so.
    assert "login record" in daemon.log()
    assert "locked by another process" in daemon.log()


def test_locks_taken_during_a_session_do_not_delay_its_end(daemon: DaemonProc,
                                                           users: Users) -> None:
    free = [_session(daemon, users.alice, f"free-end-{i}", locks_from_the_start=False,
                     locks_at_the_end=False) for i in range(RUNS)]
    held = [_session(daemon, users.alice, f"held-end-{i}", locks_from_the_start=False,
                     locks_at_the_end=True) for i in range(RUNS)]
    # The exit frame comes promptly, and the supervisor lets the session go promptly after it.
    for i in (1, 2):
        assert _median(held, i) <= _bound(_median(free, i)), (free, held)
    assert "logout record" in daemon.log()


def test_records_are_written_when_nobody_holds_the_locks(daemon: DaemonProc,
                                                         users: Users) -> None:
    before = os.stat(WTMP).st_size
    sess = daemon.client.start(session_id="who-1", principal_arn="a", tags={TAG: users.bob},
                               run_as_enabled=True, command="who /var/run/utmp",
                               terminal=("xterm", 24, 80))
    assert sess.master is not None
    out = b""
    while True:
        ready, _, _ = select.select([sess.master], [], [], 10)
        assert ready
        try:
            data = os.read(sess.master, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    sess.wait()
    sess.close()
    tty = str(sess.info["tty"])[len("/dev/"):]
    assert any(line.split()[:2] == [users.bob, tty] for line in out.decode().splitlines()), out
    # Logged out: gone from utmp; login and logout appended to wtmp.
    deadline = time.monotonic() + 10
    while _listed(daemon, "who-1") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f"{users.bob} " not in sh("who", UTMP)
    assert os.stat(WTMP).st_size == before + 2 * 384
    assert users.bob in sh("last", "-w", "-f", WTMP, users.bob)
