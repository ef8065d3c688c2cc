"""Fault injection against the real daemon, inside the isolated namespace (quick variants for CI;
docs/reliability.md has the decisions and the longer runs):

- the daemon SIGKILLed at random points while sessions start and run: sessions live on, every
  started session's end is recorded, no supervisor is left behind;
- the audit log's filesystem full: sessions are refused with audit_failed, never run without a
  record, and the log never holds a partial line;
- an NSS backend failing: its accounts are refused (user_not_found: Python's pwd cannot tell a
  failed backend from a missing account, so both fail closed the same way), others still work;
- /etc/sudoers.d full while many first Run-As-off sessions arrive at once: all refused with
  ssm_user_failed and sudo left valid; with space again, all run as ssm-user, created once.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from agent.errors import AgentError
from tests.conftest import Users
from tests.integration.test_ssm_user import (
    DIR as SUDOERS_DIR,
)
from tests.integration.test_ssm_user import (
    DROP_IN,
    GOLDEN,
    _fill,
    _small_sudoers_d,
    _sudo_valid,
    _temps,
    clean,  # noqa: F401 - fixture
)
from tests.support import load
from tests.support.daemon import DaemonProc, make_daemon

pytestmark = pytest.mark.privileged

RAN_DIR = "/var/tmp/runas-agent-faults"
# How many times the daemon is SIGKILLed; CI uses the default, longer runs set it (reliability.md).
KILLS = int(os.environ.get("RUNAS_AGENT_FAULT_KILLS", "8"))


@pytest.fixture
def ran_dir(isolated: Any) -> Iterator[str]:
    """Where session commands leave a mark when they really ran (writable by the accounts)."""
    shutil.rmtree(RAN_DIR, ignore_errors=True)
    os.makedirs(RAN_DIR)
    os.chmod(RAN_DIR, 0o1777)
    yield RAN_DIR
    shutil.rmtree(RAN_DIR, ignore_errors=True)


def _ran(directory: str) -> set[str]:
    return set(os.listdir(directory))


def _events(d: DaemonProc) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in d.audit():
        if "session_id" in r:
            out.setdefault(str(r["session_id"]), []).append(str(r["event"]))
    return out


def _processes_of(config_path: str) -> list[int]:
    """Every process running this daemon's command line: the daemon and its supervisors."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{name}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if config_path.encode() in argv and state != "Z":
            pids.append(int(name))
    return pids


# -- the daemon killed at random points ---------------------------------------------------------


def test_daemon_sigkilled_at_random_points(users: Users, ran_dir: str) -> None:
    load.raise_nofile(4096)
    d = make_daemon({"logging": {"level": "warning"}})
    d.start()
    rng = random.Random(6)
    outcomes: list[tuple[str, str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()
    held: list[Any] = []

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            sid = f"kill-{n}-{i}"
            command = f"sleep 0.{rng.randrange(0, 3)}; touch {ran_dir}/{sid}"
            try:
                sess = load.start(d.client, users.bob, sid, command)
            except (AgentError, OSError) as exc:
                with lock:
                    outcomes.append((sid, "refused", getattr(exc, "reason", type(exc).__name__)))
                time.sleep(0.01)
                continue
            try:
                status = sess.wait()
            finally:
                sess.close()
            with lock:
                outcomes.append((sid, "started", status))

    try:
        held_out = load.hold(d.client, users.alice, 5, "kill-held")
        held = held_out[0]
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        kills = 0
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.02, 0.4))
            assert d.proc is not None
            d.proc.kill()
            d.proc.wait()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.1))
            d.start()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert kills == KILLS

        started = [(sid, st) for sid, kind, st in outcomes if kind == "started"]
        assert len(started) >= 2 * KILLS, outcomes
        # Every session that started ran to its own end, whatever happened to the daemon.
        assert [st for _, st in started if st != {"code": 0, "signal": None,
                                                   "reason": "exited"}] == []
        assert {sid for sid, _ in started} <= _ran(ran_dir)
        # The sessions started before the first kill live on, and end normally.
        assert load.still_running(held) == 5
        assert Counter(s["reason"] for s in load.end_all(held)) == {"terminated": 5}
        held = []

        daemon_pid = d.proc.pid if d.proc is not None else -1
        # The daemon, its one idle spare and the process that spare forked ahead for its
        # session's shell (no spare of a killed daemon, nor its process, stays behind).
        assert load.wait_until(lambda: sorted(_processes_of(d.config_path)) == sorted(
            [daemon_pid, *(p for s in load.spares_of(daemon_pid)
                           for p in (s, *load.all_children_of(s)))]), 30), \
            "a supervisor was left behind"
        assert len(load.spares_of(daemon_pid)) == 1
        events = _events(d)
        allowed = (["session.requested", "session.started", "session.ended"],
                   ["session.requested", "session.denied"])
        odd = {sid: ev for sid, ev in events.items() if ev not in allowed}
        assert odd == {}
        # A command ran only for a session whose start is on record.
        for sid in _ran(ran_dir):
            assert events.get(sid, [])[:2] == ["session.requested", "session.started"], sid
        assert os.listdir(d.state_dir) == []
        assert d.client.ping()["type"] == "pong"
    finally:
        stop.set()
        for s in held:
            s.close()
        d.stop()
        d.cleanup()


# -- the audit log's disk full --------------------------------------------------------------------


def _small_audit_fs(d: DaemonProc, size: str) -> str:
    directory = os.path.dirname(d.audit_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", directory],
                   check=True)
    return directory


def _all_lines_parse(path: str) -> int:
    import json

    with open(path, "rb") as fh:
        data = fh.read()
    assert data == b"" or data.endswith(b"\n")
    lines = data.splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


def test_audit_disk_full_refuses_sessions(users: Users, ran_dir: str) -> None:
    d = make_daemon()
    audit_dir = _small_audit_fs(d, "64k")
    d.start()
    try:
        # Full before the first record: every session is refused, nothing runs.
        _fill(audit_dir)
        for i in range(10):
            with pytest.raises(AgentError) as info:
                load.start(d.client, users.bob, f"full-{i}", f"touch {ran_dir}/full-{i}")
            assert info.value.reason == "audit_failed"
        assert _ran(ran_dir) == set()
        assert _all_lines_parse(d.audit_path) == 0
        assert d.client.ping()["type"] == "pong"
        assert d.proc is not None
        daemon_pid = d.proc.pid
        assert load.wait_until(lambda: not load.children_of(daemon_pid), 10)

        # Space again: sessions run, without restarting anything.
        os.unlink(os.path.join(audit_dir, ".filler"))
        assert load.in_a_row(d.client, users.bob, 3, "again").failures == []
        assert _all_lines_parse(d.audit_path) == 9
    finally:
        d.stop()
        d.cleanup()
        subprocess.run(["umount", os.path.dirname(d.audit_path)], check=False)


def test_audit_disk_filling_up_under_sessions(users: Users, ran_dir: str) -> None:
    """The disk fills while sessions start: each one runs fully recorded or is refused with
    audit_failed; a command never runs without its session.requested and session.started on
    record (the shell waits at spawn's gate until session.started is durable); no partial
    line."""
    d = make_daemon()
    _small_audit_fs(d, "16k")
    d.start()
    seen: dict[str, str] = {}
    try:
        for i in range(120):
            sid = f"fill-{i}"
            try:
                sess = load.start(d.client, users.bob, sid, f"touch {ran_dir}/{sid}")
            except AgentError as exc:
                seen[sid] = exc.reason
                continue
            status = sess.wait()
            sess.close()
            seen[sid] = str(status["reason"])
        reasons = Counter(seen.values())
        assert set(reasons) <= {"exited", "audit_failed"}, reasons
        assert reasons["exited"] >= 10
        assert [seen[f"fill-{i}"] for i in range(100, 120)] == ["audit_failed"] * 20
        _all_lines_parse(d.audit_path)
        events = _events(d)
        for sid in _ran(ran_dir):
            assert events[sid][:2] == ["session.requested", "session.started"], \
                (sid, events.get(sid))
        for sid, reason in seen.items():
            if reason == "exited":
                assert events[sid][:2] == ["session.requested", "session.started"]
            else:
                assert "session.ended" not in events.get(sid, []) or \
                    "session.started" in events[sid]
        assert d.client.ping()["type"] == "pong"
    finally:
        d.stop()
        d.cleanup()
        subprocess.run(["umount", os.path.dirname(d.audit_path)], check=False)


# -- an NSS backend failing ---------------------------------------------------------------------


def test_nss_backend_failing_refuses_its_accounts(users: Users) -> None:
    """The extrausers backend (the stand-in for a directory) cannot read its passwd file."""
    import pwd

    d = make_daemon()
    d.start()
    db = "/var/lib/extrausers/passwd"
    os.rename(db, db + ".saved")
    os.mkdir(db)  # reading it fails (EISDIR): the backend is unavailable
    try:
        with pytest.raises(KeyError):
            pwd.getpwnam(users.dirk)
        for i in range(20):
            sid = f"nss-{i}"
            with pytest.raises(AgentError) as info:
                load.start(d.client, users.dirk, sid, "true")
            assert info.value.reason == "user_not_found"
            assert d.events(sid) == ["session.requested", "session.denied"]
        # Accounts of the backends that answer are unaffected.
        assert load.in_a_row(d.client, users.alice, 5, "nss-local").failures == []
    finally:
        os.rmdir(db)
        os.rename(db + ".saved", db)
    # The backend is back: its accounts work again, without restarting the daemon.
    try:
        assert load.in_a_row(d.client, users.dirk, 3, "nss-back").failures == []
    finally:
        d.stop()
        d.cleanup()


# -- sudoers faults under load -------------------------------------------------------------------


def _first_sessions(d: DaemonProc, n: int, prefix: str) -> list[tuple[str, str]]:
    """N Run-As-off sessions released at once; (outcome, detail) for each."""
    gate = threading.Barrier(n)
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        gate.wait()
        try:
            sess = d.client.start(session_id=f"{prefix}-{i}", principal_arn="arn:load",
                                  run_as_enabled=False, command="id -un")
        except AgentError as exc:
            with lock:
                results.append(("refused", exc.reason))
            return
        try:
            assert sess.stdin is not None
            os.close(sess.stdin)
            sess.stdin = None
            out = b""
            assert sess.stdout is not None
            while chunk := os.read(sess.stdout, 4096):
                out += chunk
            status = sess.wait()
        finally:
            sess.close()
        with lock:
            results.append((str(status["reason"]), out.decode().strip()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_sudoers_disk_full_under_concurrent_first_sessions(clean: None, users: Users) -> None:  # noqa: F811
    d = make_daemon({"limits": {"max_connections": 128}})
    d.start()
    try:
        _small_sudoers_d(None)
        _fill(SUDOERS_DIR)
        results = _first_sessions(d, 20, "sudo-full")
        assert Counter(results) == {("refused", "ssm_user_failed"): 20}
        assert not os.path.exists(DROP_IN)
        assert _temps() == []
        _sudo_valid()

        os.unlink(os.path.join(SUDOERS_DIR, ".filler"))
        results = _first_sessions(d, 20, "sudo-ok")
        assert Counter(results) == {("exited", "ssm-user"): 20}
        with open(DROP_IN, "rb") as fh:
            assert fh.read() == GOLDEN
        assert _temps() == []
        _sudo_valid()
        created = [r for r in d.audit() if r["event"] == "ssm_user.created"]
        written = [r for r in d.audit() if r["event"] == "sudoers.written"]
        assert (len(created), len(written)) == (1, 1)
    finally:
        d.stop()
        d.cleanup()
