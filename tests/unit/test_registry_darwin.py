"""The macOS process start time (the registry's guard against pid reuse), from a struct
kinfo_proc laid out as Apple's headers define it: <sys/sysctl.h> struct kinfo_proc (648 bytes
on x86_64 and arm64) begins with <sys/proc.h> struct extern_proc, whose union p_un holds
p_starttime (struct timeval: 64-bit tv_sec, 32-bit tv_usec) at offset 0, and p_pid at 40."""

from __future__ import annotations

import struct
import sys

import pytest

from agent.registry import process_start_time


def kinfo_proc(pid: int, sec: int, usec: int) -> bytes:
    buf = bytearray(648)
    struct.pack_into("<qi", buf, 0, sec, usec)  # p_un.__p_starttime
    struct.pack_into("<QQ", buf, 16, 0xFFFFFF8000001000, 0xFFFFFF8000002000)  # p_vmspace, p_sigacts
    struct.pack_into("<ib", buf, 32, 0x4004, 2)  # p_flag, p_stat (SRUN)
    struct.pack_into("<i", buf, 40, pid)  # p_pid
    return bytes(buf)


class FakeSysctl:
    """sysctl kern.proc.pid: one kinfo_proc for a live pid, 0 bytes (and success) otherwise."""

    def __init__(self, procs: dict[int, bytes]) -> None:
        self.procs = procs
        self.asked: list[int] = []

    def __call__(self, pid: int) -> bytes:
        self.asked.append(pid)
        return self.procs.get(pid, b"")


def test_start_time_is_p_starttime_as_psutil_computes_it() -> None:
    fake = FakeSysctl({4242: kinfo_proc(4242, 1764378000, 123456)})
    got = process_start_time(4242, sys_platform="darwin", kern_proc_pid=fake)
    assert got == 1764378000 + 123456 / 1000000.0
    assert fake.asked == [4242]


def test_a_gone_process_has_no_start_time() -> None:
    assert process_start_time(77, sys_platform="darwin", kern_proc_pid=FakeSysctl({})) is None


def test_another_process_in_the_buffer_is_not_this_one() -> None:
    fake = FakeSysctl({5: kinfo_proc(6, 1, 0)})
    assert process_start_time(5, sys_platform="darwin", kern_proc_pid=fake) is None


def test_macos_never_imports_psutil_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # importing it raises
    fake = FakeSysctl({9: kinfo_proc(9, 100, 5)})
    assert process_start_time(9, sys_platform="darwin", kern_proc_pid=fake) == 100.000005
