"""The peer model's pure parts and the client's server check, with real sockets (no root needed):
who sees which session, the per-peer connection share, which socket paths are trusted, and a
client that refuses a server of the wrong uid before sending a byte."""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import protocol
from agent.client import Client
from agent.config import LimitsConfig, parse
from agent.errors import ConfigError, Unreachable, UntrustedServer
from agent.peer import Peer, authorized, is_admin, may_see
from agent.server import check_socket_path, check_state_dir

ALICE = Peer(pid=10, uid=1001, gid=1001, groups=(1001, 50))
ROOT = Peer(pid=1, uid=0, gid=0, groups=(0,))


def test_admins_are_root_and_members_of_an_admin_group() -> None:
    assert is_admin(ROOT, ())
    assert not is_admin(ALICE, ())
    assert is_admin(ALICE, (50,))  # supplementary
    assert is_admin(ALICE, (1001,))  # primary
    assert not is_admin(ALICE, (51,))


def test_groups_are_looked_up_only_when_the_uid_does_not_decide() -> None:
    """The daemon passes group ids that are looked up as they are iterated: root and an allowed
    uid cost no lookup, any other peer is judged by the groups."""
    looked: list[tuple[int, ...]] = []

    def gids(*ids: int) -> Iterator[int]:
        looked.append(ids)
        yield from ids

    assert authorized(ROOT, (), gids(50))
    assert authorized(ALICE, (1001,), gids(50))
    assert is_admin(ROOT, gids(50))
    assert looked == []
    assert authorized(ALICE, (), gids(50))
    assert not authorized(ALICE, (), gids(51))
    assert is_admin(ALICE, gids(1001))
    assert looked == [(50,), (51,), (1001,)]


@pytest.mark.parametrize(("record", "seen"), [
    ({"id": "s", "peer_uid": 1001}, True),
    ({"id": "s", "peer_uid": 1002}, False),
    ({"id": "s", "peer_uid": 0}, False),
    ({"id": "s"}, False),  # a record that does not say who started it
    ({"id": "s", "peer_uid": None}, False),
    ({"id": "s", "peer_uid": "1001"}, False),
])
def test_a_peer_sees_only_the_sessions_it_started(record: dict[str, object],
                                                   seen: bool) -> None:
    assert may_see(ALICE, record, admin=False) is seen
    assert may_see(ALICE, record, admin=True)


def test_admin_groups_and_the_per_peer_share_are_read() -> None:
    cfg = parse("peers: {admin_groups: [ops]}\nlimits: {max_connections: 10}\n")
    assert cfg.peers.admin_groups == ("ops",)
    assert cfg.limits.peer_share() == 2
    assert parse("").peers.admin_groups == ()
    assert parse("").limits.peer_share() == 32
    assert LimitsConfig(max_connections=3).peer_share() == 1
    assert parse("limits: {max_connections: 10, max_connections_per_peer: 10}"
                 ).limits.peer_share() == 10


def test_the_per_peer_share_of_sessions_is_read() -> None:
    assert parse("").session.peer_share() == 64
    assert parse("session: {max_sessions: 10}").session.peer_share() == 2
    assert parse("session: {max_sessions: 3}").session.peer_share() == 1
    assert parse("session: {max_sessions: 10, max_sessions_per_peer: 10}"
                 ).session.peer_share() == 10


def test_the_list_rate_per_peer_defaults_to_ten_and_takes_fractions() -> None:
    assert parse("").limits.list_rate_per_peer == 10
    assert parse("limits: {list_rate_per_peer: 0.5}").limits.list_rate_per_peer == 0.5
    assert parse("limits: {list_rate_per_peer: 0}").limits.list_rate_per_peer == 0


@pytest.mark.parametrize(("text", "message"), [
    ("session: {max_sessions_per_peer: 0}", "session.max_sessions_per_peer: must be"),
    ("session: {max_sessions: 4, max_sessions_per_peer: 5}",
     "session.max_sessions_per_peer: must be between 1 and session.max_sessions (4)"),
    ("session: {max_sessions_per_peer: '3'}",
     "session.max_sessions_per_peer: expected integer or null, got str"),
    ("peers: {admin_groups: ops}", "peers.admin_groups: expected list of string, got str"),
    ("peers: {admin_groups: [1]}", "peers.admin_groups[0]: expected string, got int"),
    ("limits: {max_connections_per_peer: 0}", "limits.max_connections_per_peer: must be"),
    ("limits: {max_connections: 4, max_connections_per_peer: 5}",
     "limits.max_connections_per_peer: must be between 1 and limits.max_connections (4)"),
    ("limits: {max_connections_per_peer: '3'}",
     "limits.max_connections_per_peer: expected integer or null, got str"),
    ("limits: {list_rate_per_peer: -1}", "limits.list_rate_per_peer"),
    ("limits: {list_rate_per_peer: fast}", "limits.list_rate_per_peer: expected number"),
])
def test_bad_peer_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(text)


# -- socket paths ------------------------------------------------------------------------------


def test_a_socket_path_under_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.mkdir()
    os.chmod(weak, 0o1777)  # sticky, like /tmp: still refused
    with pytest.raises(ConfigError, match="every directory above the socket must be owned by "
                                          "root and not writable by group or others"):
        check_socket_path(str(weak / "run" / "agent.sock"))


@pytest.mark.skipif(os.stat("/run").st_uid != 0 or os.stat("/run").st_mode & 0o022 != 0,
                    reason="needs a root-owned /run not writable by others")
def test_the_default_kind_of_path_is_trusted() -> None:
    check_socket_path("/run/runas-agent-not-created/agent.sock")  # missing parts are fine
    check_state_dir("/run/runas-agent-not-created/sessions")


def test_session_records_under_a_directory_others_can_write_are_refused(tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.mkdir()
    os.chmod(weak, 0o1777)  # sticky, like /tmp: still refused
    with pytest.raises(ConfigError, match="every directory above the session records must be "
                                          "owned by root and not writable by group or others"):
        check_state_dir(str(weak / "agent" / "sessions"))


# -- the client checks who serves the socket ---------------------------------------------------


class Listener:
    """A server run by this process (so by this uid) that answers `ping` and counts bytes."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.received: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(65536)
                self.received.append(len(data))
                if data:
                    conn.sendall(protocol.encode(protocol.reply("pong", version="x", pid=1)))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def test_the_client_sends_nothing_to_a_server_of_another_uid(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = Listener(path)
    try:
        other = os.getuid() + 1
        with pytest.raises(UntrustedServer, match=f"runs as uid {os.getuid()}, not uid {other}"):
            Client(path, timeout=5, server_uid=other).ping()
        # The seam: a client told to expect this uid talks to it.
        assert Client(path, timeout=5, server_uid=os.getuid()).ping()["type"] == "pong"
    finally:
        server.close()
    assert server.received == [0, len(protocol.encode({"v": protocol.VERSION, "type": "ping"}))]


def test_by_default_the_client_wants_root() -> None:
    assert Client().server_uid == 0


def _full_queue(path: str) -> socket.socket:
    """A listening socket at PATH whose accept queue is full (of connections already closed)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    fillers = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    for s in fillers:
        s.close()  # still queued: the server has not accepted them
    return server


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: SO_SNDTIMEO on connect")
def test_a_full_accept_queue_makes_the_client_wait_not_fail(tmp_path: Path) -> None:
    """One peer connecting in a loop keeps the daemon's accept queue full most of the time; a
    client that gave up at once (EAGAIN) whenever it is full would be locked out. Here the
    queue is full when the client connects, and the server starts accepting a moment later."""
    path = str(tmp_path / "q.sock")
    server = _full_queue(path)

    def serve() -> None:
        threading.Event().wait(0.3)
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536):
                    conn.sendall(protocol.encode(protocol.reply("pong", version="x", pid=1)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert Client(path, timeout=30, server_uid=os.getuid()).ping()["type"] == "pong"
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: SO_SNDTIMEO on connect")
def test_the_wait_for_room_in_the_queue_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    server = _full_queue(str(tmp_path / "q.sock"))
    try:
        with pytest.raises(Unreachable, match="cannot reach the agent"):
            Client(str(tmp_path / "q.sock"), timeout=0.2, server_uid=os.getuid()).ping()
    finally:
        server.close()
