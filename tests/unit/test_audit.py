import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.audit import AuditLog
from agent.errors import AuditFailed


def test_records_are_json_lines_0600_in_a_0700_dir(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit" / "audit.log"))
    log.record("session.started", session_id="s1", user="alice", uid=1001, peer_uid=0)
    log.record("session.ended", session_id="s1", exit_status={"code": 0})
    lines = (tmp_path / "audit" / "audit.log").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["event"] for r in recs] == ["session.started", "session.ended"]
    assert recs[0]["uid"] == 1001
    assert recs[0]["ts"].endswith("Z")
    assert stat.S_IMODE(os.stat(tmp_path / "audit" / "audit.log").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "audit").st_mode) == 0o700


def test_unwritable_log_raises_typed_error(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_text("")
    (tmp_path / "link.log").symlink_to(target)
    with pytest.raises(AuditFailed, match="cannot write audit record"):
        AuditLog(str(tmp_path / "link.log")).record("session.requested")


def test_disk_full_is_audit_failed() -> None:
    if not os.path.exists("/dev/full"):
        pytest.fail("/dev/full is expected on Linux")
    with pytest.raises(AuditFailed):
        AuditLog("/dev/full").record("session.requested")


def test_a_record_that_does_not_fit_leaves_no_partial_line(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE, in a child process) makes the write short, as a full disk
    does: the bytes that made it are cut off again, and the next record still parses."""
    import subprocess
    import sys

    path = tmp_path / "audit.log"
    code = (
        "import resource, sys\n"
        "from agent.audit import AuditLog\n"
        "from agent.errors import AuditFailed\n"
        "log = AuditLog(sys.argv[1])\n"
        "log.record('session.requested', session_id='s1')\n"
        "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (150, hard))\n"
        "try:\n"
        "    log.record('session.started', session_id='s1', user='x' * 200)\n"
        "except AuditFailed as exc:\n"
        "    print(exc.reason)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))\n"
        "log.record('session.ended', session_id='s1')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert proc.stdout == "audit_failed\n", proc.stderr
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["event"] for r in recs] == ["session.requested", "session.ended"]


def test_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(AuditFailed, match="not writable by group or others"):
        AuditLog(str(d / "audit.log")).record("session.requested")
    assert not (d / "audit.log").exists()


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a" / "audit.log"))
    log.record("session.requested", principal="arn:\x1b[2J\u202e")
    raw = (tmp_path / "a" / "audit.log").read_bytes()
    raw.decode("ascii")
    assert b"\x1b" not in raw
    assert json.loads(raw)["principal"] == "arn:\x1b[2J\u202e"


def test_every_record_is_fsynced_before_record_returns(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The real fsync, observed at its call: each record() returns only after the log file,
    already holding that record, was flushed to disk."""
    path = tmp_path / "audit" / "audit.log"
    real_fsync = os.fsync
    synced: list[tuple[str, bytes]] = []

    def observed_fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), path.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observed_fsync)
    log = AuditLog(str(path))
    for n, event in enumerate(("session.requested", "session.started", "session.ended"), 1):
        log.record(event, session_id="s1")
        on_disk = path.read_bytes()
        assert len(on_disk.splitlines()) == n
        assert (str(path), on_disk) in synced, f"{event} was not fsynced before record returned"


SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
while libc.renameat2(-100, a, -100, b, 2) == 0:
    pass
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the attacker's directory needs another owner")
def test_a_directory_swapped_under_the_log_never_receives_a_record(tmp_path: Path) -> None:
    """Someone who may rename entries in the directory above the log's (a group-writable
    /var/log) swaps the log's directory for a link to one of theirs, again and again, while
    records are written: a record lands in the checked directory or fails, never in theirs."""
    os.chmod(tmp_path, 0o755)
    logdir = tmp_path / "log"
    logdir.mkdir(mode=0o700)
    evil = tmp_path / "evil"
    evil.mkdir()
    os.chown(evil, 4242, 4242)
    os.chmod(evil, 0o777)
    log = AuditLog(str(logdir / "audit.log"))

    link = tmp_path / "link"
    link.symlink_to(evil)
    # Another process (no lock shared with the writer) swaps the two names without pause;
    # renameat2's RENAME_EXCHANGE keeps both names in place at every moment.
    flipper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(logdir), str(link)])
    written = failed = 0
    try:
        for _ in range(3000):
            try:
                log.record("session.requested")
                written += 1
            except AuditFailed:
                failed += 1
    finally:
        flipper.kill()
        flipper.wait()
    # The swap really raced the writes: some found the link in place and were refused.
    assert written > 0, failed
    assert failed > 0, written
    assert os.listdir(evil) == []
    real = logdir if logdir.is_dir() and not logdir.is_symlink() else link
    assert len((real / "audit.log").read_text().splitlines()) == written


def test_an_appended_record_is_written_at_once_and_synced_once(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    log = AuditLog(str(path))
    pending = log.append("session.requested", session_id="s1")
    log.record("session.started", session_id="s1")  # another writer meanwhile
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == [
        "session.requested", "session.started"]
    fds = len(os.listdir("/proc/self/fd"))
    pending.sync()
    assert len(os.listdir("/proc/self/fd")) == fds - 1  # the record's descriptor is closed
    pending.sync()  # once done, again is nothing
    assert len(path.read_text().splitlines()) == 2
