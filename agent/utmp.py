"""Login accounting for PTY sessions: utmp (`who`), wtmp (`last`) and lastlog, through libc.

Linux (glibc): setutxent/pututxline/endutxent on the utmp file (/var/run/utmp), updwtmpx on
/var/log/wtmp, and the lastlog entry (/var/log/lastlog, when the file exists: newer systems
replaced it with lastlog2, which pam_lastlog2 maintains) written at uid * sizeof(struct lastlog),
as OpenSSH does. None of these files is created here: they belong to the system
(systemd-update-utmp, the login package); a missing one is reported.

macOS: pututxline alone; it also appends to the wtmpx log and updates lastlogx itself.

The records follow OpenSSH and login(1): ut_line is the terminal path without "/dev/", ut_id its
last four characters, ut_pid the session's process (runas-agent passes its per-session
supervisor, which lives exactly as long as the session); the logout record is a DEAD_PROCESS
entry with the same line and id (utmp entry replaced, a wtmp entry appended: `last` pairs them
by line).

Accounting never stops a session: every target is attempted, and what failed is raised together
as LoginRecordFailed for the caller to log.
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
WTMP = "/var/log/wtmp"
LASTLOG = "/var/log/lastlog"
LINUX_UTMPX_SIZE = 384  # sizeof(struct utmpx), glibc on x86_64 and aarch64
LASTLOG_SIZE = 292  # sizeof(struct lastlog): int32 time, line[32], host[256]


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


def pack(record: Record, layout: Layout) -> Any:
    """The C struct utmpx of RECORD for LAYOUT."""
    import ipaddress

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
        try:
            addr = ipaddress.ip_address(record.host)
        except ValueError:
            addr = None
        if addr is not None:
            raw = addr.packed  # network order, as login(1) stores it
            for i in range(len(raw) // 4):
                entry.ut_addr_v6[i] = int.from_bytes(raw[4 * i:4 * i + 4], sys.byteorder,
                                                      signed=True)
    return entry


def lastlog_bytes(line: str, host: str, sec: int) -> bytes:
    """struct lastlog { int32 ll_time; char ll_line[32]; char ll_host[256]; }."""
    return (sec.to_bytes(4, sys.byteorder, signed=True)
            + _field(line, 32).ljust(32, b"\0") + _field(host, 256).ljust(256, b"\0"))


def load_libc(sys_platform: str = sys.platform) -> Any:
    """The C library with the utmpx functions declared."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.setutxent.argtypes = []
    libc.setutxent.restype = None
    libc.endutxent.argtypes = []
    libc.endutxent.restype = None
    libc.pututxline.argtypes = [ctypes.c_void_p]
    libc.pututxline.restype = ctypes.c_void_p
    if sys_platform != "darwin":
        libc.updwtmpx.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        libc.updwtmpx.restype = None
    return libc


def login_record(pid: int, user: str, tty_path: str, host: str, *,
                 uid: Optional[int] = None, now: Optional[float] = None,
                 libc: Any = None, sys_platform: str = sys.platform,
                 wtmp_path: str = WTMP, lastlog_path: str = LASTLOG) -> None:
    """Record a login on TTY_PATH by USER, shell PID, from HOST: utmp, wtmp, and lastlog when
    UID is given. Raises LoginRecordFailed naming every part that failed."""
    import time

    when = time.time() if now is None else now
    record = login_entry(pid, user, tty_path, host, when)
    problems = _write(record, libc, sys_platform, wtmp_path)
    if uid is not None and sys_platform != "darwin":
        problems += _lastlog(uid, record, lastlog_path)
    if problems:
        raise LoginRecordFailed(f"login record for {user} on {tty_path}: " + "; ".join(problems))


def logout_record(pid: int, tty_path: str, *, now: Optional[float] = None,
                  libc: Any = None, sys_platform: str = sys.platform,
                  wtmp_path: str = WTMP) -> None:
    """Record the end of the session on TTY_PATH (shell PID): utmp entry dead, wtmp appended."""
    import time

    when = time.time() if now is None else now
    problems = _write(logout_entry(pid, tty_path, when), libc, sys_platform, wtmp_path)
    if problems:
        raise LoginRecordFailed(f"logout record for {tty_path}: " + "; ".join(problems))


def _write(record: Record, libc: Any, sys_platform: str, wtmp_path: str) -> list[str]:
    import ctypes

    darwin = sys_platform == "darwin"
    layout = DARWIN if darwin else GLIBC
    if libc is None:
        libc = load_libc(sys_platform)
    entry = pack(record, layout)
    problems: list[str] = []
    libc.setutxent()
    try:
        ok = libc.pututxline(ctypes.byref(entry))
        err = ctypes.get_errno()
    finally:
        libc.endutxent()
    if not ok:
        problems.append(f"utmp: {os.strerror(err) if err else 'pututxline failed'}")
    if darwin:
        return problems  # pututxline also wrote the wtmpx log and lastlogx
    # updwtmpx reports nothing: check the file exists first and grew after.
    try:
        before = os.stat(wtmp_path).st_size
    except OSError as exc:
        problems.append(f"wtmp: {wtmp_path}: {exc.strerror}")
        return problems
    libc.updwtmpx(wtmp_path.encode(), ctypes.byref(entry))
    try:
        grew = os.stat(wtmp_path).st_size >= before + ctypes.sizeof(entry)
    except OSError as exc:
        problems.append(f"wtmp: {wtmp_path}: {exc.strerror}")
        return problems
    if not grew:
        problems.append(f"wtmp: {wtmp_path}: not appended")
    return problems


def _lastlog(uid: int, record: Record, path: str) -> list[str]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []  # no lastlog on this system (lastlog2 or none): nothing to keep up to date
    except OSError as exc:
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
