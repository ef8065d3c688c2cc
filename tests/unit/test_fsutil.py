"""Atomic installs in a scratch directory, owned by whoever runs the tests.

The faults that need root (a full filesystem, a writer killed before the rename, real visudo)
are in tests/integration/test_ssm_user.py.
"""

import os
import stat
from pathlib import Path

import pytest

from agent import fsutil
from agent.errors import InstallFailed, SsmUserFailed

UID, GID = os.getuid(), os.getgid()
OLD = b"old content\n"
NEW = b"new content\n"


def _install(path: Path, data: bytes, **kw: object) -> fsutil.Installed:
    return fsutil.install(str(path), data, uid=UID, gid=GID, **kw)  # type: ignore[arg-type]


def _entries(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_install_new_file(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    res = _install(target, NEW)
    assert (res.written, res.fixed, res.changed) == (True, False, True)
    assert target.read_bytes() == NEW
    st = target.stat()
    assert stat.S_IMODE(st.st_mode) == 0o440
    assert (st.st_uid, st.st_gid) == (UID, GID)
    assert _entries(tmp_path) == ["drop-in"]


def test_identical_bytes_are_not_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    _install(target, NEW)
    before = target.stat()
    res = _install(target, NEW)
    assert (res.written, res.fixed, res.changed) == (False, False, False)
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_identical_bytes_with_wrong_mode_get_the_mode_fixed(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    _install(target, NEW)
    ino = target.stat().st_ino
    os.chmod(target, 0o666)
    res = _install(target, NEW)
    assert (res.written, res.fixed) == (False, True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o440
    assert target.stat().st_ino == ino
    assert target.read_bytes() == NEW


def test_other_mode_is_honoured(tmp_path: Path) -> None:
    target = tmp_path / "state"
    _install(target, NEW, mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_different_bytes_replace_the_file(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    _install(target, OLD)
    old_ino = target.stat().st_ino
    res = _install(target, NEW)
    assert res.written
    assert target.read_bytes() == NEW
    assert target.stat().st_ino != old_ino
    assert _entries(tmp_path) == ["drop-in"]


def test_validator_sees_the_complete_dotted_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    seen: list[tuple[str, bytes, int]] = []

    def validate(tmp: str) -> None:
        with open(tmp, "rb") as fh:
            seen.append((tmp, fh.read(), stat.S_IMODE(os.stat(tmp).st_mode)))

    _install(target, NEW, validate=validate)
    (tmp, content, mode), = seen
    assert os.path.dirname(tmp) == str(tmp_path)
    assert fsutil.is_temp_name(os.path.basename(tmp), "drop-in")
    assert os.path.basename(tmp).startswith(".drop-in.")
    assert (content, mode) == (NEW, 0o440)
    assert not os.path.exists(tmp)


def test_rejected_content_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    _install(target, OLD)

    def reject(tmp: str) -> None:
        raise SsmUserFailed("visudo: syntax error near line 2", hint="report this")

    with pytest.raises(InstallFailed) as info:
        _install(target, NEW, validate=reject)
    msg = str(info.value)
    assert "the new content was rejected: visudo: syntax error near line 2" in msg
    assert "the previous file is unchanged" in msg
    assert info.value.hint == "report this"
    assert target.read_bytes() == OLD
    assert _entries(tmp_path) == ["drop-in"]


def test_rejected_content_without_a_previous_file_leaves_none(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"

    def reject(tmp: str) -> None:
        raise SsmUserFailed("bad")

    with pytest.raises(InstallFailed, match="no file was installed"):
        _install(target, NEW, validate=reject)
    assert _entries(tmp_path) == []


def test_failing_before_rename_hook_cleans_up_and_propagates(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    _install(target, OLD)

    def boom(tmp: str) -> None:
        assert Path(tmp).read_bytes() == NEW
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        _install(target, NEW, before_rename=boom)
    assert target.read_bytes() == OLD
    assert _entries(tmp_path) == ["drop-in"]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    stale = [fsutil.temp_name("drop-in") for _ in range(2)]
    keep = [".filler", "drop-in.bak", ".drop-in.short", ".drop-in.0123456789ab.x",
            ".other.0123456789ab", "README"]
    for name in stale + keep:
        (tmp_path / name).write_bytes(b"x")
    res = _install(target, NEW)
    assert sorted(res.stale_removed) == sorted(str(tmp_path / n) for n in stale)
    assert _entries(tmp_path) == sorted(["drop-in", *keep])
    # Identical bytes: nothing written, but leftovers still go.
    (tmp_path / stale[0]).write_bytes(b"")
    res = _install(target, NEW)
    assert not res.written
    assert res.stale_removed == (str(tmp_path / stale[0]),)


def test_temp_names_are_fresh_and_recognised() -> None:
    names = {fsutil.temp_name("ssm-agent-users") for _ in range(100)}
    assert len(names) == 100
    assert all(fsutil.is_temp_name(n, "ssm-agent-users") for n in names)
    assert all("." in n for n in names)  # sudo skips names containing a dot
    assert not fsutil.is_temp_name(".ssm-agent-users.lock", "ssm-agent-users")
    assert not fsutil.is_temp_name("ssm-agent-users", "ssm-agent-users")


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(OLD)
    target = tmp_path / "drop-in"
    target.symlink_to(victim)
    _install(target, NEW)
    assert not target.is_symlink()
    assert target.read_bytes() == NEW
    assert victim.read_bytes() == OLD


def test_a_directory_at_the_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "drop-in").mkdir()
    with pytest.raises(InstallFailed, match="is a directory"):
        _install(tmp_path / "drop-in", NEW)
    with pytest.raises(InstallFailed, match="is a directory"):
        fsutil.remove(str(tmp_path / "drop-in"))


def test_missing_directory_and_relative_path(tmp_path: Path) -> None:
    with pytest.raises(InstallFailed, match="does not exist"):
        _install(tmp_path / "nope" / "drop-in", NEW)
    with pytest.raises(InstallFailed, match="absolute path"):
        fsutil.install("relative/drop-in", NEW)


def test_remove(tmp_path: Path) -> None:
    target = tmp_path / "drop-in"
    _install(target, NEW)
    (tmp_path / fsutil.temp_name("drop-in")).write_bytes(b"partial")
    assert fsutil.remove(str(target)) is True
    assert _entries(tmp_path) == []
    assert fsutil.remove(str(target)) is False
