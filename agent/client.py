"""Client side of the protocol: a small library a Python session transport can import.

Standard library only. docs/protocol.md specifies what it speaks.

    from agent.client import Client
    sess = Client().start(session_id="s-1", principal_arn="arn:...", tags={...},
                          run_as_enabled=True, command="id -un")
    # command session: sess.stdin / sess.stdout / sess.stderr are file descriptors
    # PTY session: sess.master is the PTY master
    status = sess.wait()          # {"code": 0, "signal": None, "reason": "exited"}
"""

from __future__ import annotations

import os
import socket

from agent import protocol
from agent.errors import InternalError, Unreachable, UntrustedServer, error_for
from agent.values import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

DEFAULT_SOCKET = "/run/runas-agent/runas-agent.sock"
MAX_REPLY = 16 * 1024 * 1024


def _connect(path: str, timeout: Optional[float], server_uid: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _connect_waiting(sock, path, timeout)
    except OSError as exc:
        sock.close()
        raise Unreachable(f"cannot reach the agent at {path}: {exc.strerror or exc}",
                          hint="is `runas-agent serve` running, and may you use its socket?"
                          ) from None
    sock.settimeout(timeout)
    try:
        _check_server(sock, path, server_uid)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_waiting(sock: socket.socket, path: str, timeout: Optional[float]) -> None:
    """Connect SOCK to PATH, waiting up to TIMEOUT for room in the daemon's accept queue.
    A socket with a timeout connects without blocking, and a Unix socket's connect then fails
    at once (EAGAIN) whenever the queue is full: one peer connecting in a loop would lock
    every other client out. A blocking connect waits in the kernel for room instead; on Linux
    SO_SNDTIMEO bounds that wait. Elsewhere, or where the option cannot be set, the connect
    does not wait."""
    import sys

    sock.settimeout(None)  # not socket.getdefaulttimeout(): blocking
    if timeout is None:
        sock.connect(path)
        return
    if sys.platform.startswith("linux") and timeout > 0:
        import struct

        sec = int(timeout)
        wait = struct.pack("@ll", sec, max(1, int((timeout - sec) * 1000000)))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wait)
        except OSError:
            pass
        else:
            try:
                sock.connect(path)  # blocking: the socket has no timeout yet
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bytes(len(wait)))
            return
    sock.settimeout(timeout)
    sock.connect(path)


def _check_server(sock: socket.socket, path: str, server_uid: int) -> None:
    """Before a byte is sent: the process listening on PATH must run as SERVER_UID (root), as
    the kernel reports it. Anyone else holding the path (a swapped directory) gets nothing."""
    import sys

    from agent.errors import AgentError
    from agent.peer import read_peer

    try:
        uid = read_peer(sock, sys.platform).uid
    except (OSError, AgentError) as exc:
        raise UntrustedServer(f"cannot tell who serves {path}: {exc}; nothing was sent"
                              ) from None
    if uid != server_uid:
        raise UntrustedServer(
            f"the server on {path} runs as uid {uid}, not "
            f"{'root' if server_uid == 0 else f'uid {server_uid}'}; nothing was sent",
            hint="someone else may have taken over the socket path; check who owns its "
                 "directories")


class _Reader:
    """Reads frames from a connection, collecting any file descriptors sent with them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = protocol.FrameDecoder(MAX_REPLY)
        self.queue: list[dict[str, Any]] = []
        self.fds: list[int] = []

    def read(self) -> Optional[dict[str, Any]]:
        """The next message, or None at end of stream."""
        while not self.queue:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            except ConnectionResetError:  # the daemon died holding unread bytes: a hang-up
                return None
            except socket.timeout:
                raise InternalError("the agent did not answer in time") from None
            except OSError as exc:
                raise InternalError(f"reading from the agent: {exc.strerror or exc}") from None
            for fd in fds:
                os.set_inheritable(fd, False)
            self.fds.extend(fds)
            if not data:
                return None
            self.queue.extend(self.decoder.feed(data))
        return self.queue.pop(0)


def _send(sock: socket.socket, data: bytes) -> None:
    """Send a request (its frame, DATA); if the daemon already refused and closed, its answer
    is still read."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as exc:  # includes the socket's timeout
        raise InternalError(f"writing to the agent: {exc.strerror or exc}") from None


def _raise_if_error(msg: Optional[dict[str, Any]]) -> dict[str, Any]:
    if msg is None:
        raise InternalError("the agent closed the connection without an answer")
    if msg.get("type") == "error":
        raise error_for(str(msg.get("reason")), str(msg.get("message", "")))
    return msg


class Session:
    """A started session. Close it (or let the process exit) to hang up.

    A plain class, not a dataclass: this module is on the command line's start-up path
    (agent.values says why)."""

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, sock: socket.socket, info: dict[str, Any], master: Optional[int],
        stdin: Optional[int], stdout: Optional[int], stderr: Optional[int], _reader: _Reader,
        exit: Optional[dict[str, Any]] = None, last_error: Optional[str] = None,
    ) -> None:
        self.sock = sock
        self.info = info
        self.master = master
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._reader = _reader
        self.exit = exit
        self.last_error = last_error

    def __repr__(self) -> str:
        return (f"Session(sock={self.sock!r}, info={self.info!r}, master={self.master!r}, "
                f"stdin={self.stdin!r}, stdout={self.stdout!r}, stderr={self.stderr!r}, "
                f"exit={self.exit!r}, last_error={self.last_error!r})")

    @property
    def control_fd(self) -> int:
        """Readable when the exit message (or end of stream) arrives."""
        return self.sock.fileno()

    def resize(self, rows: int, cols: int) -> None:
        self.sock.sendall(protocol.encode({"v": protocol.VERSION, "type": "resize",
                                           "rows": rows, "cols": cols}))

    def terminate(self) -> None:
        self.sock.sendall(protocol.encode({"v": protocol.VERSION, "type": "terminate"}))

    def wait(self) -> dict[str, Any]:
        """Block until the session ends; returns {code, signal, reason}."""
        while self.exit is None:
            self.poll()
        return self.exit

    def poll(self) -> Optional[dict[str, Any]]:
        """Handle one message from the agent (call when control_fd is readable): the exit
        status once the session has ended, else None (an error answer to a control frame is
        returned in self.last_error)."""
        if self.exit is not None:
            return self.exit
        msg = self._reader.read()
        if msg is None:
            self.exit = {"code": None, "signal": None, "reason": "lost"}
        elif msg.get("type") == "exit":
            self.exit = {k: msg.get(k) for k in ("code", "signal", "reason")}
        elif msg.get("type") == "error":
            self.last_error = f"{msg.get('reason')}: {msg.get('message')}"
        return self.exit

    def close(self) -> None:
        for fd in (self.master, self.stdin, self.stdout, self.stderr):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.sock.close()


class Client(Frozen):
    """Where the daemon listens and how long to wait for it (a frozen value: agent.values)."""

    __slots__ = ("path", "server_uid", "start_timeout", "timeout")
    path: str
    timeout: Optional[float]  # connecting, and answers to ping/list/terminate
    # A start may take long legitimately (creating ssm-user under a lock, PAM, a slow directory).
    start_timeout: Optional[float]
    # The uid the server must run as. The daemon runs as root; tests can name another.
    server_uid: int

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: Optional[float] = 30.0,
                 start_timeout: Optional[float] = 300.0, server_uid: int = 0) -> None:
        self._init(path=path, timeout=timeout, start_timeout=start_timeout,
                   server_uid=server_uid)

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        data = protocol.encode(msg)  # before connecting: the daemon reads it as it accepts
        sock = _connect(self.path, self.timeout, self.server_uid)
        try:
            _send(sock, data)
            return _raise_if_error(_Reader(sock).read())
        finally:
            sock.close()

    def ping(self) -> dict[str, Any]:
        return self._call({"v": protocol.VERSION, "type": "ping"})

    def sessions(self) -> list[dict[str, Any]]:
        return list(self._call({"v": protocol.VERSION, "type": "list"})["sessions"])

    def terminate(self, session_id: str) -> None:
        self._call({"v": protocol.VERSION, "type": "terminate", "session_id": session_id})

    def start(self, *, session_id: str, principal_arn: str, tags: Mapping[str, str] = {},
              run_as_enabled: Optional[bool] = None, default_user: Optional[str] = None,
              shell_profile: Optional[str] = None, command: Optional[str] = None,
              terminal: Optional[tuple[str, int, int]] = None,
              env: Mapping[str, str] = {}) -> Session:
        """Start a session. terminal=(TERM, rows, cols) asks for a PTY."""
        prefs: dict[str, Any] = {}
        if run_as_enabled is not None:
            prefs["run_as_enabled"] = run_as_enabled
        if default_user is not None:
            prefs["run_as_default_user"] = default_user
        if shell_profile is not None:
            prefs["shell_profile"] = shell_profile
        msg: dict[str, Any] = {
            "v": protocol.VERSION, "type": "start", "session_id": session_id,
            "principal": {"arn": principal_arn, "tags": dict(tags)},
            "preferences": prefs, "command": command, "env": dict(env),
            "terminal": None if terminal is None else
            {"term": terminal[0], "rows": terminal[1], "cols": terminal[2]},
        }
        data = protocol.encode(msg)  # before connecting: the daemon reads it as it accepts
        sock = _connect(self.path, self.timeout, self.server_uid)
        sock.settimeout(self.start_timeout)
        reader = _Reader(sock)
        try:
            _send(sock, data)
            reply = _raise_if_error(reader.read())
        except BaseException:
            for fd in reader.fds:
                os.close(fd)
            sock.close()
            raise
        if reply.get("type") != "started":
            for fd in reader.fds:
                os.close(fd)
            sock.close()
            raise InternalError(f"unexpected reply {reply.get('type')!r} to a start request")
        sock.settimeout(None)
        fds = reader.fds
        reader.fds = []
        if terminal is not None and len(fds) == 1:
            return Session(sock, reply, fds[0], None, None, None, reader)
        if terminal is None and len(fds) == 3:
            return Session(sock, reply, None, fds[0], fds[1], fds[2], reader)
        for fd in fds:
            os.close(fd)
        sock.close()
        raise InternalError(f"the agent sent {len(fds)} descriptors; expected "
                            f"{1 if terminal is not None else 3}")
