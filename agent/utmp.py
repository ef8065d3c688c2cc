"""Login accounting for PTY sessions: utmp (`who`), wtmp (`last`) and lastlog.

Linux (glibc layout): the records are written here, not through libc. utmp (/var/run/utmp) and
wtmp (/var/log/wtmp) are world-readable, and glibc's writers (pututxline, updwtmpx) wait up to
10 s each for a write lock that any local user can keep from them by holding a read lock (as
`who` does while it reads). Here each file gets a non-blocking write lock (fcntl F_SETLK, the
lock glibc's readers and writers honour), retried for at most LOCK_WAIT seconds per record
(utmp and wtmp share it); a file still locked after that is not written, and that is reported
like any other failure. The updates are glibc's: in utmp, the entry of the same terminal
(ut_id, or ut_line when either id is empty, among INIT/LOGIN/USER/DEAD entries) is replaced,
else the entry is appended; to wtmp it is appended, after cutting off a partial entry at the
end. The lastlog entry (/var/log/lastlog, when the file exists: newer systems replaced it with
lastlog2, which pam_lastlog2 maintains) is written at uid * sizeof(struct lastlog), without a
lock, as OpenSSH does. None of these files is created here: they belong to the system
(systemd-update-utmp, the login package); a missing one is reported.

macOS: pututxline alone; it also appends to the wtmpx log and updates lastlogx itself.

The records follow OpenSSH and login(1): ut_line is the terminal path without "/dev/", ut_id its
last four characters, ut_pid the session's process (runas-agent passes its per-session
supervisor, which lives exactly as long as the session); the logout record is a DEAD_PROCESS
entry with the same line and id (utmp entry replaced, a wtmp entry appended: `last` pairs them
by line).

Accounting never stops a session, nor holds it up for more than LOCK_WAIT: every target is
attempted, and what failed is raised together as LoginRecordFailed for the caller to log.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass

from agent.errors import LoginRecordFailed

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Any, Optional

USER_PROCESS = 7
DEAD_PROCESS = 8
UTMP = "/var/run/utmp"  # glibc's _PATH_UTMP
WTMP = "/var/log/wtmp"
LASTLOG = "/var/log/lastlog"
LINUX_UTMPX_SIZE = 384  # sizeof(struct utmpx), glibc on x86_64 and aarch64
LASTLOG_SIZE = 292  # sizeof(struct lastlog): int32 time, line[32], host[256]
LOCK_WAIT = 0.1  # seconds a record may wait for the utmp and wtmp locks, together
LOCK_RETRY = 0.005  # seconds between two tries to take a lock
# struct utmpx of glibc on 64-bit Linux, as struct.pack lays it out: ut_type, (padding),
# ut_pid, ut_line, ut_id, ut_user, ut_host, ut_exit (2 shorts), ut_session, ut_tv (32-bit
# seconds and microseconds), ut_addr_v6, reserved; native byte order, like the C library's.
GLIBC_UTMPX_FORMAT = "=h2xi32s4s32s256shhiII4i20s"
# ut_type values whose utmp entries are found by terminal (ut_id / ut_line), as glibc does.
BY_TERMINAL = (5, 6, USER_PROCESS, DEAD_PROCESS)  # INIT_PROCESS, LOGIN_PROCESS, ...


@dataclass(frozen=True)
class Layout:
    """The struct utmpx of one C library: field sizes, and a ctypes Structure built on demand."""

    name: str
    user_size: int
    line_size: int
    host_size: int

    def struct(self) -> Any:
        import ctypes

        if self.name == "darwin":
            class Timeval(ctypes.Structure):
                _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_int32)]

            class DarwinUtmpx(ctypes.Structure):
                # <utmpx.h> of macOS: user, id, line, pid, type, tv, host, pad.
                _fields_ = [
                    ("ut_user", ctypes.c_char * self.user_size),
                    ("ut_id", ctypes.c_char * 4),
                    ("ut_line", ctypes.c_char * self.line_size),
                    ("ut_pid", ctypes.c_int32),
                    ("ut_type", ctypes.c_short),
                    ("ut_tv", Timeval),
                    ("ut_host", ctypes.c_char * self.host_size),
                    ("ut_pad", ctypes.c_uint32 * 16),
                ]

            return DarwinUtmpx

        class Tv32(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_int32), ("tv_usec", ctypes.c_int32)]

        class ExitStatus(ctypes.Structure):
            _fields_ = [("e_termination", ctypes.c_short), ("e_exit", ctypes.c_short)]

        class GlibcUtmpx(ctypes.Structure):
            # <bits/utmpx.h> of glibc on 64-bit Linux (__WORDSIZE_TIME64_COMPAT32: 32-bit time).
            _fields_ = [
                ("ut_type", ctypes.c_short),
                ("ut_pid", ctypes.c_int32),
                ("ut_line", ctypes.c_char * self.line_size),
                ("ut_id", ctypes.c_char * 4),
                ("ut_user", ctypes.c_char * self.user_size),
                ("ut_host", ctypes.c_char * self.host_size),
                ("ut_exit", ExitStatus),
                ("ut_session", ctypes.c_int32),
                ("ut_tv", Tv32),
                ("ut_addr_v6", ctypes.c_int32 * 4),
                ("glibc_reserved", ctypes.c_char * 20),
            ]

        return GlibcUtmpx


GLIBC = Layout("glibc", user_size=32, line_size=32, host_size=256)
DARWIN = Layout("darwin", user_size=256, line_size=32, host_size=256)


@dataclass(frozen=True)
class Record:
    """One utmpx entry, independent of the C library's layout."""

    type: int
    pid: int
    line: str  # "pts/3"
    id: str  # "ts/3"
    user: str
    host: str
    sec: int
    usec: int


def tty_line(tty_path: str) -> str:
    """ut_line of a terminal path: /dev/pts/3 -> pts/3."""
    if not tty_path.startswith("/dev/") or len(tty_path) <= len("/dev/") or "\0" in tty_path:
        raise LoginRecordFailed(f"not a terminal path: {tty_path!r}")
    return tty_path[len("/dev/"):]


def login_entry(pid: int, user: str, tty_path: str, host: str, now: float) -> Record:
    line = tty_line(tty_path)
    return Record(USER_PROCESS, pid, line, line[-4:], user, host, int(now),
                  int(now % 1 * 1_000_000))


def logout_entry(pid: int, tty_path: str, now: float) -> Record:
    line = tty_line(tty_path)
    return Record(DEAD_PROCESS, pid, line, line[-4:], "", "", int(now), int(now % 1 * 1_000_000))


def _field(text: str, size: int) -> bytes:
    # Fixed-size, NUL-padded, not necessarily NUL-terminated (as in utmp(5)); longer values
    # are cut at the size, as OpenSSH and login(1) do.
    return text.encode("utf-8", "surrogateescape")[:size]


def glibc_entry(record: Record) -> bytes:
    """RECORD as glibc's struct utmpx: the bytes of pack(RECORD, GLIBC), without building
    ctypes types (this is on a PTY session's start)."""
    import struct

    addr = [0, 0, 0, 0]
    raw = _host_address(record.host) if record.host else None
    if raw is not None:
        for i in range(len(raw) // 4):
            addr[i] = int.from_bytes(raw[4 * i:4 * i + 4], sys.byteorder, signed=True)
    return struct.pack(GLIBC_UTMPX_FORMAT, record.type, record.pid,
                       _field(record.line, GLIBC.line_size), _field(record.id, 4),
                       _field(record.user, GLIBC.user_size),
                       _field(record.host, GLIBC.host_size), 0, 0, 0,
                       record.sec & 0xFFFFFFFF, record.usec & 0xFFFFFFFF, *addr, b"")


def _host_address(host: str) -> Optional[bytes]:
    """HOST's address in network order when it is an IP address (login(1) stores it)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None


def pack(record: Record, layout: Layout) -> Any:
    """The C struct utmpx of RECORD for LAYOUT."""
    entry = layout.struct()()
    entry.ut_type = record.type
    entry.ut_pid = record.pid
    entry.ut_line = _field(record.line, layout.line_size)
    entry.ut_id = _field(record.id, 4)
    entry.ut_user = _field(record.user, layout.user_size)
    entry.ut_host = _field(record.host, layout.host_size)
    entry.ut_tv.tv_sec = record.sec
    entry.ut_tv.tv_usec = record.usec
    if layout.name == "glibc" and record.host:
        raw = _host_address(record.host)
        if raw is not None:
            for i in range(len(raw) // 4):
                entry.ut_addr_v6[i] = int.from_bytes(raw[4 * i:4 * i + 4], sys.byteorder,
                                                      signed=True)
    return entry


def lastlog_bytes(line: str, host: str, sec: int) -> bytes:
    """struct lastlog { int32 ll_time; char ll_line[32]; char ll_host[256]; }."""
    return (sec.to_bytes(4, sys.byteorder, signed=True)
            + _field(line, 32).ljust(32, b"\0") + _field(host, 256).ljust(256, b"\0"))


def load_libc() -> Any:
    """The C library with the utmpx functions declared (macOS)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.setutxent.argtypes = []
    libc.setutxent.restype = None
    libc.endutxent.argtypes = []
    libc.endutxent.restype = None
    libc.pututxline.argtypes = [ctypes.c_void_p]
    libc.pututxline.restype = ctypes.c_void_p
    return libc


def login_record(pid: int, user: str, tty_path: str, host: str, *,
                 uid: Optional[int] = None, now: Optional[float] = None,
                 libc: Any = None, sys_platform: str = sys.platform,
                 utmp_path: str = UTMP, wtmp_path: str = WTMP, lastlog_path: str = LASTLOG,
                 lock_wait: float = LOCK_WAIT) -> None:
    """Record a login on TTY_PATH by USER, shell PID, from HOST: utmp, wtmp, and lastlog when
    UID is given. Waits at most LOCK_WAIT for locks others hold. Raises LoginRecordFailed
    naming every part that failed."""
    import time

    when = time.time() if now is None else now
    record = login_entry(pid, user, tty_path, host, when)
    problems = _write(record, libc, sys_platform, utmp_path, wtmp_path, lock_wait=lock_wait)
    if uid is not None and sys_platform != "darwin":
        problems += _lastlog(uid, record, lastlog_path)
    if problems:
        raise LoginRecordFailed(f"login record for {user} on {tty_path}: " + "; ".join(problems))


def logout_record(pid: int, tty_path: str, *, now: Optional[float] = None,
                  libc: Any = None, sys_platform: str = sys.platform,
                  utmp_path: str = UTMP, wtmp_path: str = WTMP,
                  lock_wait: float = LOCK_WAIT) -> None:
    """Record the end of the session on TTY_PATH (shell PID): utmp entry dead, wtmp appended.
    Waits at most LOCK_WAIT for locks others hold."""
    import time

    when = time.time() if now is None else now
    problems = _write(logout_entry(pid, tty_path, when), libc, sys_platform, utmp_path,
                      wtmp_path, lock_wait=lock_wait)
    if problems:
        raise LoginRecordFailed(f"logout record for {tty_path}: " + "; ".join(problems))


def _write(record: Record, libc: Any, sys_platform: str, utmp_path: str, wtmp_path: str, *,
           lock_wait: float) -> list[str]:
    if sys_platform == "darwin":
        return _write_darwin(record, libc)
    import time

    entry = glibc_entry(record)
    deadline = time.monotonic() + lock_wait
    problems: list[str] = []
    for name, path, update in (("utmp", utmp_path, _put_utmp), ("wtmp", wtmp_path, _append)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror} ({path})")
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                problems.append(f"{name}: {path}: not a regular file")
            elif not _lock(fd, deadline):
                problems.append(f"{name}: {path}: locked by another process for {lock_wait:g} s;"
                                " not written")
            else:
                update(fd, entry, record)
        except OSError as exc:
            problems.append(f"{name}: {path}: {exc.strerror}")
        finally:
            os.close(fd)  # also releases the lock
    return problems


def _lock(fd: int, deadline: float) -> bool:
    """Take a write lock on all of FD (the lock glibc's utmp functions use), trying until
    DEADLINE (at least once, never blocking). False if someone else still holds one."""
    import errno
    import fcntl
    import time

    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, LOCK_RETRY))


def same_terminal(entry: bytes, record: Record) -> bool:
    """Whether the utmp ENTRY (glibc layout) is the slot of RECORD's terminal, as glibc's
    getutxid finds it: an INIT, LOGIN, USER or DEAD entry with the same ut_id, or the same
    ut_line when either id is empty."""
    import struct

    if struct.unpack_from("=h", entry, 0)[0] not in BY_TERMINAL:
        return False
    ours = _field(record.id, 4).split(b"\0", 1)[0]
    theirs = entry[40:44].split(b"\0", 1)[0]
    if ours and theirs:
        return ours == theirs
    return (entry[8:40].split(b"\0", 1)[0]
            == _field(record.line, GLIBC.line_size).split(b"\0", 1)[0])


def _put_utmp(fd: int, entry: bytes, record: Record) -> None:
    """Replace the entry of RECORD's terminal in the locked utmp file FD, or append it."""
    size = LINUX_UTMPX_SIZE
    end = os.fstat(fd).st_size
    offset = 0
    while offset + size <= end:
        block = os.pread(fd, size * 64, offset)
        for at in range(0, len(block) - size + 1, size):
            if same_terminal(block[at:at + size], record):
                _pwrite_all(fd, entry, offset + at, append=False)
                return
        if len(block) < size:
            break
        offset += len(block) - len(block) % size
    _append(fd, entry, record)


def _append(fd: int, entry: bytes, record: Record) -> None:
    """Append ENTRY to the locked utmp-format file FD, after cutting off a partial entry at
    its end (what glibc's updwtmp does)."""
    end = os.fstat(fd).st_size
    offset = end - end % LINUX_UTMPX_SIZE
    if offset != end:
        os.ftruncate(fd, offset)
    _pwrite_all(fd, entry, offset, append=True)


def _pwrite_all(fd: int, data: bytes, offset: int, *, append: bool) -> None:
    try:
        written = os.pwrite(fd, data, offset)
    except OSError:
        if append:
            os.ftruncate(fd, offset)
        raise
    if written != len(data):
        if append:
            os.ftruncate(fd, offset)  # never leave a partial entry behind
        raise OSError(0, "short write")


def _write_darwin(record: Record, libc: Any) -> list[str]:
    import ctypes

    if libc is None:
        libc = load_libc()
    entry = pack(record, DARWIN)
    libc.setutxent()
    try:
        ok = libc.pututxline(ctypes.byref(entry))
        err = ctypes.get_errno()
    finally:
        libc.endutxent()
    if not ok:
        return [f"utmp: {os.strerror(err) if err else 'pututxline failed'}"]
    return []  # pututxline also wrote the wtmpx log and lastlogx


def _lastlog(uid: int, record: Record, path: str) -> list[str]:
    import errno

    try:
        # O_NONBLOCK: a FIFO put in its place (by whoever may write /var/log) must not keep
        # the session waiting for a reader; with no reader, opening it fails with ENXIO.
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return []  # no lastlog on this system (lastlog2 or none): nothing to keep up to date
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return [f"lastlog: {path}: not a regular file"]
        return [f"lastlog: {path}: {exc.strerror}"]
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return [f"lastlog: {path}: not a regular file"]
        data = lastlog_bytes(record.line, record.host, record.sec)
        if os.pwrite(fd, data, uid * LASTLOG_SIZE) != len(data):
            return [f"lastlog: {path}: short write"]
    except OSError as exc:
        return [f"lastlog: {path}: {exc.strerror}"]
    finally:
        os.close(fd)
    return []
