"""`end_mode: all` ends every process of a session, through the session's own cgroup.

Real daemon, real account, real cgroup2 hierarchy (these machines have a writable one). The
hostile case: a process that forks and exits in a loop, in a new session each generation, with
SIGHUP ignored; no walk of the process tree can catch it, the cgroup does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Optional

import pytest

from agent import cgroup
from tests.conftest import REPO, Users, run_cli, sh, write_config
from tests.integration.test_attack_tracer import OUTER, PTRACE_O_TRACEEXIT
from tests.support.daemon import DaemonProc, make_daemon, running
from tests.support.isolation import live_processes

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
GRACE = 1.0
HOPPER_USER = "hopper"
# Three chains of processes that fork and exit in a loop (each generation in a new session,
# SIGHUP and SIGTERM ignored); every 100 generations a chain writes how far it got.
HOPPER = """\
import os, signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
out = sys.argv[1]
os.fork() and os.fork()
n = 0
while True:
    if os.fork():
        os._exit(0)
    os.setsid()
    n += 1
    if n % 100 == 0:
        tmp = out + "." + str(os.getpid())
        with open(tmp, "w") as fh:
            fh.write(str(n))
        os.rename(tmp, out)
"""


def _v2_mount() -> str:
    with open("/proc/self/mountinfo") as fh:
        mounts = cgroup.parse_mountinfo(fh.read())
    found = [m.point for m in mounts if m.fstype == "cgroup2" and m.root == "/"]
    if not found:
        pytest.fail("no cgroup2 hierarchy mounted (these machines have one)")
    return found[0]


def _runas_cgroups(mount: str) -> list[str]:
    """Every cgroup directory the agent (or these tests) made."""
    out = []
    for dirpath, dirnames, _ in os.walk(mount):
        for d in dirnames:
            if d.startswith(("runas-", "session-")) or d in (cgroup.SESSIONS, cgroup.DAEMON_LEAF):
                out.append(os.path.join(dirpath, d))
    return out


def _procs_of(uid: int) -> list[int]:
    """The live (not zombie) processes whose real uid is UID (the owner of /proc/PID is the
    effective uid, and root for a process that is not dumpable, as after a set-uid exec)."""
    return sorted(pid for pid, real in live_processes().items() if real == uid)


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{pid}/cgroup") as fh:
                where = [x for x in fh.read().splitlines() if x.startswith("0::")]
        except OSError:
            continue
        out.append(f"{pid} {state} {where}")
    return out


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def hopper_account(users: Users) -> Iterator[tuple[str, int]]:
    """An account of its own, so "no process of the account is left" means exactly that: with
    a uid that no other account (nor another test run on this machine) has processes under."""
    uid = 40000 + os.getpid() % 20000
    while _uid_taken(uid) or _procs_of(uid):
        uid += 1
    sh("useradd", "-m", "-u", str(uid), "-s", "/bin/bash", "--", HOPPER_USER)
    with open(f"/home/{HOPPER_USER}/hop.py", "w") as fh:
        fh.write(HOPPER)
    try:
        yield HOPPER_USER, uid
    finally:
        _kill_all_of(uid)  # also after a test that started a hopper without the fixture


def _uid_taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@pytest.fixture
def hopper(hopper_account: tuple[str, int]) -> Iterator[tuple[str, int]]:
    try:
        yield hopper_account
    finally:
        _kill_all_of(hopper_account[1])


def _kill_all_of(uid: int) -> None:
    """kill(-1, SIGKILL) as UID: every process of the account at once (forks cannot outrun
    it), whatever the code under test left."""
    for _ in range(20):
        if not _procs_of(uid):
            return
        # procps kill, not this interpreter: the account may not reach it (a pyenv Python
        # under /root), and then nothing would be killed.
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                        "kill", "-9", "-1"], check=False, capture_output=True)
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def no_cgroups_left() -> Iterator[str]:
    mount = _v2_mount()
    assert _runas_cgroups(mount) == []
    yield mount
    assert _runas_cgroups(mount) == []


def _daemon_config() -> dict[str, dict[str, object]]:
    return {"session": {"end_mode": "all", "grace_period": GRACE, "pam": False}}


def _session_cgroup(d: DaemonProc, sid: str, user: str) -> str:
    out = d.cli("session", "--run-as", "--tag", f"{TAG}={user}", "--session-id", sid, "--",
                "cat", "/proc/self/cgroup")
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.decode().splitlines() if line.startswith("0::"))


def test_fast_hopper_is_gone_within_the_grace_period(hopper: tuple[str, int],
                                                     no_cgroups_left: str) -> None:
    user, uid = hopper
    gen = f"/home/{user}/gen"
    with running(_daemon_config()) as d:
        for i in range(5):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(gen)
            sess = d.client.start(
                session_id=f"hop-{i}", principal_arn="a", tags={TAG: user}, run_as_enabled=True,
                command=f"python3 hop.py {gen} </dev/null >/dev/null 2>&1 & sleep 60")
            deadline = time.monotonic() + 10
            while (_read_int(gen) or 0) < 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert (_read_int(gen) or 0) >= 200, "the hopper never got going"
            t0 = time.monotonic()
            sess.terminate()
            status = sess.wait()
            sess.close()
            took = time.monotonic() - t0
            assert status["reason"] == "terminated"
            assert _procs_of(uid) == [], f"round {i}: survivors {_describe(_procs_of(uid))}"
            last = _read_int(gen)
            time.sleep(0.5)
            assert _read_int(gen) == last, f"round {i}: the hopper is still hopping"
            assert _procs_of(uid) == []
            # Within the grace period (plus the time to report on a loaded machine).
            assert took < GRACE + 2.0, took
            d.wait_event(f"hop-{i}", "session.ended")
            assert [p for p in _runas_cgroups(no_cgroups_left) if "session-" in p] == []


def test_the_shell_starts_in_its_session_cgroup(users: Users, no_cgroups_left: str) -> None:
    with running(_daemon_config()) as d:
        line = _session_cgroup(d, "where-1", users.alice)
        assert line.startswith(f"0::/{cgroup.ROOT_UNIT}/{cgroup.SESSIONS}/session-where-1-"), line
        assert "cgroup.ready" in d.log()


def test_normal_ends_clean_up(hopper: tuple[str, int], no_cgroups_left: str) -> None:
    """The shell exits (leaving a setsid'd process behind), the client hangs up: both end
    every process and remove the session's cgroup."""
    user, uid = hopper
    with running(_daemon_config()) as d:
        sess = d.client.start(session_id="exit-1", principal_arn="a", tags={TAG: user},
                              run_as_enabled=True,
                              command="setsid sleep 300 </dev/null >/dev/null 2>&1 & exit 3")
        status = sess.wait()
        sess.close()
        assert (status["reason"], status["code"]) == ("exited", 3)
        assert _procs_of(uid) == []
        sess = d.client.start(session_id="hup-1", principal_arn="a", tags={TAG: user},
                              run_as_enabled=True,
                              command="setsid sleep 300 </dev/null >/dev/null 2>&1 & sleep 300")
        time.sleep(0.3)
        sess.close()
        d.wait_event("hup-1", "session.ended")
        assert _procs_of(uid) == []
        assert [p for p in _runas_cgroups(no_cgroups_left) if "session-" in p] == []


def test_daemon_in_a_delegated_unit(users: Users, no_cgroups_left: str) -> None:
    """Started in a cgroup of its own (as systemd starts a Delegate=yes unit), the daemon moves
    into the leaf `daemon` and the sessions go to `sessions/` beside it."""
    mount = no_cgroups_left
    unit = os.path.join(mount, f"runas-test-{os.getpid()}")
    os.mkdir(unit)
    origin = os.path.join(mount, _own_v2().lstrip("/"))
    try:
        _move(os.getpid(), unit)
        try:
            ctx = running(_daemon_config())
            d = ctx.__enter__()
        finally:
            _move(os.getpid(), origin)
        try:
            assert d.proc is not None
            with open(f"/proc/{d.proc.pid}/cgroup") as fh:
                assert f"0::/runas-test-{os.getpid()}/daemon\n" in fh.read()
            line = _session_cgroup(d, "unit-1", users.alice)
            assert line.startswith(f"0::/runas-test-{os.getpid()}/sessions/session-unit-1-"), line
        finally:
            ctx.__exit__(None, None, None)
        # The daemon removed the (empty) sessions directory; its own leaf stays (systemd
        # removes the unit's cgroup when it stops).
        assert [n for n in os.listdir(unit) if os.path.isdir(os.path.join(unit, n))] == [
            cgroup.DAEMON_LEAF]
    finally:
        for sub in ("sessions", "daemon", ""):
            path = os.path.join(unit, sub) if sub else unit
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _own_v2() -> str:
    with open("/proc/self/cgroup") as fh:
        return cgroup.parse_proc_cgroup(fh.read())[""]


def _move(pid: int, directory: str) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w") as fh:
        fh.write(str(pid))


def test_config_check_says_which(tmp_path: object) -> None:
    path = write_config(os.path.join(str(tmp_path), "c.yaml"), "session: {end_mode: all}\n")
    out = run_cli("config", "check", path)
    assert out.returncode == 0, out.stderr
    assert "each session in its own cgroup (v2)" in out.stdout
    # Without any cgroup hierarchy (a mount namespace without them): best-effort, said so.
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'umount -l /sys/fs/cgroup && exec "$0" -m agent config check "$1"', sys.executable,
         path], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"session.end_mode: {cgroup.BEST_EFFORT}" in proc.stdout


def test_a_logind_scope_is_the_sessions_cgroup(hopper: tuple[str, int],
                                               no_cgroups_left: str) -> None:
    """Where PAM put the session into a logind scope (pam_systemd does; here pam_exec moves the
    supervisor into a `session-N.scope` the way logind would), the session runs and ends in
    that scope, and the supervisor leaves it before the shell runs."""
    user, uid = hopper
    mount = no_cgroups_left
    top = f"runas-test-{os.getpid()}"
    scope = f"/{top}/user.slice/session-7.scope"
    script = "/etc/runas-test-scope.sh"
    with open(script, "w") as fh:
        fh.write(f"#!/bin/sh\nexec echo $PPID > {mount}{scope}/cgroup.procs\n")
    os.chmod(script, 0o755)
    with open("/etc/pam.d/runas-test-scope", "w") as fh:
        fh.write("account required pam_permit.so\n"
                 f"session required pam_exec.so type=open_session {script}\n")
    os.makedirs(mount + scope)
    gen = f"/home/{user}/gen-scope"
    try:
        cfg = _daemon_config()
        cfg["session"].update(pam=True, pam_service="runas-test-scope")
        with running(cfg) as d:
            line = _session_cgroup(d, "scope-0", user)
            assert line == f"0::{scope}", line
            sess = d.client.start(
                session_id="scope-1", principal_arn="a", tags={TAG: user}, run_as_enabled=True,
                command=f"python3 hop.py {gen} </dev/null >/dev/null 2>&1 & sleep 60")
            supervisor = int(d.client.sessions()[0]["pid"])
            with open(f"/proc/{supervisor}/cgroup") as fh:
                assert "0::/\n" in fh.read()  # back where the daemon is
            deadline = time.monotonic() + 10
            while (_read_int(gen) or 0) < 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert (_read_int(gen) or 0) >= 200, "the hopper never got going"
            sess.terminate()
            assert sess.wait()["reason"] == "terminated"
            sess.close()
            assert _procs_of(uid) == [], _describe(_procs_of(uid))
            # Ending the scope ended the session's processes, not the one closing PAM (this
            # service's stack answers pam_close_session with PAM_IGNORE alone: not a clean close).
            ended = d.wait_event("scope-1", "session.ended")
            assert "pam_close_session did not run" not in ended.get("pam_error", ""), ended
            with open(f"{mount}{scope}/cgroup.procs") as fh:
                assert fh.read() == ""
            # Not the agent's to remove (logind removes its scopes); no cgroup of its own.
            assert os.path.isdir(mount + scope)
            assert [p for p in _runas_cgroups(mount) if "session-" in p] == [mount + scope]
    finally:
        _kill_all_of(uid)
        os.unlink("/etc/pam.d/runas-test-scope")
        os.unlink(script)
        for path in (scope, f"/{top}/user.slice", f"/{top}"):
            _rmdir(mount + path)


def _rmdir(path: str) -> None:
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


@contextlib.contextmanager
def _daemon_without(mounts: str, config: dict[str, dict[str, object]]) -> Iterator[DaemonProc]:
    """A daemon in a mount namespace where MOUNTS (cgroup mount points) are unmounted."""
    d = make_daemon(config)
    d.log_path = os.path.join(d.workdir, "daemon.log")
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             f'umount -l {mounts} && exec "$0" -m agent serve --config "$1"', sys.executable,
             d.config_path], cwd=REPO, stdout=log, stderr=log, start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()
        d.cleanup()


def test_the_v1_freezer_where_v2_is_not_usable(hopper: tuple[str, int],
                                               no_cgroups_left: str) -> None:
    """Only the v1 freezer usable (the cgroup2 mount hidden): the session runs in a freezer
    cgroup, and the hopper is frozen, killed, thawed."""
    user, uid = hopper
    freezer = "/sys/fs/cgroup/freezer"
    if not os.path.isdir(freezer):
        pytest.skip("no v1 freezer hierarchy on this machine")
    assert _runas_cgroups(freezer) == []
    gen = f"/home/{user}/gen-freezer"
    try:
        with _daemon_without(no_cgroups_left, _daemon_config()) as d:
            assert '"kind": "freezer"' in d.log(), d.log()
            out = d.cli("session", "--run-as", "--tag", f"{TAG}={user}", "--", "cat",
                        "/proc/self/cgroup")
            where = [x for x in out.stdout.decode().splitlines() if ":freezer:" in x]
            assert len(where) == 1, out
            assert where[0].split(":", 2)[2].startswith(
                f"/{cgroup.ROOT_UNIT}/{cgroup.SESSIONS}/session-"), out
            for i in range(2):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(gen)
                sess = d.client.start(
                    session_id=f"fz-{i}", principal_arn="a", tags={TAG: user},
                    run_as_enabled=True,
                    command=f"python3 hop.py {gen} </dev/null >/dev/null 2>&1 & sleep 60")
                deadline = time.monotonic() + 10
                while (_read_int(gen) or 0) < 200 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert (_read_int(gen) or 0) >= 200, "the hopper never got going"
                sess.terminate()
                assert sess.wait()["reason"] == "terminated"
                sess.close()
                assert _procs_of(uid) == [], _describe(_procs_of(uid))
                d.wait_event(f"fz-{i}", "session.ended")
        assert _runas_cgroups(freezer) == []
    finally:
        _kill_all_of(uid)


def test_no_usable_cgroup_is_said_and_sessions_still_end(hopper: tuple[str, int],
                                                         no_cgroups_left: str) -> None:
    user, uid = hopper
    with _daemon_without("/sys/fs/cgroup", _daemon_config()) as d:
        assert "cgroup.unavailable" in d.log()
        assert cgroup.BEST_EFFORT in d.log()
        sess = d.client.start(session_id="walk-1", principal_arn="a", tags={TAG: user},
                              run_as_enabled=True,
                              command="setsid sleep 300 </dev/null >/dev/null 2>&1 & sleep 60")
        time.sleep(0.3)
        sess.terminate()
        assert sess.wait()["reason"] == "terminated"
        sess.close()
        assert _procs_of(uid) == []


def test_cgroups_that_cannot_be_emptied_hold_up_the_start_only_so_long(
        hopper: tuple[str, int], no_cgroups_left: str) -> None:
    """Session cgroups whose supervisor is gone and whose members cannot die (a tracer keeps
    each stopped in its exit): the daemon's start-up sweep killed and waited for each in turn,
    SETTLE_TIMEOUT apiece, before it served anyone. Now all are killed at once and waited for
    SETTLE_TIMEOUT in all; those still held stay."""
    uid = hopper[1]
    mount = no_cgroups_left
    lefts: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            gone = subprocess.Popen(["true"])
            gone.wait()
            left = os.path.join(mount, cgroup.ROOT_UNIT, cgroup.SESSIONS,
                                cgroup.session_name(f"held{i}", gone.pid))
            os.makedirs(left)
            lefts.append(left)
            member = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                       "--clear-groups", "--", "sleep", "300"],
                                      start_new_session=True)
            procs.append(member)
            _move(member.pid, left)
            # Held in its exit, once killed, for as long as HOLDER lives.
            holder = subprocess.Popen([sys.executable, "-I", "-c", OUTER, str(member.pid),
                                       str(PTRACE_O_TRACEEXIT)], stdout=subprocess.PIPE)
            procs.insert(0, holder)
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"SEIZED\n"
        began = time.monotonic()
        with running(_daemon_config()) as d:
            took = time.monotonic() - began
            assert '"swept": 0' in d.log(), d.log()
        assert took < cgroup.SETTLE_TIMEOUT + 5, took  # not 3 x SETTLE_TIMEOUT
        assert all(os.path.exists(left) for left in lefts)  # held: left as they are
    finally:
        for p in procs:  # the holders first: their members then finish exiting
            p.kill()
            p.wait()
        _kill_all_of(uid)
        for left in lefts:
            _rmdir(left)
        if lefts:
            _rmdir(os.path.dirname(lefts[0]))
            _rmdir(os.path.dirname(os.path.dirname(lefts[0])))


def test_a_dead_supervisors_cgroup_is_swept(hopper: tuple[str, int],
                                            no_cgroups_left: str) -> None:
    """A session cgroup whose supervisor is gone (killed before it could end the session):
    the daemon ends and removes it at start-up."""
    uid = hopper[1]
    mount = no_cgroups_left
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = os.path.join(mount, cgroup.ROOT_UNIT, cgroup.SESSIONS,
                        cgroup.session_name("crashed", gone.pid))
    os.makedirs(left)
    try:
        orphan = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                   "--clear-groups", "--", "sleep", "300"],
                                  start_new_session=True)
        _move(orphan.pid, left)
        with running(_daemon_config()) as d:
            assert '"swept": 1' in d.log(), d.log()
            assert orphan.wait(5) in (-signal.SIGHUP, -signal.SIGKILL)
            assert not os.path.exists(left)
    finally:
        _kill_all_of(uid)
        for path in (left, os.path.dirname(left), os.path.dirname(os.path.dirname(left))):
            _rmdir(path)
