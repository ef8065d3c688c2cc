"""Which process a registry record names is judged from /proc, for real: a supervisor that has
exited but is not reaped yet (a zombie, waiting for an init that may never reap it) is gone, so
its session is neither counted, listed nor signalled."""

from __future__ import annotations

import os
import sys
import time

import pytest

from agent.registry import process_start_time

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
