"""What a forked supervisor inherits from the daemon, released before it creates anything.

macOS cannot run here; its one relevant behaviour is modelled by the selector: XNU does not pass
a kqueue descriptor to a forked child (the number is free in the child), and CPython's kqueue
object before 3.12.1 closes that number anyway when closed in the child (gh-110395). The real
fork, the real supervisor set-up (Daemon._become_supervisor) and real descriptors run; only the
session itself (agent.session.run) is replaced by a probe of what the supervisor holds.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
from typing import Any, cast

import pytest

from agent import session
from agent.server import Daemon, _Conn


class XnuKqueueSelector(selectors.SelectSelector):
    """macOS's DefaultSelector as CPython 3.9 runs it on XNU: a kernel descriptor that a fork
    does not inherit, and a close() that closes its number whatever took it since."""

    def __init__(self) -> None:
        super().__init__()
        self.kq = os.open(os.devnull, os.O_RDONLY)

    def fileno(self) -> int:
        return self.kq

    def forked(self) -> None:
        """What XNU does to the child at fork: the kqueue is not there (FP_CLOFORK)."""
        os.close(self.kq)

    def close(self) -> None:
        super().close()
        os.close(self.kq)  # EBADF if nothing took the number, else someone else's descriptor


def _probe(conn: socket.socket, req: Any, ctx: Any, sig: session.Signals,
           held: Any = None) -> int:
    """Stands in for the session: 0 when the supervisor's descriptors are whole."""
    problems = []
    try:
        os.write(sig.wake_w, b"w")
        if os.read(sig.wake_r, 1) != b"w":
            problems.append("wake-up pipe")
    except OSError as exc:
        problems.append(f"wake-up pipe: {exc}")
    try:
        conn.sendall(b"alive")
    except OSError as exc:
        problems.append(f"connection: {exc}")
    if problems:
        os.write(2, ("; ".join(problems) + "\n").encode())
        return 1
    return 0


def _daemon(sel: selectors.BaseSelector, sys_platform: str) -> tuple[Daemon, _Conn, list[Any]]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wake = os.pipe()
    conn_sock, peer_end = socket.socketpair()
    other_sock, other_peer = socket.socketpair()
    conn = _Conn(conn_sock, cast(Any, None), 0.0, cast(Any, None))
    other = _Conn(other_sock, cast(Any, None), 0.0, cast(Any, None))
    d = Daemon(cfg=cast(Any, None), listener=listener, platform=cast(Any, None),
               audit=cast(Any, None), registry=cast(Any, None), log=None,
               reload=cast(Any, None), sys_platform=sys_platform)
    d._wake = wake
    d._conns = {other_sock.fileno(): other}
    return d, conn, [listener, conn_sock, peer_end, other_sock, other_peer, *wake]


def _supervise(d: Daemon, sel: selectors.BaseSelector, conn: _Conn,
               after_fork: Any = None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            if after_fork is not None:
                after_fork()
            code = d._become_supervisor(sel, conn, cast(Any, None))
        except BaseException as exc:
            os.write(2, f"supervisor failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status >> 8 if os.WIFEXITED(status) else -1


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "run", _probe)


def test_supervisor_keeps_its_descriptors_on_macos(probe: None) -> None:
    sel = XnuKqueueSelector()
    d, conn, owned = _daemon(sel, "darwin")
    try:
        assert _supervise(d, sel, conn, after_fork=sel.forked) == 0
        assert owned[2].recv(16) == b"alive"
    finally:
        sel.close()
        for obj in owned:
            obj.close() if hasattr(obj, "close") else os.close(obj)


def test_supervisor_releases_the_daemons_descriptors_on_linux(probe: None) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("epoll")
    sel = selectors.DefaultSelector()
    d, conn, owned = _daemon(sel, "linux")
    try:
        assert _supervise(d, sel, conn) == 0
        assert owned[2].recv(16) == b"alive"
    finally:
        sel.close()
        for obj in owned:
            obj.close() if hasattr(obj, "close") else os.close(obj)
