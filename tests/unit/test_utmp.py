"""agent.utmp without writing system files: struct layouts, record contents, the macOS path.

Real utmp/wtmp/lastlog writes (and `who`, `last`, `lastlog` reading them) run as root in the
isolated namespace: tests/integration/test_pam_sessions.py.
"""

import ctypes
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import utmp
from agent.errors import LoginRecordFailed


def _offsets(cls: Any) -> dict[str, int]:
    return {name: getattr(cls, name).offset for name, *_ in cls._fields_}


def test_glibc_layout() -> None:
    cls = utmp.GLIBC.struct()
    assert ctypes.sizeof(cls) == utmp.LINUX_UTMPX_SIZE == 384
    off = _offsets(cls)
    assert (off["ut_type"], off["ut_pid"], off["ut_line"], off["ut_id"], off["ut_user"],
            off["ut_host"], off["ut_exit"], off["ut_session"], off["ut_tv"],
            off["ut_addr_v6"]) == (0, 4, 8, 40, 44, 76, 332, 336, 340, 348)


def test_glibc_layout_is_what_util_linux_reads(tmp_path: Path) -> None:
    """Records packed here, read back by programs compiled against glibc's <utmpx.h>."""
    login = utmp.login_entry(4321, "alice", "/dev/pts/9", "198.51.100.7", 1700000000.123456)
    logout = utmp.logout_entry(4321, "/dev/pts/9", 1700000090.0)
    path = tmp_path / "wtmp"
    path.write_bytes(bytes(utmp.pack(login, utmp.GLIBC)) + bytes(utmp.pack(logout, utmp.GLIBC)))
    dump = subprocess.run(["utmpdump", str(path)], capture_output=True, text=True, check=True,
                          env={"TZ": "UTC", "LC_ALL": "C"}).stdout.splitlines()
    fields = [[f.strip() for f in re.findall(r"\[([^]]*)\]", line)] for line in dump]
    for f in fields:
        f[1] = str(int(f[1]))  # utmpdump zero-pads the pid
    assert fields == [
        ["7", "4321", "ts/9", "alice", "pts/9", "198.51.100.7", "198.51.100.7",
         "2023-11-14T22:13:20,123456+00:00"],
        ["8", "4321", "ts/9", "", "pts/9", "", "0.0.0.0", "2023-11-14T22:14:50,000000+00:00"],
    ]
    last = subprocess.run(["last", "-w", "-f", str(path), "--time-format", "iso"],
                          capture_output=True, text=True, check=True,
                          env={"TZ": "UTC", "LC_ALL": "C"}).stdout.splitlines()[0].split()
    assert last == ["alice", "pts/9", "198.51.100.7", "2023-11-14T22:13:20+00:00", "-",
                    "2023-11-14T22:14:50+00:00", "(00:01)"]


def test_darwin_layout() -> None:
    cls = utmp.DARWIN.struct()
    off = _offsets(cls)
    assert (off["ut_user"], off["ut_id"], off["ut_line"], off["ut_pid"], off["ut_type"],
            off["ut_tv"], off["ut_host"], off["ut_pad"]) == (0, 256, 260, 292, 296, 304, 320,
                                                               576)
    assert ctypes.sizeof(cls) == 640


def test_records() -> None:
    rec = utmp.login_entry(4242, "alice", "/dev/pts/17", "203.0.113.9", 1700000000.25)
    assert rec == utmp.Record(utmp.USER_PROCESS, 4242, "pts/17", "s/17", "alice",
                              "203.0.113.9", 1700000000, 250000)
    out = utmp.logout_entry(4242, "/dev/pts/17", 1700000060.5)
    assert (out.type, out.line, out.id, out.user, out.host) == (utmp.DEAD_PROCESS, "pts/17",
                                                                "s/17", "", "")


@pytest.mark.parametrize("bad", ["pts/3", "/dev/", "/tmp/pts/3", "/dev/pts/3\0"])
def test_tty_path_must_be_under_dev(bad: str) -> None:
    with pytest.raises(LoginRecordFailed):
        utmp.tty_line(bad)


def test_pack_glibc_bytes() -> None:
    rec = utmp.login_entry(77, "a" * 40, "/dev/pts/3", "198.51.100.7", 1700000000.0)
    raw = bytes(utmp.pack(rec, utmp.GLIBC))
    assert len(raw) == 384
    assert struct.unpack_from("<h", raw, 0)[0] == utmp.USER_PROCESS
    assert struct.unpack_from("<i", raw, 4)[0] == 77
    assert raw[8:40].rstrip(b"\0") == b"pts/3"
    assert raw[40:44] == b"ts/3"
    assert raw[44:76] == b"a" * 32  # cut at the field size, not NUL-terminated (utmp(5))
    assert raw[76:332].rstrip(b"\0") == b"198.51.100.7"
    assert struct.unpack_from("<i", raw, 340)[0] == 1700000000
    assert raw[348:352] == socket.inet_aton("198.51.100.7")  # network order, as login(1)
    assert raw[352:364] == b"\0" * 12


def test_pack_ipv6_and_names() -> None:
    rec = utmp.login_entry(1, "bob", "/dev/pts/0", "2001:db8::1", 0.0)
    raw = bytes(utmp.pack(rec, utmp.GLIBC))
    assert raw[348:364] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    rec = utmp.login_entry(1, "bob", "/dev/pts/0", "bastion.example", 0.0)
    assert bytes(utmp.pack(rec, utmp.GLIBC))[348:364] == b"\0" * 16


def test_lastlog_bytes() -> None:
    data = utmp.lastlog_bytes("pts/3", "h", 1700000000)
    assert len(data) == utmp.LASTLOG_SIZE
    assert struct.unpack_from("<i", data, 0)[0] == 1700000000
    assert data[4:36].rstrip(b"\0") == b"pts/3"
    assert data[36:].rstrip(b"\0") == b"h"


class FakeDarwinLibc:
    """macOS's libc cannot run here: this records the calls at the one libc seam."""

    def __init__(self, put_ok: bool = True) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.put_ok = put_ok

    def setutxent(self) -> None:
        self.calls.append(("setutxent", b""))

    def endutxent(self) -> None:
        self.calls.append(("endutxent", b""))

    def pututxline(self, ref: Any) -> int:
        self.calls.append(("pututxline", bytes(ref._obj)))
        return 1 if self.put_ok else 0


def test_macos_login_and_logout_go_through_pututxline_only() -> None:
    fake = FakeDarwinLibc()
    utmp.login_record(900, "alice", "/dev/ttys004", "10.0.0.5", uid=501, libc=fake,
                      sys_platform="darwin", now=1700000000.5,
                      wtmp_path="/nonexistent/wtmp", lastlog_path="/nonexistent/lastlog")
    utmp.logout_record(900, "/dev/ttys004", libc=fake, sys_platform="darwin", now=1700000100.0,
                       wtmp_path="/nonexistent/wtmp")
    assert [c[0] for c in fake.calls] == ["setutxent", "pututxline", "endutxent"] * 2
    login, logout = fake.calls[1][1], fake.calls[4][1]
    assert len(login) == 640
    assert login[0:256].rstrip(b"\0") == b"alice"
    assert login[256:260] == b"s004"
    assert login[260:292].rstrip(b"\0") == b"ttys004"
    assert struct.unpack_from("<ih", login, 292) == (900, utmp.USER_PROCESS)
    assert struct.unpack_from("<qi", login, 304) == (1700000000, 500000)
    assert login[320:576].rstrip(b"\0") == b"10.0.0.5"
    assert logout[0:256] == b"\0" * 256
    assert struct.unpack_from("<ih", logout, 292) == (900, utmp.DEAD_PROCESS)


def test_macos_failure_is_reported() -> None:
    with pytest.raises(LoginRecordFailed) as err:
        utmp.login_record(1, "alice", "/dev/ttys001", "", libc=FakeDarwinLibc(put_ok=False),
                          sys_platform="darwin")
    assert "utmp" in err.value.message
    assert err.value.reason == "login_record_failed"


# -- Linux: the records written here, to files in a temporary directory -----------------------

def _files(tmp_path: Path) -> dict[str, Any]:
    for name in ("utmp", "wtmp"):
        (tmp_path / name).write_bytes(b"")
    return {"utmp_path": str(tmp_path / "utmp"), "wtmp_path": str(tmp_path / "wtmp"),
            "sys_platform": "linux"}


def _dump(path: Path) -> list[list[str]]:
    out = subprocess.run(["utmpdump", str(path)], capture_output=True, text=True, check=True,
                         env={"TZ": "UTC", "LC_ALL": "C"}).stdout.splitlines()
    rows = [[f.strip() for f in re.findall(r"\[([^]]*)\]", line)][:5] for line in out]
    for row in rows:
        row[1] = str(int(row[1]))
    return rows


def test_linux_login_then_logout_reuses_the_terminal_slot(tmp_path: Path) -> None:
    files = _files(tmp_path)
    utmp.login_record(10, "alice", "/dev/pts/1", "h1", now=1700000000.0,
                      lastlog_path=str(tmp_path / "none"), uid=1000, **files)
    utmp.login_record(20, "bob", "/dev/pts/2", "h2", now=1700000001.0, **files)
    utmp.logout_record(10, "/dev/pts/1", now=1700000002.0, **files)
    utmp.login_record(30, "carol", "/dev/pts/1", "h3", now=1700000003.0, **files)
    # utmp: one slot per terminal, the latest record in it (glibc's pututxline does the same).
    assert _dump(tmp_path / "utmp") == [["7", "30", "ts/1", "carol", "pts/1"],
                                        ["7", "20", "ts/2", "bob", "pts/2"]]
    # wtmp: every record, in order.
    assert _dump(tmp_path / "wtmp") == [["7", "10", "ts/1", "alice", "pts/1"],
                                        ["7", "20", "ts/2", "bob", "pts/2"],
                                        ["8", "10", "ts/1", "", "pts/1"],
                                        ["7", "30", "ts/1", "carol", "pts/1"]]
    who = subprocess.run(["who", str(tmp_path / "utmp")], capture_output=True, text=True,
                         check=True).stdout.split()
    assert who[:2] == ["carol", "pts/1"]
    assert "bob" in who


def test_linux_utmp_slot_found_by_line_when_an_id_is_empty(tmp_path: Path) -> None:
    files = _files(tmp_path)
    other = utmp.Record(utmp.USER_PROCESS, 5, "pts/7", "", "old", "", 1, 0)
    foreign = utmp.Record(1, 0, "~", "~~", "runlevel", "", 1, 0)  # RUN_LVL: never a slot
    (tmp_path / "utmp").write_bytes(bytes(utmp.pack(foreign, utmp.GLIBC))
                                    + bytes(utmp.pack(other, utmp.GLIBC)))
    utmp.logout_record(5, "/dev/pts/7", now=1700000000.0, **files)
    rows = _dump(tmp_path / "utmp")
    assert [r[0] for r in rows] == ["1", "8"]
    assert rows[1][4] == "pts/7"


def test_linux_partial_entry_at_the_end_is_cut_before_appending(tmp_path: Path) -> None:
    files = _files(tmp_path)
    (tmp_path / "wtmp").write_bytes(b"\x07" * 100)  # a torn write
    (tmp_path / "utmp").write_bytes(b"\x00" * 50)
    utmp.login_record(1, "alice", "/dev/pts/3", "", now=1700000000.0, **files)
    assert (tmp_path / "wtmp").stat().st_size == utmp.LINUX_UTMPX_SIZE
    assert (tmp_path / "utmp").stat().st_size == utmp.LINUX_UTMPX_SIZE
    assert _dump(tmp_path / "wtmp") == [["7", "1", "ts/3", "alice", "pts/3"]]


def test_linux_missing_and_odd_files_are_reported_and_the_rest_written(tmp_path: Path) -> None:
    files = _files(tmp_path)
    (tmp_path / "utmp").unlink()
    with pytest.raises(LoginRecordFailed) as err:
        utmp.login_record(1, "alice", "/dev/pts/3", "", **files)
    assert "utmp: No such file or directory" in err.value.message
    assert (tmp_path / "wtmp").stat().st_size == utmp.LINUX_UTMPX_SIZE
    (tmp_path / "utmp").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "wtmp")
    with pytest.raises(LoginRecordFailed) as err:
        utmp.logout_record(1, "/dev/pts/3", **{**files, "wtmp_path": str(tmp_path / "link")})
    assert "utmp: Is a directory" in err.value.message
    assert "wtmp: Too many levels of symbolic links" in err.value.message  # O_NOFOLLOW


LOCKER = r"""
import fcntl, os, sys
fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]
for fd in fds:
    fcntl.lockf(fd, fcntl.LOCK_SH)  # F_RDLCK on the whole file, what `who` takes to read
print("locked", flush=True)
sys.stdin.read()
"""


def _record(login: bool, files: dict[str, Any]) -> None:
    if login:
        utmp.login_record(1, "alice", "/dev/pts/3", "", **files)
    else:
        utmp.logout_record(1, "/dev/pts/3", **files)


def test_linux_a_lock_someone_else_holds_delays_a_record_by_lock_wait_at_most(
        tmp_path: Path) -> None:
    """Bounded latency (the records sit on the session's start and end path): glibc would
    wait 10 s for each file; here both files together cost at most LOCK_WAIT."""
    import time

    files = _files(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, files["utmp_path"],
                               files["wtmp_path"]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        for login in (True, False):
            t0 = time.monotonic()
            with pytest.raises(LoginRecordFailed) as err:
                _record(login, files)
            took = time.monotonic() - t0
            assert took < utmp.LOCK_WAIT + 0.15, took
            assert err.value.message.count("locked by another process") == 2
    finally:
        holder.communicate("")
    assert (tmp_path / "utmp").stat().st_size == 0  # skipped, not torn
    assert (tmp_path / "wtmp").stat().st_size == 0
    # Released: written again.
    utmp.login_record(1, "alice", "/dev/pts/3", "", **files)
    assert (tmp_path / "wtmp").stat().st_size == utmp.LINUX_UTMPX_SIZE


def test_linux_a_lock_released_within_the_wait_is_taken(tmp_path: Path) -> None:
    files = _files(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", LOCKER + "import time; time.sleep(0.03)",
                               files["utmp_path"]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    assert holder.stdin is not None
    holder.stdin.close()  # the holder lets go a few ms from now, within LOCK_WAIT
    utmp.login_record(1, "alice", "/dev/pts/3", "", lock_wait=5.0, **files)
    holder.wait()
    assert (tmp_path / "utmp").stat().st_size == utmp.LINUX_UTMPX_SIZE


@pytest.mark.timeout(20)
def test_linux_a_fifo_in_place_of_lastlog_is_reported_not_waited_on(tmp_path: Path) -> None:
    """Whoever may write /var/log can put a FIFO where lastlog is expected: opening it for
    writing would wait for a reader for ever, on the session's start path."""
    import os

    files = {**_files(tmp_path), "lastlog_path": str(tmp_path / "lastlog")}
    os.mkfifo(files["lastlog_path"])
    with pytest.raises(LoginRecordFailed) as err:  # no reader
        utmp.login_record(1, "alice", "/dev/pts/3", "", uid=1000, **files)
    assert err.value.message.endswith(f"lastlog: {files['lastlog_path']}: not a regular file")
    reader = os.open(files["lastlog_path"], os.O_RDONLY | os.O_NONBLOCK)
    try:  # a reader (the one who planted it)
        with pytest.raises(LoginRecordFailed) as err:
            utmp.login_record(1, "alice", "/dev/pts/3", "", uid=1000, **files)
        assert err.value.message.endswith(f"lastlog: {files['lastlog_path']}: not a regular file")
        assert os.read(reader, 1) == b""  # nothing was written into it
    finally:
        os.close(reader)
    assert (tmp_path / "wtmp").stat().st_size == 2 * utmp.LINUX_UTMPX_SIZE  # the rest written


@pytest.mark.parametrize("record", [
    utmp.login_entry(4242, "alice", "/dev/pts/3", "runas-agent", 1_700_000_000.25),
    utmp.logout_entry(4242, "/dev/pts/3", 1_700_000_001.5),
    utmp.login_entry(7, "u" * 40, "/dev/pts/" + "9" * 40, "h" * 300, 0.0),  # cut at the sizes
    utmp.login_entry(7, "bob", "/dev/pts/0", "192.0.2.7", 1.0),
    utmp.login_entry(7, "bob", "/dev/pts/0", "2001:db8::1", 1.0),
    utmp.login_entry(7, "bób", "/dev/tty1", "", 2_147_483_648.0),  # past 2038: 32-bit time
])
def test_glibc_entry_is_the_c_librarys_struct(record: utmp.Record) -> None:
    """The entry written on a session's start, packed without ctypes, has exactly the bytes of
    the ctypes struct utmpx (glibc's layout, used by who and last)."""
    assert utmp.glibc_entry(record) == bytes(utmp.pack(record, utmp.GLIBC))
    assert len(utmp.glibc_entry(record)) == utmp.LINUX_UTMPX_SIZE
