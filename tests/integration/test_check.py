"""`runas-agent check` against real accounts, as a subprocess, inside the isolated namespace."""

import grp
import os
import pwd
from pathlib import Path

import pytest

from tests.conftest import Users, run_cli, run_json, write_config

pytestmark = pytest.mark.privileged


def test_local_user_with_supplementary_group(users: Users) -> None:
    rc, out = run_json("check", users.alice)
    pw = pwd.getpwnam(users.alice)
    devs = grp.getgrnam(users.devs_group).gr_gid
    assert rc == 0
    assert out["usable"] is True
    assert out["reason"] is None
    assert out["uid"] == pw.pw_uid
    assert out["gid"] == pw.pw_gid
    assert out["home"] == f"/home/{users.alice}"
    assert out["shell"] == "/bin/bash"
    assert out["source"] == "local"
    assert out["groups"] == sorted({pw.pw_gid, devs})
    names = [c["name"] for c in out["checks"]]
    assert names == ["name", "exists", "uid", "source", "shell", "home", "groups", "policy"]
    assert all(c["ok"] for c in out["checks"])


def test_text_output_shows_every_check(users: Users) -> None:
    proc = run_cli("check", users.alice)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for name in ("name", "exists", "uid", "source", "shell", "home", "groups", "policy"):
        assert any(line.split()[1:2] == [name] and line.split()[0] == "ok" for line in lines), name
    assert f"({users.devs_group})" in proc.stdout
    assert lines[-1].startswith(f"{users.alice}: usable as a session target")


def test_directory_user(users: Users) -> None:
    rc, out = run_json("check", users.dirk)
    assert rc == 0
    assert out["source"] == "directory"
    assert out["uid"] == 5001


def test_directory_user_refused_by_policy(users: Users, tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "c.yaml"), "policy: {allow_directory_users: false}\n")
    rc, out = run_json("check", users.dirk, "--config", cfg)
    assert rc == 1
    assert out["reason"] == "directory_user_refused"
    rc, out = run_json("check", users.alice, "--config", cfg)
    assert rc == 0


@pytest.mark.parametrize("who", ["root", "toor", "zero"])
def test_uid_zero_refused_whatever_the_name(users: Users, who: str) -> None:
    if who == "zero":  # refused for its uid alone: its primary group is not 0
        assert grp.getgrgid(pwd.getpwnam(who).pw_gid).gr_name == users.zero
    rc, out = run_json("check", who)
    assert rc == 1
    assert out["reason"] == "root_refused"
    assert out["uid"] == 0
    assert out["message"] == "uid 0: root is never a session target, whatever its name"
    proc = run_cli("check", who)
    assert proc.returncode == 1
    assert "root_refused" in proc.stdout.splitlines()[-1]


def test_missing_user(users: Users) -> None:
    rc, out = run_json("check", users.missing)
    assert rc == 1
    assert out["reason"] == "user_not_found"
    assert out["uid"] is None


@pytest.mark.parametrize("attr", ["nolog", "nofalse"])
def test_disabled_shell(users: Users, attr: str) -> None:
    rc, out = run_json("check", getattr(users, attr))
    assert rc == 1
    assert out["reason"] == "shell_disabled"


def test_disabled_shell_allowed_by_policy_uses_sh(users: Users, tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "c.yaml"), "policy: {allow_disabled_shells: true}\n")
    rc, out = run_json("check", users.nolog, "--config", cfg)
    assert rc == 0
    assert out["shell"] == "/usr/sbin/nologin"
    assert out["session_shell"] == "/bin/sh"


def test_non_executable_shell(users: Users, tmp_path: Path) -> None:
    os.system(f"useradd -M -s {tmp_path}/noexec -- noexec")
    (tmp_path / "noexec").write_text("#!/bin/sh\n")
    rc, out = run_json("check", "noexec")
    assert rc == 1
    assert out["reason"] == "shell_disabled"
    assert "not executable" in str(out["message"])


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ("{deny_users: [alice]}", "denied_by_policy"),
        ("{allow_users: [bob]}", "denied_by_policy"),
        ("{min_uid: 60000}", "denied_by_policy"),
        ("{allow_users: [alice], deny_users: [bob]}", None),
    ],
)
def test_node_policy_restricts(users: Users, tmp_path: Path, policy: str,
                               reason: "str | None") -> None:
    cfg = write_config(str(tmp_path / "c.yaml"), f"policy: {policy}\n")
    rc, out = run_json("check", users.alice, "--config", cfg)
    assert out["reason"] == reason
    assert rc == (0 if reason is None else 1)


@pytest.mark.parametrize(
    "name",
    ["-x", "--help", "/etc/passwd", "../alice", "alice:x", "al ice", "al\tice", "al\nice",
     "x" * 300, "ａｌｉｃｅ", "alice;id", "$(id)", ""],
)
def test_hostile_names_exit_1_invalid_name(users: Users, name: str) -> None:
    rc, out = run_json("check", "--", name) if name.startswith("-") else run_json("check", name)
    assert rc == 1
    assert out["reason"] == "invalid_name"


def test_invalid_utf8_name(users: Users) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "agent", "check", "--json", b"al\xffice"],
                          capture_output=True, check=False)
    assert proc.returncode == 1
    assert b'"invalid_name"' in proc.stdout


def test_config_check_command(tmp_path: Path) -> None:
    good = write_config(str(tmp_path / "good.yaml"), "run_as: {enabled: true}\n")
    bad = write_config(str(tmp_path / "bad.yaml"), "run_as: {enable: true}\n")
    assert run_cli("config", "check", good).returncode == 0
    proc = run_cli("config", "check", bad)
    assert proc.returncode == 2
    assert "run_as.enable: unknown key" in proc.stderr
    proc = run_cli("check", "alice", "--config", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


def test_primary_group_zero_is_refused(users: Users) -> None:
    import subprocess

    subprocess.run(["useradd", "-M", "-g", "0", "-s", "/bin/sh", "--", "rootgrp"], check=True)
    rc, out = run_json("check", "rootgrp")
    assert rc == 1
    assert out["reason"] == "root_refused"
    assert "primary group 0" in out["message"]


def test_deny_list_covers_uid_aliases(users: Users, tmp_path: Path) -> None:
    import pwd
    import subprocess

    uid = pwd.getpwnam(users.alice).pw_uid
    subprocess.run(["useradd", "-o", "-u", str(uid), "-M", "-s", "/bin/bash", "--", "alias2"],
                   check=True)
    cfg = write_config(str(tmp_path / "c.yaml"), f"policy: {{deny_users: [{users.alice}]}}\n")
    rc, out = run_json("check", "alias2", "--config", cfg)
    assert (rc, out["reason"]) == (1, "denied_by_policy")
    assert "deny_users" in out["message"]
    rc, out = run_json("check", users.bob, "--config", cfg)
    assert rc == 0
