"""spawn's exec gate: BEFORE_EXEC runs while the child, already the account, waits to exec;
if it raises, nothing of the session's command ever runs.

The hooks here are slow on purpose (a record that takes its time to become durable): the child
must still wait for them, so the order of the gate, not who wins a race, decides what runs."""

import os
import pwd
import sys
import time

import pytest

from agent import accounts
from agent.config import PolicyConfig
from agent.environ import build_env
from agent.errors import AuditFailed
from agent.platform.linux import Linux
from agent.spawn import SpawnPlan, spawn
from tests.conftest import Users
from tests.support import spawning
from tests.support.procio import wait_exit

pytestmark = pytest.mark.privileged


@pytest.fixture(autouse=True, params=spawning.WAYS)
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the child forked by spawn() and with it forked ahead (prefork)."""
    monkeypatch.setattr(sys.modules[__name__], "spawn", spawning.spawn_by(request.param))
    return str(request.param)


def _marker(name: str) -> str:
    """A path the session's account may create (under the overlaid /var)."""
    d = "/var/lib/runas-test/gate"
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o1777)
    path = os.path.join(d, name)
    if os.path.exists(path):
        os.unlink(path)
    return path


def _slow_record(marker: str, seconds: float = 1.0) -> None:
    """Take SECONDS, as a slow audit record would; return early if MARKER appears (the command
    ran although its record was not made yet)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(marker):
        time.sleep(0.01)


def _plan(user: str, command: str) -> SpawnPlan:
    acct = accounts.require(user, PolicyConfig(), Linux())
    env = build_env(acct, term=None, client_env={})
    null = os.open("/dev/null", os.O_RDWR)
    return SpawnPlan(acct, command, env, null, null, null, tty=False)


def test_before_exec_sees_the_dropped_child_before_it_runs(users: Users) -> None:
    marker = _marker("seen")
    seen: dict[str, object] = {}

    def look(pid: int) -> None:
        with open(f"/proc/{pid}/status") as fh:
            seen["uid"] = next(x for x in fh if x.startswith("Uid:")).split()[1:]
        _slow_record(marker)
        seen["ran_yet"] = os.path.exists(marker)
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            seen["cmdline"] = fh.read()

    plan = _plan(users.alice, f"touch {marker}")
    pid = spawn(plan, before_exec=look)
    assert wait_exit(pid, 10) == 0
    uid = str(pwd.getpwnam(users.alice).pw_uid)
    assert seen["uid"] == [uid] * 4  # already the account, all four ids
    assert seen["ran_yet"] is False, "the command ran before BEFORE_EXEC returned"
    assert isinstance(seen["cmdline"], bytes)
    assert b"touch" not in seen["cmdline"]  # (still the forked Python, not the shell)
    assert os.path.exists(marker)


def test_a_failing_before_exec_means_nothing_runs(users: Users) -> None:
    marker = _marker("refused")
    pids: list[int] = []

    def refuse(pid: int) -> None:
        pids.append(pid)
        _slow_record(marker)
        raise AuditFailed("no space left for session.started")

    with pytest.raises(AuditFailed):
        spawn(_plan(users.alice, f"touch {marker}"), before_exec=refuse)
    assert len(pids) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # killed and reaped by spawn
    assert not os.path.exists(marker), "the command ran although BEFORE_EXEC failed"


def test_a_child_failing_before_the_gate_is_reported(users: Users) -> None:
    from agent.errors import SpawnFailed

    calls: list[int] = []
    plan = _plan(users.alice, "true")
    import dataclasses

    from agent import values

    broken = dataclasses.replace(plan, account=values.replace(plan.account,
                                                             shell="/nonexistent/sh"))
    with pytest.raises(SpawnFailed):
        spawn(broken, before_exec=calls.append)
    assert calls  # exec failure comes after the gate: the hook ran, the exec then failed


def test_a_slow_after_fork_holds_the_command_back(users: Users) -> None:
    """AFTER_FORK (the fsync of `session.requested`) runs while the child prepares itself; the
    child still waits at the gate until it and BEFORE_EXEC are done."""
    marker = _marker("after-fork-slow")
    seen: dict[str, object] = {}

    def slow(pid: int) -> None:
        seen["forked"] = pid
        _slow_record(marker)
        seen["ran_after_fork"] = os.path.exists(marker)

    def gate(pid: int) -> None:
        seen["gate"] = pid

    pid = spawn(_plan(users.alice, f"touch {marker}"), after_fork=slow, before_exec=gate)
    assert wait_exit(pid, 10) == 0
    assert seen == {"forked": pid, "ran_after_fork": False, "gate": pid}
    assert os.path.exists(marker)


def test_a_failing_after_fork_means_nothing_runs(users: Users) -> None:
    marker = _marker("after-fork-refused")
    gates: list[int] = []

    def refuse(_pid: int) -> None:
        _slow_record(marker, 0.5)
        raise AuditFailed("session.requested could not be made durable")

    with pytest.raises(AuditFailed):
        spawn(_plan(users.alice, f"touch {marker}"), after_fork=refuse,
              before_exec=gates.append)
    assert gates == []  # the gate was never reached
    time.sleep(0.2)
    assert not os.path.exists(marker), "the command ran although AFTER_FORK failed"


def test_after_go_runs_once_the_gate_opened_and_only_then(users: Users) -> None:
    """AFTER_GO (listing the session) runs after BEFORE_EXEC let the child through, while it
    execs; when BEFORE_EXEC refuses, it never runs."""
    order: list[tuple[str, int]] = []
    pid = spawn(_plan(users.alice, "true"),
                before_exec=lambda p: order.append(("gate", p)),
                after_go=lambda p: order.append(("go", p)))
    assert wait_exit(pid, 10) == 0
    assert order == [("gate", pid), ("go", pid)]

    went: list[int] = []

    def refuse(_pid: int) -> None:
        raise AuditFailed("no space left for session.started")

    with pytest.raises(AuditFailed):
        spawn(_plan(users.alice, "true"), before_exec=refuse, after_go=went.append)
    assert went == []
