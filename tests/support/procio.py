"""Collect a child's output from pipes or a PTY master, and wait for it, with deadlines."""

import errno
import os
import select
import signal
import time
from collections.abc import Sequence


def drain(fds: Sequence[int], timeout: float = 20.0) -> list[bytes]:
    """Read every fd until EOF (a PTY master: EIO once the slave is closed everywhere).

    Raises TimeoutError carrying what was read when the deadline passes first."""
    out = {fd: bytearray() for fd in fds}
    open_fds = set(fds)
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            got = {fd: bytes(b) for fd, b in out.items()}
            raise TimeoutError(f"no EOF within {timeout}s; read so far: {got!r}")
        for fd, _ in poller.poll(max(1, int(left * 1000))):
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                chunk = b""
            if chunk:
                out[fd] += chunk
            else:
                open_fds.discard(fd)
                poller.unregister(fd)
    return [bytes(out[fd]) for fd in fds]


def wait_exit(pid: int, timeout: float = 20.0) -> int:
    """The wait status of child PID; kills it (SIGKILL) and raises TimeoutError after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"pid {pid} still running after {timeout}s (killed)")
        time.sleep(0.005)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
