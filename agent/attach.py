"""Attach the local terminal or standard streams to a started session (the CLI's `session`).

Input to the session is buffered and written without blocking, so a command that writes a lot
before reading its input (or a large paste into a terminal) never deadlocks against us.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from agent.client import Session

EOT = b"\x04"
CHUNK = 65536
MAX_BUFFERED = 1 << 20  # stop reading our stdin while this much waits for the session


def exit_code(status: dict[str, object]) -> int:
    """The command's status as a process exit code: its code, 128+N for signal N, else 255."""
    code, sig = status.get("code"), status.get("signal")
    if isinstance(code, int):
        return code
    if isinstance(sig, int):
        return 128 + sig
    return 255


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read(fd: int) -> Optional[bytes]:
    """Read what is there: None when nothing is (EAGAIN); b"" at end of input, also for a PTY
    whose other side is gone (EIO)."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


class _Input:
    """What we read from our stdin, on its way into the session's input fd."""

    def __init__(self, sel: selectors.BaseSelector, src: int, dst: int, *, eof: bytes = b"",
                 close_dst: bool = True) -> None:
        self.sel, self.src, self.dst = sel, src, dst
        self.eof_marker = eof  # written at end of input instead of closing (a PTY's ^D)
        self.close_dst = close_dst
        self.buf = b""
        self.src_open = True
        self.dst_open = True
        self.watching_dst = False
        self.paused = False  # not reading SRC: too much is buffered
        self.file_mode = False  # SRC is a regular file: always readable, cannot be polled
        os.set_blocking(dst, False)
        # Decided by the file's type, not by the selector: epoll refuses a regular file (EPERM),
        # but kqueue accepts one and never reports its end, so the session would never get EOF.
        if stat.S_ISREG(os.fstat(src).st_mode):
            self.file_mode = True
        else:
            try:
                sel.register(src, selectors.EVENT_READ, self)
            except (ValueError, OSError):
                self.file_mode = True

    @property
    def done(self) -> bool:
        return not self.dst_open

    def want_file_read(self) -> bool:
        return self.file_mode and self.src_open and len(self.buf) < MAX_BUFFERED

    def on_src(self) -> None:
        data = _read(self.src)
        if data is None:
            return
        if data:
            self.buf += data
        else:
            self._src_closed()
        self._update()

    def on_dst(self) -> None:
        self._update()

    def _src_closed(self) -> None:
        self.src_open = False
        if not self.file_mode:
            self.sel.unregister(self.src)
        self.buf += self.eof_marker

    def _update(self) -> None:
        if not self.dst_open:
            return
        while self.buf:
            try:
                n = os.write(self.dst, self.buf)
            except BlockingIOError:
                break
            except OSError:  # the session stopped reading its input for good (EPIPE)
                self.buf = b""
                self._close_dst()
                return
            self.buf = self.buf[n:]
        if not self.src_open and not self.buf and self.close_dst:
            self._close_dst()  # all of our input has reached the session: send it EOF
            return
        want = bool(self.buf)
        if want != self.watching_dst:
            if want:
                self.sel.register(self.dst, selectors.EVENT_WRITE, ("input-dst", self))
            else:
                self.sel.unregister(self.dst)
            self.watching_dst = want
        if self.src_open and not self.file_mode:
            # Back-pressure: stop reading stdin while too much waits for the session.
            mask = selectors.EVENT_READ
            if len(self.buf) >= MAX_BUFFERED and not self.paused:
                self.sel.unregister(self.src)
                self.paused = True
            elif len(self.buf) < MAX_BUFFERED and self.paused:
                self.sel.register(self.src, mask, self)
                self.paused = False

    def _close_dst(self) -> None:
        if self.watching_dst:
            self.sel.unregister(self.dst)
            self.watching_dst = False
        if self.src_open and not self.file_mode and not self.paused:
            self.sel.unregister(self.src)
        self.src_open = False
        self.dst_open = False
        os.close(self.dst)


def _dispatch_input(key: selectors.SelectorKey) -> bool:
    """Handle an event that belongs to an _Input; False if KEY is not one of them."""
    if isinstance(key.data, _Input):
        key.data.on_src()
        return True
    if isinstance(key.data, tuple) and key.data[0] == "input-dst":
        key.data[1].on_dst()
        return True
    return False


def _select(sel: selectors.BaseSelector, inp: Optional[_Input],
            timeout: Optional[float] = None) -> list[tuple[selectors.SelectorKey, int]]:
    if inp is not None and inp.want_file_read():
        inp.on_src()  # a regular file is always ready
        timeout = 0.0
    return sel.select(timeout)


def relay_pty(sess: Session, stdin: int = 0, stdout: int = 1) -> dict[str, object]:
    """Relay stdin <-> PTY master until the session ends; raw mode and SIGWINCH when a tty."""
    assert sess.master is not None
    master = sess.master
    is_tty = os.isatty(stdin)
    saved = None
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
    if is_tty:
        import termios
        import tty

        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin, termios.TCSADRAIN)  # keep typeahead (TCSAFLUSH would discard it)
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ, "master")
    sel.register(sess.control_fd, selectors.EVENT_READ, "control")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    # At end of our input the terminal gets ^D, as when a user types it; the master stays open.
    inp = _Input(sel, stdin, os.dup(master), eof=EOT, close_dst=False)
    status = None
    try:
        while status is None:
            for key, _ in _select(sel, inp):
                if _dispatch_input(key):
                    continue
                if key.data == "master":
                    data = _read(master)
                    if data is None:
                        continue
                    if data:
                        _write_all(stdout, data)
                    else:
                        sel.unregister(master)
                elif key.data == "wake":
                    os.read(wake_r, 512)
                    if is_tty:
                        size = os.get_terminal_size(stdin)
                        if size.lines > 0 and size.columns > 0:  # 0x0: size unknown
                            try:
                                sess.resize(size.lines, size.columns)
                            except OSError:
                                pass  # the session is ending; its exit comes next
                else:
                    status = sess.poll()
        _drain(master, stdout)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sel.close()
        if inp.dst_open:
            os.close(inp.dst)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
    return status


def _drain(fd: int, out: int, timeout: float = 0.2) -> None:
    """Copy what is left in FD after the session ended (output written just before exit)."""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.select(timeout):
            data = _read(fd)
            if data is None:
                continue
            if not data:
                return
            _write_all(out, data)
    finally:
        sel.close()


def relay_pipes(sess: Session, stdin: int = 0, stdout: int = 1, stderr: int = 2
                ) -> dict[str, object]:
    """Relay stdin -> session stdin, session stdout/stderr -> ours, separately, until the end."""
    assert sess.stdin is not None
    assert sess.stdout is not None
    assert sess.stderr is not None
    sel = selectors.DefaultSelector()
    outputs = {sess.stdout: stdout, sess.stderr: stderr}
    for fd in outputs:
        sel.register(fd, selectors.EVENT_READ, "out")
    sel.register(sess.control_fd, selectors.EVENT_READ, "control")
    inp = _Input(sel, stdin, sess.stdin)
    sess.stdin = None  # the _Input owns it now
    status = None
    open_outputs = len(outputs)
    try:
        while status is None or open_outputs:
            events = _select(sel, inp, None if status is None else 2.0)
            if not events and status is not None:
                break  # a background process still holds the pipes open
            for key, _ in events:
                if _dispatch_input(key):
                    continue
                if key.data == "out":
                    data = _read(key.fd)
                    if data is None:
                        continue
                    if data:
                        _write_all(outputs[key.fd], data)
                    else:
                        sel.unregister(key.fd)
                        open_outputs -= 1
                else:
                    status = sess.poll()
                    if status is not None:
                        sel.unregister(sess.control_fd)
    finally:
        sel.close()
        if inp.dst_open:
            os.close(inp.dst)
    return status if status is not None else sess.wait()
