"""Durability on macOS: there fsync(2) does not flush the drive's cache (Apple's fsync(2) man
page); fcntl(F_FULLFSYNC) does. The fcntl module stands in for macOS's, which has F_FULLFSYNC
(51 in <sys/fcntl.h>); everything else is the real one, and the files are real."""

from __future__ import annotations

import fcntl
import os
import types
from pathlib import Path
from typing import Any

import pytest

from agent import fsutil
from agent.audit import AuditLog

F_FULLFSYNC = 51


class MacFcntl(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("fcntl")
        self.__dict__.update({k: v for k, v in vars(fcntl).items()
                              if not k.startswith("__") and k != "fcntl"})
        self.F_FULLFSYNC = F_FULLFSYNC
        self.full_synced: list[str] = []

    def fcntl(self, fd: int, op: int, arg: Any = 0) -> Any:
        if op == F_FULLFSYNC:
            self.full_synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            os.fsync(fd)
            return 0
        return fcntl.fcntl(fd, op, arg)


@pytest.fixture
def mac_fcntl(monkeypatch: pytest.MonkeyPatch) -> MacFcntl:
    fake = MacFcntl()
    monkeypatch.setattr(fsutil, "fcntl", fake)
    return fake


def test_audit_records_are_full_fsynced(tmp_path: Path, mac_fcntl: MacFcntl) -> None:
    log = tmp_path / "audit" / "audit.log"
    AuditLog(str(log)).record("session.started", session_id="s1")
    assert mac_fcntl.full_synced == [str(log)]


def test_installs_are_full_fsynced(tmp_path: Path, mac_fcntl: MacFcntl) -> None:
    target = tmp_path / "etc" / "drop-in"
    target.parent.mkdir()
    fsutil.install(str(target), b"content\n", mode=0o440, uid=os.geteuid(), gid=os.getegid())
    assert target.read_bytes() == b"content\n"
    assert str(target.parent) in mac_fcntl.full_synced  # the directory, after the rename
    assert any(p.startswith(str(target.parent) + "/") for p in mac_fcntl.full_synced)
