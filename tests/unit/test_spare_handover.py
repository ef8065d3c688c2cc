"""The handover from the daemon to its spare supervisor, over real socket pairs in one process:
what the spare receives is exactly what the daemon read, and a handover that does not complete
is dropped by the spare and leaves the connection with the daemon."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest

from agent import protocol
from agent.peer import Peer
from agent.server import Daemon, _await_handover, _Conn, _Spare

START = {"v": protocol.VERSION, "type": "start", "session_id": "s-1",
         "principal": {"arn": "arn:x", "tags": {"k": "v"}}, "preferences": {},
         "command": "true", "env": {}, "terminal": None}


class _Wake:
    """The part of agent.session.Signals the spare's wait uses."""

    def __init__(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.terminate = False

    def drain(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **_: Any) -> None:
        self.events.append(event)


@pytest.fixture
def wake() -> Iterator[_Wake]:
    w = _Wake()
    yield w
    os.close(w.wake_r)
    os.close(w.wake_w)


def _daemon(log: _Log, spare: _Spare) -> Daemon:
    d = Daemon(cfg=cast(Any, None), listener=cast(Any, None), platform=cast(Any, None),
               audit=cast(Any, None), registry=cast(Any, None), log=log,
               reload=cast(Any, None))
    d._spare = spare
    return d


def _conn(extra: bytes) -> tuple[_Conn, socket.socket]:
    """A connection as the daemon holds it after reading a start request and EXTRA."""
    server_end, client_end = socket.socketpair()
    decoder = protocol.FrameDecoder(4096)
    decoder.push(protocol.encode(START) + extra)
    msg = decoder.pop()
    conn = _Conn(server_end, Peer(4242, 1001, 1001, (1001, 27)), 0.0, decoder, request=msg)
    return conn, client_end


def test_the_spare_receives_what_the_daemon_read(wake: _Wake) -> None:
    log = _Log()
    ours, theirs = socket.socketpair()
    d = _daemon(log, _Spare(99999, ours))
    extra = protocol.encode({"v": 1, "type": "resize", "rows": 5, "cols": 7}) + b"\x00\x00"
    conn, client = _conn(extra)
    try:
        assert d._hand_over(conn)
        assert d._children == {99999: 1001}  # the session belongs to its peer
        assert d._spare is None
        assert d._want_spare  # a new spare is due
        assert conn.sock.fileno() == -1  # the daemon's copy is closed
        got = _await_handover(theirs, wake)
        assert got is not None
        sock, peer, msg, decoder = got
        assert peer == Peer(4242, 1001, 1001, (1001, 27))
        assert msg == START
        assert protocol.parse_request(msg) == protocol.parse_request(START)
        assert decoder.max_frame == 4096
        assert decoder.buffered() == extra  # the control frame and the partial header after it
        assert not os.get_inheritable(sock.fileno())
        sock.sendall(b"hello")  # the very connection the client holds
        assert client.recv(5) == b"hello"
        sock.close()
    finally:
        client.close()
        theirs.close()


def test_a_handover_to_a_spare_that_is_gone_leaves_the_connection_with_the_daemon() -> None:
    log = _Log()
    ours, theirs = socket.socketpair()
    theirs.close()  # the spare died (not reaped yet)
    d = _daemon(log, _Spare(99998, ours))
    conn, client = _conn(b"")
    try:
        assert not d._hand_over(conn)
        assert log.events == ["spare.handover_failed"]
        assert d._retired == {99998}
        assert d._children == {}
        assert conn.sock.fileno() != -1  # the start forks its own supervisor with it
    finally:
        conn.sock.close()
        client.close()


def test_an_incomplete_handover_is_dropped(wake: _Wake) -> None:
    ours, theirs = socket.socketpair()
    conn, client = _conn(b"")
    head = protocol.encode({"peer": [1, 2, 3, []], "request": START, "max_frame": 4096,
                            "pending": 10})
    try:
        socket.send_fds(ours, [head + b"12345"], [conn.sock.fileno()])
        ours.close()  # the daemon went away before the last 5 bytes
        before = set(os.listdir("/proc/self/fd"))
        assert _await_handover(theirs, wake) is None
        assert set(os.listdir("/proc/self/fd")) <= before  # the received descriptor is closed
    finally:
        conn.sock.close()
        client.close()
        theirs.close()


def test_a_stopped_spare_gives_up_waiting(wake: _Wake) -> None:
    ours, theirs = socket.socketpair()
    try:
        wake.terminate = True
        os.write(wake.wake_w, b"\x0f")
        assert _await_handover(theirs, wake) is None
        ours.close()
        wake.terminate = False
        assert _await_handover(theirs, wake) is None  # the channel ended: the daemon is gone
    finally:
        theirs.close()
