"""A spare's rehearsal (agent.session.rehearse): the start's steps on made-up values, run before
a session arrives. It must act on nothing: no file written, no process started, no descriptor
left open, and it must run on the shipped defaults (a failure would only be logged, and would
quietly give the time back)."""

from __future__ import annotations

import os
from pathlib import Path

from agent import session, values
from agent.config import load_config
from agent.platform.linux import Linux


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> str:
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return fh.read()


def test_the_rehearsal_acts_on_nothing(tmp_path: Path) -> None:
    base = load_config(None)
    state, audit = tmp_path / "state", tmp_path / "audit"
    state.mkdir()
    audit.mkdir()
    cfg = values.replace(
        base, session=values.replace(base.session, state_dir=str(state)),
        audit=values.replace(base.audit, path=str(audit / "audit.log")))
    fds, children = _open_fds(), _children()
    for _ in range(3):
        session.rehearse(cfg, Linux())
    assert list(state.iterdir()) == []
    assert list(audit.iterdir()) == []
    assert _open_fds() == fds
    assert _children() == children
