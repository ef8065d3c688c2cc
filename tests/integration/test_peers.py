"""Peers of one daemon are not one tenant, and neither side trusts a socket path blindly.

Real accounts as transport peers (clients run through runuser with the system interpreter),
a real daemon, real sockets, inside the isolated namespace.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from agent.client import Client
from agent.errors import AgentError
from tests.conftest import Users, sh
from tests.support.daemon import REPO, DaemonProc, make_daemon, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter the test accounts can execute


@dataclass(frozen=True)
class Peers:
    a: str = "tpeer-a"  # a transport peer
    b: str = "tpeer-b"  # another transport peer
    admin: str = "tpeer-adm"  # a transport peer in peers.admin_groups
    group: str = "transport"  # peers.allowed_groups and socket.group
    admin_group: str = "agentadm"
    target: str = "tpeer-t"  # the account the peers' sessions run as
    pkg: str = ""  # a copy of the agent package the accounts can read

    def uid(self, name: str) -> int:
        return pwd.getpwnam(name).pw_uid


@pytest.fixture(scope="module")
def peers(users: Users, agent_pkg: str) -> Peers:
    p = Peers(pkg=agent_pkg)
    ensure_accounts(p)
    return p


def ensure_accounts(p: Peers) -> None:
    """P's groups and accounts. A module's tests may run apart or between another module's (a
    selection of node ids, as scripts/mutants makes): its fixture then runs again, and what it
    made the first time exists already."""
    for group in (p.group, p.admin_group):
        if not _exists(grp.getgrnam, group):
            sh("groupadd", group)
    for name, groups in ((p.a, p.group), (p.b, p.group),
                         (p.admin, f"{p.group},{p.admin_group}"), (p.target, "")):
        if not _exists(pwd.getpwnam, name):
            sh("useradd", "-m", "-s", "/bin/sh", *(("-G", groups) if groups else ()), "--", name)


def _exists(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def daemon(peers: Peers) -> Iterator[DaemonProc]:
    with running({"socket": {"group": peers.group},
                  "peers": {"allowed_groups": [peers.group],
                            "admin_groups": [peers.admin_group]},
                  "limits": {"max_connections": 8, "read_timeout": 60.0}}) as d:
        os.chmod(os.path.dirname(d.socket), 0o755)
        yield d


def _argv(user: str, code: str, pkg: str) -> list[str]:
    return ["runuser", "-u", user, "--", SYSTEM_PYTHON, "-I", "-c",
            f"import sys; sys.path.insert(0, {pkg!r})\n{code}"]


def _as(p: Peers, user: str, code: str) -> Any:
    """Run CODE as USER (a real process of that account); it prints one JSON value."""
    out = subprocess.run(_argv(user, code, p.pkg), capture_output=True, text=True, timeout=60,
                         cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


CLIENT = "import json\nfrom agent.client import Client\nfrom agent.errors import AgentError\n"


def _list(p: Peers, d: DaemonProc, user: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _as(p, user, CLIENT + f"""
print(json.dumps(Client({d.socket!r}).sessions()))""")
    return rows


def _terminate(p: Peers, d: DaemonProc, user: str, sid: str) -> list[str]:
    """[reason, message] of the refusal, or ["ok", ""]."""
    out: list[str] = _as(p, user, CLIENT + f"""
try:
    Client({d.socket!r}).terminate({sid!r})
    print(json.dumps(["ok", ""]))
except AgentError as e:
    print(json.dumps([e.reason, e.message]))""")
    return out


class Holder:
    """A peer's process holding sessions open (its clients stay connected) until told to stop."""

    def __init__(self, p: Peers, d: DaemonProc, user: str, sids: tuple[str, ...],
                 command: str) -> None:
        code = CLIENT + f"""
sessions = [Client({d.socket!r}).start(session_id=sid, principal_arn="arn:" + sid,
            tags={{{TAG!r}: {p.target!r}}}, run_as_enabled=True, command={command!r})
            for sid in {list(sids)!r}]
print(json.dumps("started"), flush=True)
for s in sessions:
    print(json.dumps(s.wait()), flush=True)
"""
        self.proc = subprocess.Popen(_argv(user, code, p.pkg), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd="/",
                                     start_new_session=True)
        assert self.line() == "started", self.proc.stderr.read() if self.proc.stderr else ""

    def line(self, timeout: float = 30) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the peer's client did not answer in time"
        text = self.proc.stdout.readline()
        assert text, "the peer's client exited"
        return json.loads(text)

    def stop(self) -> None:
        _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill PROC's process group: runuser and the account's process it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _terminate_records(d: DaemonProc, sid: str) -> list[dict[str, Any]]:
    return [r for r in d.audit()
            if r["event"] == "session.terminate_requested" and r["session_id"] == sid]


# -- list and terminate are scoped to the peer that started the session --------------------------


def test_a_peer_sees_and_ends_only_its_own_sessions(daemon: DaemonProc, peers: Peers) -> None:
    d, p = daemon, peers
    secret = "sleep 60 # --token=b-secret"
    held = Holder(p, d, p.b, ("pb-1", "pb-2"), secret)
    try:
        # The owner sees both, command included.
        mine = {r["id"]: r for r in _list(p, d, p.b)}
        assert set(mine) == {"pb-1", "pb-2"}
        assert mine["pb-1"]["command"] == secret
        assert mine["pb-1"]["peer_uid"] == p.uid(p.b)

        # Another peer sees none of them, and cannot end them: its refusal is exactly the
        # answer for an id that does not exist.
        assert _list(p, d, p.a) == []
        refused = _terminate(p, d, p.a, "pb-1")
        absent = _terminate(p, d, p.a, "pb-none")
        assert refused[0] == "session_not_found"
        assert refused[1].replace("pb-1", "ID") == absent[1].replace("pb-none", "ID")
        assert {r["id"] for r in _list(p, d, p.b)} == {"pb-1", "pb-2"}  # still live
        for sid in ("pb-1", "pb-none"):
            (rec,) = _terminate_records(d, sid)
            assert (rec["peer_uid"], rec["allowed"]) == (p.uid(p.a), False)
            assert isinstance(rec["peer_pid"], int)
            assert rec["peer_pid"] > 0

        # Root and a member of peers.admin_groups see everything, command included.
        for who, rows in (("admin", _list(p, d, p.admin)), ("root", d.client.sessions())):
            seen = {r["id"]: r for r in rows}
            assert {"pb-1", "pb-2"} <= set(seen), who
            assert seen["pb-1"]["command"] == secret

        # The admin ends one, the owner the other; both requests are audited as allowed.
        assert _terminate(p, d, p.admin, "pb-1") == ["ok", ""]
        assert _terminate(p, d, p.b, "pb-2") == ["ok", ""]
        assert held.line()["reason"] == "terminated"
        assert held.line()["reason"] == "terminated"
        (by_admin,) = [r for r in _terminate_records(d, "pb-1") if r["allowed"]]
        assert by_admin["peer_uid"] == p.uid(p.admin)
        (by_owner,) = [r for r in _terminate_records(d, "pb-2") if r["allowed"]]
        assert by_owner["peer_uid"] == p.uid(p.b)
    finally:
        held.stop()


def test_the_cli_shows_a_peer_only_its_own_sessions(daemon: DaemonProc, peers: Peers) -> None:
    d, p = daemon, peers
    held = Holder(p, d, p.b, ("pb-cli",), "sleep 60")
    try:
        cli = ("from agent.cli import main\nimport sys\n"
               "sys.exit(main(sys.argv[1:]))")

        def run(user: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*_argv(user, cli, p.pkg), *args, "--socket", d.socket],
                                  capture_output=True, text=True, timeout=60, cwd="/")

        out = run(p.a, "sessions", "--json")
        assert (out.returncode, json.loads(out.stdout)) == (0, []), out.stderr
        out = run(p.a, "terminate", "pb-cli")
        assert out.returncode == 1, out.stderr
        assert "session_not_found" in out.stderr
        out = run(p.b, "sessions", "--json")
        assert [r["id"] for r in json.loads(out.stdout)] == ["pb-cli"], out.stderr
    finally:
        held.stop()


# -- one peer cannot take every connection slot --------------------------------------------------


def test_one_peer_cannot_take_every_connection(daemon: DaemonProc, peers: Peers) -> None:
    d, p = daemon, peers
    share = 8 // 4  # limits.max_connections 8, max_connections_per_peer left to its default
    code = CLIENT + f"""
import socket
held = []
for _ in range({share}):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({d.socket!r})
    held.append(s)  # connected and idle: each takes a slot until the read timeout
try:
    print(json.dumps(Client({d.socket!r}).ping()["type"]), flush=True)
except AgentError as e:
    print(json.dumps(e.reason), flush=True)
sys.stdin.read()
"""
    flood = subprocess.Popen(_argv(p.a, code, p.pkg), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                             start_new_session=True)
    try:
        assert flood.stdout is not None
        assert flood.stdin is not None
        ready, _, _ = select.select([flood.stdout], [], [], 30)
        assert ready, "the flooding peer did not report"
        assert json.loads(flood.stdout.readline()) == "limit_reached"
        # A holds its share; another peer and root are still served.
        assert _as(p, p.b, CLIENT + f"print(json.dumps(Client({d.socket!r}).ping()['type']))"
                   ) == "pong"
        assert d.client.ping()["type"] == "pong"
        assert "connection.peer_limit_reached" in d.log()
        flood.stdin.close()
        flood.wait(30)
    finally:
        _kill_group(flood)


# -- socket path trust: the daemon ---------------------------------------------------------------


def _serve(d: DaemonProc, timeout: float = 20) -> tuple[Optional[int], str]:
    """Run `serve` for D's config; (exit status or None if it kept serving, its stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--config", d.config_path],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err.decode()
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, "still serving"


@pytest.mark.parametrize(("owner", "mode", "says"), [
    ("bob", 0o755, "owned by uid"),  # a user's directory above the socket's own
    ("root", 0o1777, "writable by group and others (even with the sticky bit)"),  # /tmp-style
    ("root", 0o775, "writable by group"),
], ids=["user-owned", "sticky", "group-writable"])
def test_the_daemon_refuses_a_socket_path_under_an_untrusted_directory(
        users: Users, owner: str, mode: int, says: str) -> None:
    base = tempfile.mkdtemp(prefix="runas-agent-path-", dir="/run")
    os.chmod(base, 0o755)
    weak = os.path.join(base, "weak")
    os.mkdir(weak)
    os.chown(weak, pwd.getpwnam(owner).pw_uid, -1)
    os.chmod(weak, mode)
    sock = os.path.join(weak, "agent", "agent.sock")
    d = make_daemon({"socket": {"path": sock}})
    try:
        status, err = _serve(d)
        assert status == 2, err
        assert weak in err, err
        assert says in err, err
        assert not os.path.exists(os.path.dirname(sock))  # nothing created under it
    finally:
        d.cleanup()


def test_a_symlink_in_the_socket_path_is_judged_by_where_it_leads(users: Users) -> None:
    base = tempfile.mkdtemp(prefix="runas-agent-path-", dir="/run")
    os.chmod(base, 0o755)
    weak = os.path.join(base, "weak")
    os.mkdir(weak, 0o755)
    os.chown(weak, pwd.getpwnam(users.bob).pw_uid, -1)
    link = os.path.join(base, "link")
    os.symlink(weak, link)
    d = make_daemon({"socket": {"path": os.path.join(link, "agent", "agent.sock")}})
    try:
        status, err = _serve(d)
        assert status == 2, err
        assert "owned by uid" in err, err
        assert link in err, err
    finally:
        d.cleanup()


def test_the_daemon_refuses_an_inherited_socket_under_an_untrusted_directory(
        users: Users) -> None:
    import socket

    base = tempfile.mkdtemp(prefix="runas-agent-path-", dir="/run")
    os.chmod(base, 0o755)
    weak = os.path.join(base, "weak")
    os.mkdir(weak, 0o755)
    os.chown(weak, pwd.getpwnam(users.bob).pw_uid, -1)
    os.mkdir(os.path.join(weak, "agent"), 0o755)
    path = os.path.join(weak, "agent", "agent.sock")
    d = make_daemon({"socket": {"path": path}})
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(4)
    fd = lsock.fileno()
    wrapper = [sys.executable, "-c",
               f"import os, sys; os.dup2({fd}, 3); os.close({fd});"
               "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1';"
               "os.execv(sys.argv[1], sys.argv[1:])"]
    proc = subprocess.Popen([*wrapper, sys.executable, "-m", "agent", "serve", "--config",
                             d.config_path], env={"PATH": "/usr/bin:/bin"}, pass_fds=(fd,),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    lsock.close()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the daemon served an inherited socket under a user's directory")
    finally:
        d.cleanup()
    assert proc.returncode == 2, err
    assert weak in err.decode(), err


# -- socket path trust: the client ---------------------------------------------------------------


class Impostor:
    """A listener run by a non-root account on a socket path: it reports how many bytes each
    connection brought (it reads once, then hangs up, so a client that talks is not kept
    waiting)."""

    def __init__(self, user: str, path: str) -> None:
        code = f"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind({path!r})
os.chmod({path!r}, 0o777)
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    print(len(c.recv(1 << 20)), flush=True)
    c.close()
"""
        self.proc = subprocess.Popen(["runuser", "-u", user, "--", SYSTEM_PYTHON, "-I", "-c",
                                      code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd="/", start_new_session=True)
        assert self.received() == "ready"

    def received(self, timeout: float = 15) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the listener saw no connection"
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        _kill_group(self.proc)


@pytest.fixture
def impostor(peers: Peers) -> Iterator[tuple[str, Impostor]]:
    base = tempfile.mkdtemp(prefix="runas-agent-evil-", dir="/run")
    os.chmod(base, 0o755)
    own = os.path.join(base, "bob")
    os.mkdir(own, 0o755)
    os.chown(own, peers.uid(peers.b), -1)
    path = os.path.join(own, "agent.sock")
    listener = Impostor(peers.b, path)
    try:
        yield path, listener
    finally:
        listener.stop()


@pytest.mark.parametrize("args", [
    ("session", "--run-as", "--tag", f"{TAG}=tpeer-t", "--", "deploy", "--token=s3cret"),
    ("sessions", "--json"),
    ("terminate", "s-1"),
], ids=["session", "sessions", "terminate"])
def test_the_cli_sends_nothing_to_a_server_that_is_not_root(
        peers: Peers, impostor: tuple[str, Impostor], args: tuple[str, ...]) -> None:
    path, listener = impostor
    proc = subprocess.run([sys.executable, "-m", "agent", args[0], "--socket", path, *args[1:]],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert listener.received() == "0"
    assert proc.returncode == 255, proc.stderr
    assert "untrusted_server" in proc.stderr, proc.stderr
    assert f"uid {peers.uid(peers.b)}" in proc.stderr, proc.stderr


def test_the_client_library_sends_nothing_to_a_server_that_is_not_root(
        peers: Peers, impostor: tuple[str, Impostor]) -> None:
    path, listener = impostor
    client = Client(path, timeout=20)
    calls: list[Callable[[], object]] = [
             client.ping, client.sessions, lambda: client.terminate("s-1"),
             lambda: client.start(session_id="s-1", principal_arn="arn:x",
                                  tags={TAG: peers.target}, run_as_enabled=True,
                                  command="deploy --token=s3cret")]
    for call in calls:
        with pytest.raises(AgentError) as info:
            call()
        assert info.value.reason == "untrusted_server"
        assert listener.received() == "0"
