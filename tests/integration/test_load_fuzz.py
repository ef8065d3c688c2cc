"""Load and fuzz, the quick variants CI runs (bench/soak runs the long ones, docs/reliability.md):
sessions in a row and at once leave the daemon as they found it (fds, memory, processes,
records), malformed connections are refused by the daemon itself without growth, and every
hostile account name is refused without a session.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest

from agent.errors import AgentError
from tests.conftest import Users
from tests.support import load
from tests.support.daemon import DaemonProc, make_daemon

pytestmark = pytest.mark.privileged

RSS_SLACK_KB = 1024


@pytest.fixture(scope="module")
def daemon(users: Users) -> Iterator[DaemonProc]:
    load.raise_nofile(4096)
    d = make_daemon({"session": {"max_sessions": 1000}, "limits": {"read_timeout": 1.0},
                     "logging": {"level": "info"}})
    d.start()
    yield d
    d.stop()
    d.cleanup()


def _pid(d: DaemonProc) -> int:
    assert d.proc is not None
    return d.proc.pid


def _settled(d: DaemonProc) -> load.Usage:
    """The daemon's usage once every supervisor has gone."""
    assert load.wait_until(lambda: not load.children_of(_pid(d)), 30)
    return load.Usage.of(_pid(d))


def _started_without_end(d: DaemonProc, prefix: str) -> list[str]:
    events: dict[str, list[str]] = {}
    for r in d.audit():
        sid = str(r.get("session_id", ""))
        if sid.startswith(prefix):
            events.setdefault(sid, []).append(r["event"])
    return [sid for sid, ev in events.items()
            if ev != ["session.requested", "session.started", "session.ended"]]


def test_sessions_in_a_row_leave_no_trace(daemon: DaemonProc, users: Users) -> None:
    c = daemon.client
    warm = load.in_a_row(c, users.bob, 30, "warm", pty_every=3)
    assert warm.failures == []
    before = _settled(daemon)
    out = load.in_a_row(c, users.bob, 300, "row", pty_every=10)
    assert out.failures == []
    assert out.ok == 300
    after = _settled(daemon)
    assert after.fds == before.fds
    assert after.rss_kb - before.rss_kb < RSS_SLACK_KB, (before, after)
    assert _started_without_end(daemon, "row-") == []
    assert os.listdir(daemon.state_dir) == []


def test_concurrent_sessions_are_held_and_end_cleanly(daemon: DaemonProc, users: Users) -> None:
    before = _settled(daemon)
    held, out = load.hold(daemon.client, users.bob, 100, "conc")
    try:
        assert out.failures == []
        assert load.wait_until(lambda: len(load.children_of(_pid(daemon))) == 100, 20)
        assert load.still_running(held) == 100
        assert len(daemon.client.sessions()) == 100
        # The daemon holds nothing per session: its fds do not grow with live sessions (it
        # closes its end of the list connection a moment after answering).
        assert load.wait_until(lambda: load.Usage.of(_pid(daemon)).fds == before.fds, 5)
    finally:
        statuses = load.end_all(held)
    assert Counter(s["reason"] for s in statuses) == {"terminated": 100}
    after = _settled(daemon)
    assert after.fds == before.fds
    assert _started_without_end(daemon, "conc-") == []
    assert os.listdir(daemon.state_dir) == []


def test_malformed_connections_are_refused_without_growth(daemon: DaemonProc) -> None:
    path = daemon.socket
    load.hammer(path, 300, seed=1)  # warm up whatever the daemon allocates once
    before = _settled(daemon)
    audit_size = _size(daemon.audit_path)
    counts = load.hammer(path, 2000, seed=2)
    assert set(counts) <= {"bad_request", "closed"}, counts
    assert counts["bad_request"] > 1000
    assert daemon.client.ping()["type"] == "pong"
    # The daemon closes its end of the last connection a moment after the client has read it.
    assert load.wait_until(lambda: load.Usage.of(_pid(daemon)).fds == before.fds, 5)
    after = load.Usage.of(_pid(daemon))
    assert after.children == 0  # nothing was forked for them
    assert after.rss_kb - before.rss_kb < RSS_SLACK_KB, (before, after)
    assert _size(daemon.audit_path) == audit_size


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def test_hostile_names_are_refused_by_the_daemon(daemon: DaemonProc, users: Users) -> None:
    names = [*load.hostile_names(), ""]
    reasons = {}
    for i, name in enumerate(names):
        sid = f"hostile-{i}"
        with pytest.raises(AgentError) as info:
            daemon.client.start(session_id=sid, principal_arn="arn:fuzz",
                                tags={load.TAG: name}, run_as_enabled=True,
                                command="touch /tmp/hostile-ran")
        reasons[name] = info.value.reason
        if info.value.reason == "invalid_name":
            assert daemon.events(sid) == ["session.requested", "session.denied"]
        elif name == "":
            assert info.value.reason == "run_as_user_missing"  # an empty tag is no tag
        else:
            assert info.value.reason == "bad_request"
            assert "\x00" in name  # the protocol refuses NUL in any string
            assert daemon.events(sid) == []
    assert not os.path.exists("/tmp/hostile-ran")
    assert Counter(reasons.values())["invalid_name"] >= len(names) - 5
    # The same names as the account preference's default user.
    for name in names[:20]:
        if "\x00" in name or not name:
            continue
        with pytest.raises(AgentError) as info:
            daemon.client.start(session_id="hostile-default", principal_arn="arn:fuzz",
                                run_as_enabled=True, default_user=name, command="true")
        assert info.value.reason == "invalid_name"
    assert _settled(daemon).children == 0
