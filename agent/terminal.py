"""PTY allocation for interactive sessions: the slave belongs to the session's user.

The slave is chowned to the user and the `tty` group with mode 0620 (like login and sshd, so
`write`/`wall` work and nobody else can read it), the initial window size is set, and both fds
are close-on-exec: the session's child gets the slave only through its stdio.

Every PTY starts root's alone (mode 0600): on Linux its slave is set so while still locked,
whatever devpts gives new slaves, and any open that got past devpts' own mode meanwhile is hung
up; the slave stays in exclusive mode (nobody but root may open it) until given to an account.
A spare supervisor opens its session's PTY ahead (open_pty_ahead): it stays so until a session
takes it, and a session that needs none closes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import sys
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
_PTMX = "/dev/ptmx"
# The PTY ioctls termios does not name, as the generic Linux ABI numbers them (alpha, mips,
# powerpc and sparc number them otherwise; there the portable path is taken).
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
_TIOCVHANGUP = 0x5437  # vhangup(2) of one terminal, through a descriptor of it
_GENERIC_IOCTLS = frozenset(("x86_64", "i386", "i486", "i586", "i686", "aarch64", "armv6l",
                             "armv7l", "armv8l", "riscv64", "s390x", "loongarch64"))


@dataclass(frozen=True)
class Pty:
    master: int
    slave: int
    slave_path: str


def tty_group_gid(default: int) -> int:
    """The gid of the `tty` group, or DEFAULT when this host has none."""
    gid = _tty_gid()
    return default if gid is None else gid


def _tty_gid() -> Optional[int]:
    import grp

    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return None


def open_pty(account: Account, rows: int, cols: int, *, tty_gid: Optional[int] = None) -> Pty:
    """A new PTY whose slave is owned by ACCOUNT, group tty (TTY_GID when the caller looked it
    up already, else looked up now; the account's gid when the host has no tty group), mode 0620,
    with the window size set. Raises BadRequest for a bad size, SpawnFailed when no PTY can be
    allocated or set up."""
    _check_size(rows, cols)
    _check_account(account)
    gid = tty_group_gid(account.gid) if tty_gid is None else tty_gid
    return _give(_open_pair(), account, gid, rows, cols)


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
    return PtyAhead(_open_pair(), _tty_gid())


def _check_account(account: Account) -> None:
    if account.uid == 0:
        raise SpawnFailed("refusing to give a terminal to uid 0")


def _open_pair() -> Pty:
    """A new PTY pair, both ends close-on-exec, its slave root's with mode 0600 (AHEAD_MODE)
    before anyone but root can open it."""
    if _generic_linux():
        return _open_pair_linux()[0]
    return _open_pair_portable()


def _generic_linux() -> bool:
    """Linux, with the PTY ioctls numbered as _TIOCGPTN and the others are."""
    return sys.platform == "linux" and os.uname().machine in _GENERIC_IOCTLS


def unguarded_reason() -> Optional[str]:
    """None when a PTY set up here is root's alone from its start (see _open_pair_linux); else
    why an account may hold a new slave from its set-up on, and the fix. Opens one PTY."""
    if not _generic_linux():
        return None
    pty, unguarded = _open_pair_linux()
    _close(pty)
    if not unguarded:
        return None
    return ("devpts gives new PTY slaves a mode or owner that lets an account other than root "
            "open them, and this process may not hang up a terminal (it lacks CAP_SYS_ADMIN): an "
            "open that races a PTY's set-up can keep the slave, as with any openpty(); mount "
            "devpts with mode=600 (and no uid=), or grant the agent CAP_SYS_ADMIN")


def _open_pair_linux() -> tuple[Pty, bool]:
    """The master from /dev/ptmx; its slave, still locked (an open of a locked slave fails with
    EIO), is made root's with mode 0600 and only then unlocked, whatever mode and owner devpts
    gives new slaves (`mode=620,gid=5` on many hosts); the slave is then opened through the
    master (TIOCGPTPEER) and checked to be the node just set up. With it, whether an open that
    raced the set-up may hold the slave (see _open_slave: only where devpts' own mode let an
    account open it and this process could not hang it up)."""
    try:
        master = os.open(_PTMX, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _cannot_allocate(exc) from exc
    try:
        (number,) = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))
        path = f"/dev/pts/{number}"
        first = os.lstat(path)  # as devpts made it: only its uid= owner could change it since
        exposed = first.st_uid != 0 or first.st_mode & 0o077 != 0
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, AHEAD_MODE)
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave, unguarded = _open_slave(master, path, exposed)
    except OSError as exc:
        os.close(master)
        raise SpawnFailed(f"pty: cannot set up the terminal: [Errno {exc.errno}] "
                          f"{exc.strerror}") from exc
    except BaseException:
        os.close(master)
        raise
    pty = Pty(master, slave, path)

    def check() -> Pty:
        st = os.fstat(slave)
        if not (os.path.samestat(st, os.stat(path)) and st.st_uid == 0
                and stat.S_IMODE(st.st_mode) == AHEAD_MODE):
            raise SpawnFailed(f"pty: {path} is not the terminal just opened, or not root's "
                              f"with mode 0600")
        return pty

    return _closed_on_failure(pty, check), unguarded


def _open_slave(master: int, path: str, exposed: bool) -> tuple[int, bool]:
    """The slave of MASTER, in exclusive mode (nobody but root may open it: EBUSY), and whether
    an open that raced its set-up may still hold it.

    EXPOSED: devpts gave the new slave a mode or owner that let an account open it. Its
    permission is checked when its path is opened and its lock only later, in the tty driver, so
    such an open may find it unlocked. The slave is then hung up: an open that ended before
    cuts off, one that reaches the driver after meets exclusive mode (the driver checks both
    under the tty's lock), and root opens it again. Whatever such an open did meanwhile is
    undone: the output it wrote (the master's input, else read as the session's first output)
    and the input it queued are flushed, and output it stopped is restarted. Hanging up a
    terminal takes CAP_SYS_ADMIN: without it, the slave is used as first opened, and an open
    that raced its set-up may hold it (as with any openpty() on such a devpts; see
    unguarded_reason). _give clears exclusive mode."""
    slave = _open_slave_once(master, path)
    unguarded = False
    try:
        fcntl.ioctl(slave, termios.TIOCEXCL)
        if exposed:
            try:
                fcntl.ioctl(slave, _TIOCVHANGUP)
            except PermissionError:
                unguarded = True
            else:
                hung_up, slave = slave, -1
                os.close(hung_up)
                slave = _open_slave_once(master, path)
            fcntl.ioctl(slave, termios.TCXONC, termios.TCOON)
            fcntl.ioctl(master, termios.TCFLSH, termios.TCIFLUSH)
            fcntl.ioctl(slave, termios.TCFLSH, termios.TCIFLUSH)
    except BaseException:
        if slave != -1:
            os.close(slave)
        raise
    return slave, unguarded


def _open_slave_once(master: int, path: str) -> int:
    """The slave of MASTER, close-on-exec and not made a controlling terminal: through the
    master where the kernel can (Linux 4.13 and later), else by PATH (root's alone by now)."""
    try:
        return fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)


def _open_pair_portable() -> Pty:
    """openpty(3), then the slave made 0600 (here devpts' own mode applies until then)."""
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise _cannot_allocate(exc) from exc
    pty = Pty(master, slave, "")

    def set_up() -> Pty:
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        os.fchmod(slave, AHEAD_MODE)
        return Pty(master, slave, os.ttyname(slave))

    return _closed_on_failure(pty, set_up)


def _cannot_allocate(exc: OSError) -> SpawnFailed:
    return SpawnFailed(f"pty: cannot allocate a terminal: [Errno {exc.errno}] {exc.strerror}")


def _give(pty: Pty, account: Account, gid: int, rows: int, cols: int) -> Pty:
    """PTY's slave given to ACCOUNT (and GID), mode 0620, with the window size set; on failure
    the PTY is closed."""

    def give() -> Pty:
        os.fchown(pty.slave, account.uid, gid)
        os.fchmod(pty.slave, TTY_MODE)
        fcntl.ioctl(pty.slave, termios.TIOCNXCL)
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
