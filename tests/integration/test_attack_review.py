"""Attacks on the session cgroups of `end_mode: all` and on ssm-user's home trust, replayed
for real (real accounts, real daemon, real cgroup2 hierarchy). Each must be refused or end
with nothing of the attacker's left."""

from __future__ import annotations

import os
import select
import time

import pytest

from tests.integration.test_end_mode_all import (
    _daemon_config,
    _describe,
    _procs_of,
    _runas_cgroups,
    hopper,  # noqa: F401  (fixture)
    hopper_account,  # noqa: F401  (fixture)
    no_cgroups_left,  # noqa: F401  (fixture)
)
from tests.support.daemon import running

pytestmark = pytest.mark.privileged

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


def test_the_session_cannot_leave_or_control_its_cgroup(hopper: tuple[str, int],  # noqa: F811
                                                         no_cgroups_left: str) -> None:  # noqa: F811
    user, uid = hopper
    with running(_daemon_config()) as d:
        sess = d.client.start(session_id="esc-1", principal_arn="a", tags={TAG: user},
                              run_as_enabled=True,
                              command=ESCAPE.format(mount=no_cgroups_left))
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
        assert [p for p in _runas_cgroups(no_cgroups_left) if "session-" in p] == []
