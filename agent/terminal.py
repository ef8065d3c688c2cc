"""PTY allocation for interactive sessions: the slave belongs to the session's user.

The slave is chowned to the user and the `tty` group with mode 0620 (like login and sshd, so
`write`/`wall` work and nobody else can read it), the initial window size is set, and both fds
are close-on-exec: the session's child gets the slave only through its stdio.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from dataclasses import dataclass

from agent.errors import BadRequest, SpawnFailed

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Optional

    from agent.accounts import Account

TTY_MODE = 0o620
MAX_DIMENSION = 10000


@dataclass(frozen=True)
class Pty:
    master: int
    slave: int
    slave_path: str


def tty_group_gid(default: int) -> int:
    """The gid of the `tty` group, or DEFAULT when this host has none."""
    import grp

    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return default


def open_pty(account: Account, rows: int, cols: int, *, tty_gid: Optional[int] = None) -> Pty:
    """A new PTY whose slave is owned by ACCOUNT, group tty (TTY_GID when the caller looked it
    up already, else looked up now; the account's gid when the host has no tty group), mode 0620,
    with the window size set. Raises BadRequest for a bad size, SpawnFailed when no PTY can be
    allocated or set up."""
    _check_size(rows, cols)
    if account.uid == 0:
        raise SpawnFailed("refusing to give a terminal to uid 0")
    gid = tty_group_gid(account.gid) if tty_gid is None else tty_gid
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise SpawnFailed(f"pty: cannot allocate a terminal: [Errno {exc.errno}] "
                          f"{exc.strerror}") from exc
    try:
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        path = os.ttyname(slave)
        os.fchown(slave, account.uid, gid)
        os.fchmod(slave, TTY_MODE)
        set_window_size(master, rows, cols)
    except BaseException as exc:
        os.close(master)
        os.close(slave)
        if isinstance(exc, OSError):
            raise SpawnFailed(f"pty: cannot set up the terminal: [Errno {exc.errno}] "
                              f"{exc.strerror}") from exc
        raise
    return Pty(master, slave, path)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal FD (master or slave); the foreground process group
    gets SIGWINCH. Raises BadRequest for sizes outside 1..10000."""
    _check_size(rows, cols)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_window_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal FD."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def _check_size(rows: object, cols: object) -> None:
    for name, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"terminal {name} must be an integer, not {value!r}")
        if not 1 <= value <= MAX_DIMENSION:
            raise BadRequest(f"terminal {name} {value} is outside 1..{MAX_DIMENSION}")
