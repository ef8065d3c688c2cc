"""PTY allocation for interactive sessions: the slave belongs to the session's user.

The slave is chowned to the user and the `tty` group with mode 0620 (like login and sshd, so
`write`/`wall` work and nobody else can read it), the initial window size is set, and both fds
are close-on-exec: the session's child gets the slave only through its stdio.

A spare supervisor opens its session's PTY ahead (open_pty_ahead): until a session takes it,
its slave is root's alone (mode 0600), and a session that needs none closes it.
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
    from typing import Callable, Optional

    from agent.accounts import Account

TTY_MODE = 0o620
AHEAD_MODE = 0o600  # a PTY opened ahead of its session: nobody but root may open its slave
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
    _check_account(account)
    gid = tty_group_gid(account.gid) if tty_gid is None else tty_gid
    return _give(_open_pair(None), account, gid, rows, cols)


class PtyAhead:
    """A PTY opened before its session is known (open_pty_ahead): take() gives it to the
    session's account as open_pty() would have made it; release() closes it if nobody took it.
    Either happens once."""

    __slots__ = ("_pty", "_tty_gid")

    def __init__(self, pty: Pty, tty_gid: Optional[int]) -> None:
        self._pty: Optional[Pty] = pty
        self._tty_gid = tty_gid

    def take(self, account: Account, rows: int, cols: int) -> Pty:
        """The PTY, its slave now ACCOUNT's (see open_pty); raises as open_pty does, and then the
        PTY is closed."""
        pty, self._pty = self._pty, None
        if pty is None:
            raise SpawnFailed("pty: the terminal opened ahead was taken already")
        try:
            _check_size(rows, cols)
            _check_account(account)
        except BaseException:
            _close(pty)
            raise
        gid = account.gid if self._tty_gid is None else self._tty_gid
        return _give(pty, account, gid, rows, cols)

    def release(self) -> None:
        pty, self._pty = self._pty, None
        if pty is not None:
            _close(pty)


def open_pty_ahead() -> PtyAhead:
    """A PTY for a session not yet known, its slave root's with mode 0600, and the tty group's
    gid looked up now. Raises SpawnFailed when no PTY can be allocated."""
    import grp

    try:
        tty_gid: Optional[int] = grp.getgrnam("tty").gr_gid
    except KeyError:
        tty_gid = None
    return PtyAhead(_open_pair(AHEAD_MODE), tty_gid)


def _check_account(account: Account) -> None:
    if account.uid == 0:
        raise SpawnFailed("refusing to give a terminal to uid 0")


def _open_pair(mode: Optional[int]) -> Pty:
    """A new PTY pair, both ends close-on-exec; the slave's mode set to MODE if given."""
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise SpawnFailed(f"pty: cannot allocate a terminal: [Errno {exc.errno}] "
                          f"{exc.strerror}") from exc
    pty = Pty(master, slave, "")

    def set_up() -> Pty:
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        if mode is not None:
            os.fchmod(slave, mode)
        return Pty(master, slave, os.ttyname(slave))

    return _closed_on_failure(pty, set_up)


def _give(pty: Pty, account: Account, gid: int, rows: int, cols: int) -> Pty:
    """PTY's slave given to ACCOUNT (and GID), mode 0620, with the window size set; on failure
    the PTY is closed."""

    def give() -> Pty:
        os.fchown(pty.slave, account.uid, gid)
        os.fchmod(pty.slave, TTY_MODE)
        set_window_size(pty.master, rows, cols)
        return pty

    return _closed_on_failure(pty, give)


def _closed_on_failure(pty: Pty, step: Callable[[], Pty]) -> Pty:
    """STEP's result; if it raises, PTY is closed first (an OSError becomes SpawnFailed)."""
    try:
        return step()
    except OSError as exc:
        _close(pty)
        raise SpawnFailed(f"pty: cannot set up the terminal: [Errno {exc.errno}] "
                          f"{exc.strerror}") from exc
    except BaseException:
        _close(pty)
        raise


def _close(pty: Pty) -> None:
    os.close(pty.master)
    os.close(pty.slave)


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
