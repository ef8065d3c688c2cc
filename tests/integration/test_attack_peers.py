"""Attacks by one transport peer on the others, and by a session on the daemon's keyring,
replayed for real: real accounts as peers (clients run through runuser with the system
interpreter), a real daemon, real sockets, inside the isolated namespace."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Users, sh
from tests.integration.test_peers import (
    CLIENT,
    Holder,
    Peers,
    _argv,
    _as,
    _kill_group,
    _list,
    _terminate,
    ensure_accounts,
)
from tests.integration.test_session_keyring import (  # noqa: F401
    Ring,
    _values,
    ring,
    run_to_done,
)
from tests.support.daemon import DaemonProc, make_daemon, read_until

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"


@pytest.fixture(scope="module")
def apeers(users: Users, agent_pkg: str) -> Peers:
    p = Peers(a="apeer-a", b="apeer-b", admin="apeer-adm", group="atransport",
              admin_group="aagentadm", target="apeer-t", pkg=agent_pkg)
    ensure_accounts(p)
    return p


def _config(p: Peers, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cfg: dict[str, dict[str, Any]] = {
        "socket": {"group": p.group},
        "peers": {"allowed_groups": [p.group], "admin_groups": [p.admin_group]},
        "limits": {"max_connections": 8, "read_timeout": 60.0},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@contextlib.contextmanager
def _running(p: Peers, **sections: dict[str, Any]) -> Iterator[DaemonProc]:
    d = make_daemon(_config(p, **sections))
    d.start()
    os.chmod(os.path.dirname(d.socket), 0o755)
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()
        for name in (p.a, p.b, p.target):
            uid = str(p.uid(name))
            subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            "kill", "-9", "-1"], capture_output=True)


def _start_one(p: Peers, d: DaemonProc, user: str, sid: str) -> list[Any]:
    """USER starts one short session: ["started", its exit] or [reason, message]."""
    out: list[Any] = _as(p, user, CLIENT + f"""
try:
    s = Client({d.socket!r}).start(session_id={sid!r}, principal_arn="arn:" + {sid!r},
        tags={{{TAG!r}: {p.target!r}}}, run_as_enabled=True, command="true")
    print(json.dumps(["started", s.wait()["reason"]]))
except AgentError as e:
    print(json.dumps([e.reason, e.message]))""")
    return out


class Flood:
    """One peer's process firing N starts at once (one thread each), holding whatever started
    open until its stdin closes."""

    def __init__(self, p: Peers, d: DaemonProc, user: str, sids: tuple[str, ...]) -> None:
        code = CLIENT + f"""
import sys, threading
got, held = {{}}, []
def one(sid):
    try:
        held.append(Client({d.socket!r}).start(session_id=sid, principal_arn="arn:" + sid,
                    tags={{{TAG!r}: {p.target!r}}}, run_as_enabled=True, command="sleep 120"))
        got[sid] = "started"
    except AgentError as e:
        got[sid] = e.reason
threads = [threading.Thread(target=one, args=(sid,)) for sid in {list(sids)!r}]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(got), flush=True)
sys.stdin.read()
"""
        self.proc = subprocess.Popen(_argv(user, code, p.pkg), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd="/", start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, "the flooding peer did not report"
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else ""
        self.outcomes: dict[str, str] = json.loads(line)

    def stop(self) -> None:
        _kill_group(self.proc)


def _wait_gone(d: DaemonProc, sids: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while {r["id"] for r in d.client.sessions()} & sids:
        assert time.monotonic() < deadline, f"sessions {sids} did not end"
        time.sleep(0.1)


# -- one peer cannot take every session slot ------------------------------------------------------


def test_one_peer_cannot_take_every_session(apeers: Peers) -> None:
    """Peer A fires more starts at once than its share of the node's sessions: exactly its
    share starts, the rest are refused `limit_reached` (and audited), and peer B and root still
    start sessions. The share holds across a daemon restart (the sessions outlive it) and is
    given back when A's sessions end."""
    p = apeers
    share = 8 // 4  # session.max_sessions 8, max_sessions_per_peer left to its default
    # Enough connections that the per-peer connection share does not come first.
    with _running(p, session={"max_sessions": 8}, limits={"max_connections": 64}) as d:
        _flood_sessions(p, d, share)


def _flood_sessions(p: Peers, d: DaemonProc, share: int) -> None:
    sids = tuple(f"fl-a{i}" for i in range(share + 3))
    flood = Flood(p, d, p.a, sids)
    try:
        started = sorted(s for s, what in flood.outcomes.items() if what == "started")
        assert len(started) == share, flood.outcomes
        assert set(flood.outcomes.values()) == {"started", "limit_reached"}, flood.outcomes
        refused = next(s for s, what in flood.outcomes.items() if what == "limit_reached")
        assert d.events(refused) == ["session.requested", "session.denied"]
        assert d.wait_event(refused, "session.denied")["reason"] == "limit_reached"

        assert _start_one(p, d, p.b, "fl-b") == ["started", "exited"]
        assert d.client.start(session_id="fl-root", principal_arn="arn:fl-root",
                              tags={TAG: p.target}, run_as_enabled=True,
                              command="true").wait()["reason"] == "exited"

        # A new daemon counts the sessions it did not start by the peer that started them.
        d.stop()
        d.start()
        assert {r["id"] for r in _list(p, d, p.a)} == set(started)
        assert _start_one(p, d, p.a, "fl-a-after")[0] == "limit_reached"
        assert _start_one(p, d, p.b, "fl-b-after") == ["started", "exited"]
    finally:
        flood.stop()
    _wait_gone(d, set(started))
    assert _start_one(p, d, p.a, "fl-a-again") == ["started", "exited"]


# -- one peer cannot crowd the others out of the socket's queue ---------------------------------


def test_a_peer_flooding_the_socket_with_connects_cannot_lock_the_others_out(
        apeers: Peers) -> None:
    """Peer A connects in a tight loop from three processes, faster than the daemon can accept
    and refuse (beyond its share), so the socket's accept queue is full most of the time. Peer
    B's client must still get through: it waits for room in the queue (within its timeout)
    instead of failing `unreachable` the moment the queue is full."""
    p = apeers
    with _running(p) as d:
        code = f"""
import socket, sys, time
end, said, held = time.monotonic() + 8, False, []
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect({d.socket!r})
    except BlockingIOError:  # the queue is full
        if not said:
            print("full", flush=True)
            said = True
    except OSError:
        pass
    held.append(s)  # kept a while: the daemon must accept and refuse each one
    if len(held) >= 256:
        for s in held:
            s.close()
        held = []
"""
        floods = [subprocess.Popen(_argv(p.a, code, p.pkg), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd="/",
                                   start_new_session=True) for _ in range(3)]
        try:
            for f in floods:
                assert f.stdout is not None
                ready, _, _ = select.select([f.stdout], [], [], 30)
                assert ready, "the queue never filled"
                assert f.stdout.readline() == "full\n"
            got = _as(p, p.b, CLIENT + f"""
out = []
for _ in range(5):
    try:
        out.append(Client({d.socket!r}, timeout=30).ping()["type"])
    except AgentError as e:
        out.append(e.reason)
print(json.dumps(out))""")
            assert got == ["pong"] * 5
            assert all(f.poll() is None for f in floods), "the flood ended before B was served"
        finally:
            for f in floods:
                _kill_group(f)


# -- root's exemptions cannot be claimed from a user namespace ------------------------------------


def test_root_of_a_user_namespace_is_still_the_peer_it_is(apeers: Peers) -> None:
    """Peer A as uid 0 of a user namespace of its own: the kernel reports its real uid, so it
    is no admin (sees and ends none of B's sessions) and its connection share still holds."""
    p = apeers
    with _running(p) as d:
        _as_namespace_root(p, d)


def _as_namespace_root(p: Peers, d: DaemonProc) -> None:
    held = Holder(p, d, p.b, ("ns-b",), "sleep 60")
    try:
        # Inside the namespace the daemon's root is unmapped (the overflow uid).
        code = CLIENT + f"""
import os, socket
c = Client({d.socket!r}, server_uid=os.stat("/proc/1").st_uid)
out = {{"uid": os.getuid(), "list": [r["id"] for r in c.sessions()]}}
try:
    c.terminate("ns-b")
    out["terminate"] = "ok"
except AgentError as e:
    out["terminate"] = e.reason
held = []
for _ in range(8 // 4):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({d.socket!r})
    held.append(s)
try:
    out["ping"] = c.ping()["type"]
except AgentError as e:
    out["ping"] = e.reason
print(json.dumps(out))
"""
        argv = _argv(p.a, code, p.pkg)
        cut = argv.index("--") + 1
        argv[cut:cut] = ["unshare", "--map-root-user", "--"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"uid": 0, "list": [], "terminate": "session_not_found",
                                          "ping": "limit_reached"}
        assert [r["id"] for r in _list(p, d, p.b)] == ["ns-b"]  # untouched
        (rec,) = [r for r in d.audit() if r["event"] == "session.terminate_requested"
                  and r["session_id"] == "ns-b"]
        assert (rec["peer_uid"], rec["allowed"]) == (p.uid(p.a), False)
    finally:
        held.stop()


# -- a session cannot join another keyring by name ------------------------------------------------


def test_a_session_cannot_join_the_daemons_or_another_sessions_keyring_by_name(
        ring: Ring, users: Users) -> None:  # noqa: F811 - the keyring module's fixture
    """KEYCTL_JOIN_SESSION_KEYRING with a name joins an existing keyring of that name only
    where the caller may search it. bob names the daemon's keyring, the name every fresh
    session keyring has (`_ses`, alice's included, with her key in it) and root's user
    keyrings: each time he gets a new keyring of his own, and nothing of root's or alice's."""
    r, d = ring, ring.daemon
    tag = uuid.uuid4().hex[:12]
    alice_key = f"runas_alice_named_{tag}"
    alice = d.client.start(
        session_id=f"kn-alice-{tag}", principal_arn="arn:aws:iam::1:role/A",
        tags={TAG: users.alice}, run_as_enabled=True,
        command=f"keyctl add user {alice_key} alice-topsecret @s >/dev/null\n"
                "echo READY\nread line\n")
    try:
        assert alice.stdout is not None
        read_until(alice.stdout, b"READY\n")
        names = (r.ring, "_ses", "_uid.0", "_uid_ses.0")
        probe = "".join(f"""
echo "ring{i}=$(keyctl session {name} keyctl rdescribe @s 2>&1 | tail -n 1)"
if keyctl session {name} keyctl search @s user {r.daemon_key} >/dev/null 2>&1
then echo daemon{i}=found; else echo daemon{i}=absent; fi
if keyctl session {name} keyctl search @s user {alice_key} >/dev/null 2>&1
then echo alice{i}=found; else echo alice{i}=absent; fi
""" for i, name in enumerate(names)) + "echo DONE\n"
        bob = d.client.start(session_id=f"kn-bob-{tag}", principal_arn="arn:aws:iam::1:role/B",
                             tags={TAG: users.bob}, run_as_enabled=True, command=probe)
        seen = run_to_done(bob)
        bob_uid = str(pwd.getpwnam(users.bob).pw_uid)
        for i, name in enumerate(names):
            kind, owner, _gid, _perm, desc = seen[f"ring{i}"].split(";")
            assert (kind, owner, desc) == ("keyring", bob_uid, name), seen  # new, bob's own
            assert (seen[f"daemon{i}"], seen[f"alice{i}"]) == ("absent", "absent"), seen
    finally:
        if alice.stdin is not None:
            os.close(alice.stdin)
            alice.stdin = None
        alice.wait()
        alice.close()



# -- ownership cannot be taken over through a session id -----------------------------------------


def test_a_colliding_or_reused_session_id_does_not_change_hands(apeers: Peers) -> None:
    """Peer A starts a session under the id of B's live session: refused `session_exists`,
    and the session stays B's. Once B's session has ended, A may reuse the id: the new session
    is A's, and B neither sees nor ends it."""
    p = apeers
    with _running(p) as d:
        held = Holder(p, d, p.b, ("co-1",), "sleep 60")
        try:
            assert _start_one(p, d, p.a, "co-1")[0] == "session_exists"
            (rec,) = _list(p, d, p.b)
            assert (rec["id"], rec["peer_uid"]) == ("co-1", p.uid(p.b))
            assert _list(p, d, p.a) == []
            assert _terminate(p, d, p.a, "co-1")[0] == "session_not_found"
        finally:
            held.stop()
        _wait_gone(d, {"co-1"})
        reuse = Holder(p, d, p.a, ("co-1",), "sleep 60")
        try:
            (rec,) = _list(p, d, p.a)
            assert (rec["id"], rec["peer_uid"]) == ("co-1", p.uid(p.a))
            assert _list(p, d, p.b) == []
            assert _terminate(p, d, p.b, "co-1")[0] == "session_not_found"
            assert _terminate(p, d, p.a, "co-1") == ["ok", ""]
            assert reuse.line()["reason"] == "terminated"
        finally:
            reuse.stop()


# -- admin rights follow the peer's groups as the kernel reports them ---------------------------


def test_a_peer_removed_from_the_admin_group_is_no_admin_any_more(apeers: Peers) -> None:
    """The admin check reads the connecting process's groups from the kernel, not a list the
    daemon keeps per account: once the admin is taken out of `peers.admin_groups`' group, a
    new process of that account sees and ends only its own sessions."""
    p = apeers
    with _running(p) as d:
        held = Holder(p, d, p.b, ("ad-1",), "sleep 60")
        try:
            assert [r["id"] for r in _list(p, d, p.admin)] == ["ad-1"]
            sh("gpasswd", "-d", p.admin, p.admin_group)
            try:
                assert _list(p, d, p.admin) == []
                assert _terminate(p, d, p.admin, "ad-1")[0] == "session_not_found"
            finally:
                sh("gpasswd", "-a", p.admin, p.admin_group)
            assert [r["id"] for r in _list(p, d, p.b)] == ["ad-1"]
        finally:
            held.stop()


def _group_of(user: str, old: str, new: str) -> int:
    """A fresh group OLD with USER in it (OLD and NEW deleted first); its gid."""
    import grp

    for name in (old, new):
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("groupdel", name)
    sh("groupadd", old)
    sh("gpasswd", "-a", user, old)
    return grp.getgrnam(old).gr_gid


def test_a_group_given_a_deleted_admin_groups_id_grants_no_admin(apeers: Peers) -> None:
    """`peers.admin_groups` names groups: the admin group deleted after the daemon loaded it and
    its id given to a new group (`groupadd -g`), a member of that new group is no admin (it
    sees and ends none of another peer's sessions), until the configured name exists again."""
    import grp

    p = apeers
    old, new = "aadm-gone", "aadm-reuse"
    gid = _group_of(p.a, old, new)
    try:
        with _running(p, peers={"admin_groups": [old]}) as d:
            held = Holder(p, d, p.b, ("gr-1",), "sleep 60")
            try:
                # Today's admin: A, a member of the configured group, sees B's session.
                assert [r["id"] for r in _list(p, d, p.a)] == ["gr-1"]
                sh("groupdel", old)
                sh("groupadd", "-g", str(gid), new)
                sh("gpasswd", "-a", p.a, new)
                assert grp.getgrnam(new).gr_gid == gid
                assert _list(p, d, p.a) == []
                assert _terminate(p, d, p.a, "gr-1")[0] == "session_not_found"
                assert [r["id"] for r in _list(p, d, p.b)] == ["gr-1"]  # B's session lives on
                # The configured name back (another id): its members are admins again.
                sh("groupadd", old)
                sh("gpasswd", "-a", p.a, old)
                assert [r["id"] for r in _list(p, d, p.a)] == ["gr-1"]
                assert _terminate(p, d, p.a, "gr-1") == ["ok", ""]
                assert held.line()["reason"] == "terminated"
            finally:
                held.stop()
    finally:
        for name in (old, new):
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("groupdel", name)


def _ping(p: Peers, d: DaemonProc, user: str) -> list[str]:
    """["pong", ""], or [reason, message] of the refusal."""
    out: list[str] = _as(p, user, CLIENT + f"""
try:
    print(json.dumps([Client({d.socket!r}).ping()["type"], ""]))
except AgentError as e:
    print(json.dumps([e.reason, e.message]))""")
    return out


def _unknown_group_warnings(d: DaemonProc, group: str) -> int:
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    return sum(r.get("event") == "config.unknown_group" and r.get("group") == group
               and r.get("key") == "peers.allowed_groups" for r in lines)


def test_a_group_given_a_deleted_allowed_groups_id_allows_nobody(apeers: Peers) -> None:
    """`peers.allowed_groups` names groups: the allowed group deleted after the daemon loaded it
    and its id given to a new group (`groupadd -g`), a member of that new group is refused
    (`unauthorized`), until the configured name exists again."""
    import grp

    p = apeers
    old, new = "aallow-gone", "aallow-reuse"
    gid = _group_of(p.a, old, new)
    try:
        # The socket file is open to the transport group; the daemon allows OLD's members only.
        with _running(p, peers={"allowed_groups": [old]}) as d:
            assert _ping(p, d, p.a) == ["pong", ""]
            assert _ping(p, d, p.b)[0] == "unauthorized"  # in no allowed group
            sh("groupdel", old)
            sh("groupadd", "-g", str(gid), new)
            sh("gpasswd", "-a", p.a, new)
            assert grp.getgrnam(new).gr_gid == gid
            assert _ping(p, d, p.a) == ["unauthorized",
                                        f"uid {p.uid(p.a)} may not use this agent"]
            # A reload warns of the name that no longer resolves, and keeps refusing.
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while _unknown_group_warnings(d, old) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _unknown_group_warnings(d, old) == 1, d.log()
            assert _ping(p, d, p.a)[0] == "unauthorized"
            # The configured name back (another id): its members are allowed again.
            sh("groupadd", old)
            sh("gpasswd", "-a", p.a, old)
            assert _ping(p, d, p.a) == ["pong", ""]
    finally:
        for name in (old, new):
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("groupdel", name)


def test_admin_groups_are_names_a_renamed_group_or_a_look_alike_name_grants_nothing(
        apeers: Peers) -> None:
    """`peers.admin_groups` names a group. A member by supplementary group and one by primary
    group (passwd's gid) are admins; once the group is renamed (`groupmod -n`, same id) neither
    is, until it has its configured name back. Names that only look like it (other case,
    trailing or leading space) grant nothing."""
    import grp

    p = apeers
    name, renamed, prim = "aadm-ren", "aadm-ren2", "apeer-prim"
    with contextlib.suppress(subprocess.CalledProcessError):
        sh("userdel", "-r", prim)
    for g in (name, renamed):
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("groupdel", g)
    sh("groupadd", name)
    sh("gpasswd", "-a", p.a, name)
    sh("useradd", "-m", "-s", "/bin/sh", "-g", name, "-G", p.group, "--", prim)
    assert prim not in grp.getgrnam(name).gr_mem  # a member by its primary group only

    def ids(user: str) -> list[str]:
        return [r["id"] for r in _list(p, d, user)]

    try:
        with _running(p, peers={"admin_groups": [name]}) as d:
            held = Holder(p, d, p.b, ("rn-1",), "sleep 60")
            try:
                assert ids(p.a) == ["rn-1"]
                assert ids(prim) == ["rn-1"]
                sh("groupmod", "-n", renamed, name)
                assert ids(p.a) == []
                assert ids(prim) == []
                assert _terminate(p, d, prim, "rn-1")[0] == "session_not_found"
                sh("groupmod", "-n", name, renamed)
                assert ids(prim) == ["rn-1"]
            finally:
                held.stop()
        looks = [name.upper(), name + " ", " " + name, name + "\n"]
        with _running(p, peers={"admin_groups": looks}) as d:
            held = Holder(p, d, p.b, ("rn-2",), "sleep 60")
            try:
                assert ids(p.a) == []
                assert ids(prim) == []
                assert _terminate(p, d, p.a, "rn-2")[0] == "session_not_found"
            finally:
                held.stop()
    finally:
        subprocess.run(["setpriv", f"--reuid={p.uid(prim)}", f"--regid={p.uid(prim)}",
                        "--clear-groups", "kill", "-9", "-1"], capture_output=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("userdel", "-r", prim)
        for g in (name, renamed):
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("groupdel", g)


def test_a_duplicate_group_entry_grants_admin_by_the_id_the_name_resolves_to(
        apeers: Peers) -> None:
    """/etc/group with the admin group's name twice (another id on the second line, as a hand
    edit or a merged file leaves it): the name resolves to the first line's id, and a member
    listed on the second line only is no admin."""
    import grp

    p = apeers
    name = "aadm-dup"
    with contextlib.suppress(subprocess.CalledProcessError):
        sh("groupdel", name)
    sh("groupadd", name)
    gid = grp.getgrnam(name).gr_gid
    sh("gpasswd", "-a", p.a, name)
    with open("/etc/group") as fh:
        before = fh.read()
    other = gid + 1
    while True:
        try:
            grp.getgrgid(other)
            other += 1
        except KeyError:
            break
    with open("/etc/group", "a") as fh:
        fh.write(f"{name}:x:{other}:{p.b}\n")
    try:
        assert grp.getgrnam(name).gr_gid == gid
        with _running(p, peers={"admin_groups": [name]}) as d:
            held = Holder(p, d, p.admin, ("dup-1",), "sleep 60")  # no admin here
            try:
                assert [r["id"] for r in _list(p, d, p.b)] == []
                assert _terminate(p, d, p.b, "dup-1")[0] == "session_not_found"
                assert [r["id"] for r in _list(p, d, p.a)] == ["dup-1"]
            finally:
                held.stop()
    finally:
        with open("/etc/group", "w") as fh:
            fh.write(before)
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("groupdel", name)


def test_a_peer_that_floods_list_is_refused_and_others_are_not(apeers: Peers) -> None:
    """Each `list` reads every live session's record in the daemon's one loop: a peer that
    asked for it in a tight loop from many connections delayed every other peer's requests by
    seconds. A peer uid (root excepted) gets limits.list_rate_per_peer lists a second, in bursts
    of as many; beyond, `limit_reached` at once; root and the other peers are not held back."""
    p = apeers
    with _running(p, limits={"list_rate_per_peer": 5, "max_connections": 8}) as d:
        got = _as(p, p.a, CLIENT + f"""
import time
def lists(n):
    out = []
    for _ in range(n):
        try:
            Client({d.socket!r}).sessions()
            out.append("ok")
        except AgentError as e:
            out.append(e.reason)
    return out
began = time.monotonic()
out = lists(30)
took = time.monotonic() - began
time.sleep(1.1)  # a second later: five more
print(json.dumps([took, out + lists(5)]))""")
        took, got = got
        assert set(got) == {"ok", "limit_reached"}
        first, later = got[:30], got[30:]
        # The burst, and what refilled while the thirty were asked for.
        assert 5 <= first.count("ok") <= 5 + int(5 * took) + 1, (took, first)
        assert first[:5] == ["ok"] * 5
        assert later == ["ok"] * 5
        assert _list(p, d, p.b) == []  # another peer's first list
        for _ in range(30):
            d.client.sessions()  # root is not limited
        assert len([ln for ln in d.log().splitlines()
                    if "connection.list_rate_reached" in ln]) == 1
