"""Every row of the Run As decision table, against real accounts, through `runas-agent resolve`."""

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Users, run_cli, run_json, sh, write_config

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"


def resolve(*args: str) -> "tuple[int, dict[str, Any]]":
    return run_json("resolve", *args)


def test_run_as_off_is_ssm_user_not_yet_created(users: Users) -> None:
    rc, out = resolve("--no-run-as", "--tag", f"{TAG}={users.alice}", "--default-user", users.bob)
    assert rc == 0
    assert out["allowed"] is True
    assert out["user"] == "ssm-user"
    assert out["source"] == "ssm-user"
    assert any("created on the first session" in s for s in out["steps"])


def test_run_as_on_tag_wins(users: Users) -> None:
    rc, out = resolve("--run-as", "--tag", f"{TAG}={users.alice}", "--default-user", users.bob)
    assert (rc, out["allowed"], out["user"], out["source"]) == (0, True, users.alice, "tag")


def test_run_as_on_tag_for_directory_user(users: Users) -> None:
    rc, out = resolve("--run-as", "--tag", f"{TAG}={users.dirk}")
    assert (rc, out["user"], out["source"]) == (0, users.dirk, "tag")


@pytest.mark.parametrize(
    ("attr", "reason"),
    [("missing", "user_not_found"), ("toor", "root_refused"), ("nolog", "shell_disabled")],
)
def test_tag_user_refused_never_falls_back(users: Users, attr: str, reason: str) -> None:
    rc, out = resolve("--run-as", "--tag", f"{TAG}={getattr(users, attr)}",
                      "--default-user", users.bob)
    assert rc == 1
    assert out["allowed"] is False
    assert out["reason"] == reason
    assert out["user"] == getattr(users, attr)
    assert out["source"] == "tag"


def test_tag_root_refused(users: Users) -> None:
    rc, out = resolve("--run-as", "--tag", f"{TAG}=root", "--default-user", users.bob)
    assert (rc, out["reason"]) == (1, "root_refused")


def test_tag_invalid_name(users: Users) -> None:
    rc, out = resolve("--run-as", "--tag", f"{TAG}=-oProxyCommand=id", "--default-user", users.bob)
    assert (rc, out["reason"]) == (1, "invalid_name")


@pytest.mark.parametrize("tag", [None, ""])
def test_no_tag_uses_default_user(users: Users, tag: "str | None") -> None:
    extra = [] if tag is None else ["--tag", f"{TAG}={tag}"]
    rc, out = resolve("--run-as", *extra, "--default-user", users.bob)
    assert (rc, out["user"], out["source"]) == (0, users.bob, "preference")


@pytest.mark.parametrize(
    ("attr", "reason"),
    [("missing", "user_not_found"), ("toor", "root_refused"), ("nofalse", "shell_disabled")],
)
def test_default_user_refused_is_denial(users: Users, attr: str, reason: str) -> None:
    rc, out = resolve("--run-as", "--default-user", getattr(users, attr))
    assert (rc, out["allowed"], out["reason"], out["source"]) == (1, False, reason, "preference")


@pytest.mark.parametrize("default", [None, ""])
def test_nothing_set_is_run_as_user_missing(users: Users, default: "str | None") -> None:
    extra = [] if default is None else ["--default-user", default]
    rc, out = resolve("--run-as", "--tag", "Team=ops", *extra)
    assert (rc, out["allowed"], out["reason"], out["user"]) == (1, False, "run_as_user_missing",
                                                                 None)


def test_tag_key_is_exact(users: Users) -> None:
    rc, out = resolve("--run-as", "--tag", f"ssmsessionrunas={users.alice}")
    assert (rc, out["reason"]) == (1, "run_as_user_missing")


def test_config_gives_preference_defaults(users: Users, tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "c.yaml"),
                       f"run_as: {{enabled: true, default_user: {users.bob}}}\n")
    rc, out = resolve("--config", cfg)
    assert (rc, out["user"], out["source"]) == (0, users.bob, "preference")
    rc, out = resolve("--config", cfg, "--no-run-as")
    assert out["user"] == "ssm-user"


def test_node_can_refuse_ssm_user(users: Users, tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "c.yaml"), "run_as: {allow_ssm_user: false}\n")
    rc, out = resolve("--config", cfg, "--no-run-as")
    assert (rc, out["reason"]) == (1, "denied_by_policy")


def test_existing_ssm_user_is_validated(users: Users) -> None:
    sh("useradd", "-m", "-s", "/bin/bash", "--", "ssm-user")
    try:
        rc, out = resolve("--no-run-as")
        assert (rc, out["user"], out["source"]) == (0, "ssm-user", "ssm-user")
        assert isinstance(out["uid"], int)
        assert out["uid"] > 0
    finally:
        sh("userdel", "-r", "--", "ssm-user")


def test_text_output_walks_the_steps(users: Users) -> None:
    proc = run_cli("resolve", "--run-as", "--default-user", users.missing)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == "  1. Run As is enabled"
    assert lines[-1].startswith("denied: user_not_found")
