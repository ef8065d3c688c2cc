"""Attach the local terminal or standard streams to a started session (the CLI's `session`)."""

from __future__ import annotations

import errno
import os
import selectors
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.client import Session

EOT = b"\x04"


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
    sel.register(stdin, selectors.EVENT_READ, "stdin")
    sel.register(sess.control_fd, selectors.EVENT_READ, "control")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    status = None
    try:
        while status is None:
            for key, _ in sel.select():
                if key.data == "master":
                    try:
                        data = os.read(master, 65536)
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        data = b""
                    if data:
                        _write_all(stdout, data)
                    else:
                        sel.unregister(master)
                elif key.data == "stdin":
                    data = os.read(stdin, 65536)
                    if data:
                        _write_all(master, data)
                    else:
                        sel.unregister(stdin)
                        _write_all(master, EOT)
                elif key.data == "wake":
                    os.read(wake_r, 512)
                    if is_tty:
                        size = os.get_terminal_size(stdin)
                        if size.lines > 0 and size.columns > 0:  # 0x0: size unknown
                            sess.resize(size.lines, size.columns)
                else:
                    status = sess.poll()
        _drain(master, stdout)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sel.close()
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
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
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
    stdin_open = True
    try:
        sel.register(stdin, selectors.EVENT_READ, "stdin")
    except (ValueError, OSError, PermissionError):
        stdin_open = False  # e.g. a regular file or /dev/null: read it all below
        _copy_file_to(stdin, sess.stdin)
    if not stdin_open:
        os.close(sess.stdin)
        sess.stdin = None
    sel.register(sess.control_fd, selectors.EVENT_READ, "control")
    status = None
    open_outputs = len(outputs)
    try:
        while status is None or open_outputs:
            events = sel.select(None if status is None else 2.0)
            if not events and status is not None:
                break  # a background process still holds the pipes open
            for key, _ in events:
                fd = key.fd
                if key.data == "out":
                    data = os.read(fd, 65536)
                    if data:
                        _write_all(outputs[fd], data)
                    else:
                        sel.unregister(fd)
                        open_outputs -= 1
                elif key.data == "stdin":
                    data = os.read(stdin, 65536)
                    if data and sess.stdin is not None:
                        try:
                            _write_all(sess.stdin, data)
                        except BrokenPipeError:
                            data = b""
                    if not data:
                        sel.unregister(stdin)
                        if sess.stdin is not None:
                            os.close(sess.stdin)
                            sess.stdin = None
                else:
                    status = sess.poll()
                    if status is not None:
                        sel.unregister(sess.control_fd)
    finally:
        sel.close()
    return status if status is not None else sess.wait()


def _copy_file_to(src: int, dst: int) -> None:
    while True:
        data = os.read(src, 65536)
        if not data:
            return
        try:
            _write_all(dst, data)
        except BrokenPipeError:
            return
