"""Attacks on the session's start path (the supervisor's steps around the exec gate), replayed
for real: real accounts, the real daemon, a real PAM stack in the test namespace.

- The session is listed as started once its shell is let through the exec gate, while the exec
  completes. When the exec then fails, the start is refused, but the refusal first undoes what
  the start did (the PAM session's close among them, which a module may make take seconds):
  all that time `sessions` listed as running a session that was refused, with the pid of a
  shell that never ran. A start refused after it was listed is unlisted first.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent.errors import AgentError
from tests.conftest import Users, sh
from tests.support.daemon import REPO, DaemonProc, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
BROKEN = "attk-brokensh"  # an account whose shell cannot be exec'd (a missing interpreter)
CLOSE_SLOW = ("/bin/sleep", "3.25")  # its PAM session's close takes this long (pam_exec)


def _slow_closes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if tuple(p.info["cmdline"] or ()) == CLOSE_SLOW]


@pytest.fixture
def slow_close(users: Users) -> Iterator[DaemonProc]:
    os.makedirs("/var/lib/runas-test", exist_ok=True)
    shell = "/var/lib/runas-test/attk-broken-shell"
    with open(shell, "w") as fh:
        fh.write("#!/nonexistent/interpreter\n")
    os.chmod(shell, 0o755)
    try:
        pwd.getpwnam(BROKEN)
    except KeyError:
        sh("useradd", "-m", "-s", shell, "--", BROKEN)
    with open(SERVICE_FILE) as fh:
        service = fh.read()
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(service
                 + f"session [success=1 default=ignore] pam_succeed_if.so quiet user != {BROKEN}\n"
                 + f"session required pam_exec.so type=close_session {' '.join(CLOSE_SLOW)}\n")
    try:
        with running({"session": {"pam": True}}) as d:
            yield d
    finally:
        for p in _slow_closes():
            p.kill()
        os.unlink("/etc/pam.d/runas-agent")


def test_a_start_refused_after_its_exec_failed_is_never_listed(slow_close: DaemonProc) -> None:
    d = slow_close
    out: dict[str, Any] = {}

    def start() -> None:
        try:
            out["session"] = d.client.start(session_id="exec-fails", principal_arn="arn:x",
                                            tags={TAG: BROKEN}, run_as_enabled=True,
                                            command="true")
        except AgentError as exc:
            out["error"] = exc

    began = time.monotonic()
    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    listed: list[dict[str, Any]] = []
    while starter.is_alive():
        listed += [r for r in d.client.sessions() if r["id"] == "exec-fails"]
        time.sleep(0.02)
    starter.join()
    took = time.monotonic() - began
    assert "session" not in out, "a shell that cannot be exec'd started"
    assert out["error"].reason == "spawn_failed", out
    # The refusal waited for the PAM session's close: the window was there.
    assert took >= float(CLOSE_SLOW[1]) - 0.25, took
    assert d.wait_event("exec-fails", "session.denied")["reason"] == "spawn_failed"
    assert not listed, f"a refused start was listed as a running session: {listed[0]}"
