import json
import os
import stat
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
