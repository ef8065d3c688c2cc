"""Whether a registry record's session is live is judged from the process it names, for real
(/proc, real files): a supervisor that has exited but is not reaped yet (a zombie, waiting for
an init that may never reap it) is gone, so its session is neither counted, listed nor
signalled; a record whose supervisor lives is never taken for a stale one."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from agent.errors import SessionExists
from agent.registry import Registry, process_start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def _state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return stat[stat.rindex(b")") + 2:].split()[0]


def test_a_live_process_has_its_start_time() -> None:
    start = process_start_time(os.getpid())
    assert start is not None
    assert start == process_start_time(os.getpid())


def test_an_exited_process_not_yet_reaped_is_gone() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while _state(pid) != b"Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert process_start_time(pid) is None
    finally:
        os.waitpid(pid, 0)
    assert process_start_time(pid) is None


def _record(path: str, session_id: str, pid: int) -> None:
    with open(path, "w") as fh:
        json.dump({"id": session_id, "pid": pid, "pid_start": process_start_time(pid),
                   "state": "started", "peer_uid": 1001}, fh)


def test_a_claim_never_removes_the_record_of_a_live_session(tmp_path: Path) -> None:
    """On a case-insensitive filesystem (macOS's default) `ABC.json` and `abc.json` are one
    file: a start as `abc` finds the live record of another peer's session `ABC` at its path.
    The record's id differs, but its supervisor lives: the claim is refused and the record kept
    (it must not be taken for a stale one and removed, which would hide `ABC` from list,
    count and terminate). Here the file at `abc.json` holds what that filesystem shows."""
    reg = Registry(str(tmp_path / "sessions"))
    reg.claim("other", os.getpid(), 1002)  # creates the directory as the registry wants it
    path = os.path.join(reg.directory, "abc.json")
    _record(path, "ABC", os.getpid())
    with pytest.raises(SessionExists):
        reg.claim("abc", os.getpid(), 1002)
    with open(path) as fh:
        assert json.load(fh)["id"] == "ABC"


def test_a_claim_takes_over_a_stale_record(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path / "sessions"))
    reg.claim("other", os.getpid(), 1002)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    start = process_start_time(pid)
    os.waitpid(pid, 0)
    path = os.path.join(reg.directory, "gone.json")
    with open(path, "w") as fh:
        json.dump({"id": "gone", "pid": pid, "pid_start": start, "state": "started"}, fh)
    reg.claim("gone", os.getpid(), 1002)
    assert reg.get("gone")["peer_uid"] == 1002
