"""The supervisor's relay between a session and its client, for recorded sessions: bytes copied
without blocking through bounded buffers, each chunk shown to the recorder on its way.

A pump reads its source only while its buffer has room (CHUNK at most), so a destination that
does not take bytes (a client that stops reading, a shell that reads no input) stops the pump's
reading, and the writer on the other side blocks as it would without the relay: the supervisor
never grows its memory and never blocks.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

CHUNK = 65536
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.EIO, errno.EBADF, errno.ENOTCONN)


def _read(fd: int) -> Optional[bytes]:
    """None: nothing there yet; b"": end (a PTY master whose slave is closed gives EIO)."""
    try:
        return os.read(fd, CHUNK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exc:
        if exc.errno in _GONE:
            return b""
        raise


class Pump:
    """SRC -> DST. ON_DATA sees every chunk read and says whether it may go on to DST
    (False: the chunk is dropped, e.g. the recording could not take it). At the end of SRC,
    DST is closed when CLOSE_DST (a pipe: its reader gets end-of-file); when DST is gone, SRC
    is closed when CLOSE_SRC (a pipe: its writer gets EPIPE, as without the relay)."""

    def __init__(self, src: int, dst: int, on_data: Callable[[bytes], bool], *,
                 close_dst: bool, close_src: bool) -> None:
        self.src, self.dst, self.on_data = src, dst, on_data
        self.close_dst, self.close_src = close_dst, close_src
        self.buf = bytearray()
        self.src_open = True
        self.dst_open = True

    def interest(self) -> list[tuple[int, int]]:
        out = []
        if self.src_open and len(self.buf) < CHUNK:
            out.append((self.src, READ))
        if self.dst_open and self.buf:
            out.append((self.dst, WRITE))
        return out

    def readable(self) -> int:
        """Read what is there, up to the buffer's room (a PTY gives a few KiB a read: one chunk
        per wake-up would cost a loop per few KiB); returns how much was read."""
        data = b""
        end = False
        while self.src_open and len(self.buf) + len(data) < CHUNK:
            got = _read(self.src)
            if got is None:
                break
            if not got:
                end = True
                break
            data += got
        if data and self.on_data(data) and self.dst_open:
            self.buf += data
            self.writable()
        if end:
            self._src_done()
        return len(data)

    def writable(self) -> None:
        if not self.dst_open or not self.buf:
            return
        try:
            n = os.write(self.dst, self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            self._dst_gone()
            return
        del self.buf[:n]
        if not self.buf and not self.src_open:
            self._finish_dst()

    def _src_done(self) -> None:
        self.src_open = False
        if self.close_src:
            os.close(self.src)
        if not self.buf:
            self._finish_dst()

    def _finish_dst(self) -> None:
        if self.close_dst and self.dst_open:
            self.dst_open = False
            os.close(self.dst)

    def _dst_gone(self) -> None:
        self.buf.clear()
        if self.close_dst:
            os.close(self.dst)
        self.dst_open = False
        if self.close_src and self.src_open:
            self.src_open = False
            os.close(self.src)


class Relay:
    """The pumps of one session and the fds the supervisor holds for them."""

    def __init__(self, pumps: list[Pump], held: set[int]) -> None:
        self.pumps = pumps
        self.held = held  # closed at the end unless a pump closed them already
        for fd in held:
            os.set_blocking(fd, False)
        self._registered: dict[int, int] = {}

    def sync(self, sel: selectors.BaseSelector) -> None:
        """Make SEL watch what the pumps wait for (data "relay")."""
        want: dict[int, int] = {}
        for p in self.pumps:
            for fd, ev in p.interest():
                want[fd] = want.get(fd, 0) | ev
        for fd in list(self._registered):
            if fd not in want:
                sel.unregister(fd)
                del self._registered[fd]
        for fd, ev in want.items():
            have = self._registered.get(fd)
            if have is None:
                sel.register(fd, ev, "relay")
            elif have != ev:
                sel.modify(fd, ev, "relay")
            self._registered[fd] = ev

    def handle(self, fd: int, mask: int) -> None:
        for p in self.pumps:
            if mask & WRITE and p.dst == fd and p.dst_open:
                p.writable()
            if mask & READ and p.src == fd and p.src_open:
                p.readable()

    def unregister(self, sel: selectors.BaseSelector) -> None:
        for fd in self._registered:
            sel.unregister(fd)
        self._registered.clear()

    def drain(self, deadline: float, *, sweep: int = 1 << 20) -> None:
        """At the session's end: take what the sources still hold and deliver what is buffered,
        until nothing is left or DEADLINE. A destination that did not take it all by then loses
        the rest, and its source is read on without it (up to SWEEP bytes: what is still there
        is recorded all the same)."""
        try:
            self._deliver(deadline)
        finally:
            for p in self.pumps:
                if p.dst_open and p.buf:
                    p.buf.clear()
                    p.dst_open = False
                    if p.close_dst:
                        os.close(p.dst)
                taken = 0
                while taken < sweep and not p.dst_open and p.src_open:
                    got = p.readable()
                    if not got:
                        break
                    taken += got

    def _deliver(self, deadline: float) -> None:
        sel = selectors.DefaultSelector()
        try:
            while time.monotonic() < deadline:
                progress = False
                for p in self.pumps:
                    # a source that never runs dry into a destination that takes it all
                    # would keep this loop going: the deadline holds here too
                    while (p.src_open and len(p.buf) < CHUNK and time.monotonic() < deadline
                           and p.readable()):
                        progress = True
                    p.writable()
                waiting = [(p.dst, WRITE) for p in self.pumps if p.dst_open and p.buf]
                if not waiting:
                    if not progress:
                        return
                    continue
                self.sync(sel)
                sel.select(max(0.0, deadline - time.monotonic()))
        finally:
            self.unregister(sel)
            sel.close()

    def close(self) -> None:
        closed = {p.src for p in self.pumps if not p.src_open and p.close_src}
        closed |= {p.dst for p in self.pumps if not p.dst_open and p.close_dst}
        for fd in self.held - closed:
            try:
                os.close(fd)
            except OSError:
                pass
        self.held = set()


def for_pty(master: int, on_output: Callable[[bytes], bool],
            on_input: Callable[[bytes], bool]) -> tuple[Relay, int]:
    """A relay for a PTY session: the client's end of a stream socket pair in place of the
    master. Returns the relay and the client's fd (close-on-exec)."""
    os.set_blocking(master, False)  # the profile writer copes (it shares the open file)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sup = mine.detach()
    client = theirs.detach()
    pumps = [Pump(master, sup, on_output, close_dst=False, close_src=False),
             Pump(sup, master, on_input, close_dst=False, close_src=False)]
    return Relay(pumps, {sup}), client


def for_pipes(stdin_w: int, stdout_r: int, stderr_r: int, *,
              on_stdout: Callable[[bytes], bool], on_stderr: Callable[[bytes], bool],
              on_input: Callable[[bytes], bool]) -> tuple[Relay, tuple[int, int, int]]:
    """A relay for a command session: new pipes for the client in place of the session's
    (STDIN_W, STDOUT_R, STDERR_R, which the relay now holds). Returns the relay and the client's
    (stdin write end, stdout read end, stderr read end)."""
    c_in_r, c_in_w = os.pipe()
    c_out_r, c_out_w = os.pipe()
    c_err_r, c_err_w = os.pipe()
    pumps = [Pump(c_in_r, stdin_w, on_input, close_dst=True, close_src=True),
             Pump(stdout_r, c_out_w, on_stdout, close_dst=True, close_src=True),
             Pump(stderr_r, c_err_w, on_stderr, close_dst=True, close_src=True)]
    held = {c_in_r, stdin_w, stdout_r, c_out_w, stderr_r, c_err_w}
    return Relay(pumps, held), (c_in_w, c_out_r, c_err_r)
