"""The privileged tests leave the host's /etc, /home and /var exactly as they were.

Named to run after the other privileged tests; it also checks the namespace really did change,
so the comparison cannot pass by looking at the wrong tree.
"""

import pwd

import pytest

from tests.conftest import Isolated, Users, sh
from tests.support.isolation import describe_process, live_processes

pytestmark = pytest.mark.privileged


def test_host_untouched(isolated: Isolated, users: Users) -> None:
    sh("useradd", "-m", "--", "zz-probe")
    assert pwd.getpwnam("zz-probe").pw_dir == "/home/zz-probe"
    after = isolated.iso.host_fingerprint()
    changed = sorted(p for p in set(after) | set(isolated.baseline)
                     if after.get(p) != isolated.baseline.get(p))
    assert changed == []
    assert "/home/zz-probe" not in after
    assert "/home/alice" not in after
    with open("/etc/passwd") as fh:
        assert "zz-probe:" in fh.read()


def test_no_cgroups_left() -> None:
    """No session, daemon or test cgroup of the agent's is left in any hierarchy."""
    import os

    left = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):  # every hierarchy, v1 and v2
        left += [os.path.join(dirpath, d) for d in dirnames
                 if d.startswith(("runas-", "session-")) and "runas" in dirpath + d]
    assert left == []


def test_no_test_account_processes_left(isolated: Isolated) -> None:
    """No process of an account the tests made outlives the tests: a leaked session (a fork
    loop above all) would burden everything that runs after it."""
    import time

    # A process caught in its exit is no leak, nor its zombie until init reaps it: what is
    # still there after a few seconds is. Zombies count, since a fast pid-hopper shows by them.
    deadline = time.monotonic() + 10
    while True:
        pids = [pid for pid, uid in live_processes(zombies=True).items()
                if uid not in isolated.process_uids]
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    left = [describe_process(pid) for pid in pids]
    assert not left, "\n".join(left[:20]) + f"\n({len(left)} processes in all)"
