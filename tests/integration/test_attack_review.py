"""Attacks on the session cgroups of `end_mode: all` and on ssm-user's home trust, replayed
for real (real accounts, real daemon, real cgroup2 hierarchy). Each must be refused or end
with nothing of the attacker's left."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent import cgroup
from tests.conftest import Users, sh
from tests.integration.test_end_mode_all import (
    _daemon_config,
    _describe,
    _kill_all_of,
    _move,
    _procs_of,
    _rmdir,
    _runas_cgroups,
    _uid_taken,
    _v2_mount,
)
from tests.support.daemon import running

pytestmark = pytest.mark.privileged

ATTACKER = "cgattacker"


@pytest.fixture(scope="module")
def attacker_account(users: Users) -> Iterator[tuple[str, int]]:
    """An account of its own with a uid no other process has: "nothing of the attacker's is
    left" means exactly that."""
    uid = 30000 + os.getpid() % 9000
    while _uid_taken(uid) or _procs_of(uid):
        uid += 1
    sh("useradd", "-m", "-u", str(uid), "-s", "/bin/bash", "--", ATTACKER)
    try:
        yield ATTACKER, uid
    finally:
        _kill_all_of(uid)  # whatever a test of the module left


@pytest.fixture
def clean_cgroups() -> Iterator[str]:
    """The cgroup2 mount; no cgroup of the agent's before or after."""
    mount = _v2_mount()
    assert _runas_cgroups(mount) == []
    yield mount
    assert _runas_cgroups(mount) == []


@pytest.fixture
def hopper(attacker_account: tuple[str, int]) -> Iterator[tuple[str, int]]:
    try:
        yield attacker_account
    finally:
        _kill_all_of(attacker_account[1])

TAG = "SSMSessionRunAs"

# The session's shell tries every way out of (or into the control of) its own cgroup; each
# attempt prints ok or no. A setsid'd sleeper is started after each try, wherever it ended up.
ESCAPE = """\
m={mount}; cg=$m$(sed -n 's/^0:://p' /proc/self/cgroup)
try() {{ if sh -c "$1" 2>/dev/null; then echo "ok $2"; else echo "no $2"; fi; }}
try "echo \\$\\$ > $cg/../cgroup.procs" parent
try "echo \\$\\$ > $m/cgroup.procs" root
try "mkdir $cg/sub" mkdir
try "echo \\$\\$ > $cg/sub/cgroup.procs" sub
try "echo 0 > $cg/cgroup.freeze" freeze
try "echo +pids > $cg/cgroup.subtree_control" subtree
try "touch $cg/x" create
try "unshare -Ur sh -c 'echo \\$\\$ > $m/cgroup.procs'" userns
setsid sleep 300 </dev/null >/dev/null 2>&1 &
echo started
sleep 300
"""


def test_the_session_cannot_leave_or_control_its_cgroup(hopper: tuple[str, int],
                                                         clean_cgroups: str) -> None:
    user, uid = hopper
    with running(_daemon_config()) as d:
        sess = d.client.start(session_id="esc-1", principal_arn="a", tags={TAG: user},
                              run_as_enabled=True,
                              command=ESCAPE.format(mount=clean_cgroups))
        assert sess.stdout is not None
        out = b""
        deadline = time.monotonic() + 15
        while b"started" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([sess.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(sess.stdout, 4096)
                if not chunk:
                    break
                out += chunk
        sess.terminate()
        status = sess.wait()
        sess.close()
        text = out.decode(errors="replace")
        assert "ok " not in text, text
        assert all(f"no {w}" in text for w in ("parent", "root", "mkdir", "sub", "freeze",
                                                  "subtree", "create", "userns")), text
        assert status["reason"] == "terminated"
        assert _procs_of(uid) == [], _describe(_procs_of(uid))
        d.wait_event("esc-1", "session.ended")
        assert [p for p in _runas_cgroups(clean_cgroups) if "session-" in p] == []


def test_a_pid_reused_by_the_sessions_own_process_does_not_keep_its_cgroup(
        hopper: tuple[str, int], clean_cgroups: str) -> None:
    """The supervisor was killed; the session's processes fork until one of them gets the
    supervisor's pid. The start-up sweep must still end the cgroup: a pid in a session
    cgroup's name is its supervisor only while that pid is a root process outside it."""
    uid = hopper[1]
    mount = clean_cgroups
    sessions = os.path.join(mount, cgroup.ROOT_UNIT, cgroup.SESSIONS)
    orphan = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                               "--clear-groups", "--", "sleep", "300"],
                              start_new_session=True)
    # The same pid as the name says: the user's process now holds the supervisor's pid.
    left = os.path.join(sessions, cgroup.session_name("crashed", orphan.pid))
    other = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                              "--clear-groups", "--", "sleep", "300"],
                             start_new_session=True)
    # And a pid taken by a process of the account outside the cgroup.
    left2 = os.path.join(sessions, cgroup.session_name("crashed2", other.pid))
    orphan2 = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                "--clear-groups", "--", "sleep", "300"],
                               start_new_session=True)
    try:
        os.makedirs(left)
        os.makedirs(left2)
        _move(orphan.pid, left)
        _move(orphan2.pid, left2)
        with running(_daemon_config()) as d:
            assert '"swept": 2' in d.log(), d.log()
            assert orphan.wait(5) in (-signal.SIGHUP, -signal.SIGKILL)
            assert orphan2.wait(5) in (-signal.SIGHUP, -signal.SIGKILL)
            assert not os.path.exists(left)
            assert not os.path.exists(left2)
    finally:
        _kill_all_of(uid)
        for proc in (orphan, other, orphan2):
            with contextlib.suppress(Exception):
                proc.wait(5)
        for path in (left, left2, sessions, os.path.dirname(sessions)):
            _rmdir(path)
