from pathlib import Path

import pytest

from agent.config import Config, load_config, parse
from agent.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(None) if not Path("/etc/runas-agent/config.yaml").exists() else Config()
    assert cfg == Config()
    assert cfg.socket.path == "/run/runas-agent/runas-agent.sock"
    assert cfg.socket.mode == 0o660
    assert cfg.peers.allowed_uids == (0,)
    assert cfg.run_as.enabled is False
    assert cfg.policy.allow_directory_users is True
    assert cfg.policy.allow_disabled_shells is False


def test_empty_file_is_defaults() -> None:
    assert parse("") == Config()


def test_values_are_read() -> None:
    cfg = parse(
        """
socket: {path: /tmp/x.sock, mode: 0660, group: ssm}
peers: {allowed_uids: [0, 998], allowed_groups: [ssm]}
run_as: {enabled: true, default_user: alice}
policy: {deny_users: [bob], allow_users: [alice], min_uid: 1000, allow_directory_users: false}
session: {max_duration: 3600, idle_timeout: 1200, end_mode: all}
"""
    )
    assert cfg.socket.mode == 0o660
    assert cfg.socket.group == "ssm"
    assert cfg.peers.allowed_uids == (0, 998)
    assert cfg.run_as.default_user == "alice"
    assert cfg.policy.deny_users == ("bob",)
    assert cfg.policy.min_uid == 1000
    assert cfg.session.max_duration == 3600.0
    assert isinstance(cfg.session.max_duration, float)
    assert cfg.session.end_mode == "all"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sockte: {}", "sockte: unknown key"),
        ("policy: {min_uid: 1000, deny: [bob]}", "policy.deny: unknown key"),
        ("policy: {min_uid: '1000'}", "policy.min_uid: expected integer, got str"),
        ("policy: {min_uid: true}", "policy.min_uid: expected integer, got bool"),
        ("policy: {deny_users: bob}", "policy.deny_users: expected list of string, got str"),
        ("policy: {deny_users: [bob, 3]}", "policy.deny_users[1]: expected string, got int"),
        ("run_as: {enabled: 'yes'}", "run_as.enabled: expected boolean, got str"),
        ("run_as: {default_user: [a]}", "run_as.default_user: expected string or null, got list"),
        ("session: 5", "session: expected a mapping, got int"),
        ("- a\n- b", "config: expected a mapping, got list"),
        ("session: {end_mode: kill}", "session.end_mode: expected one of process_group, all"),
        ("session: {max_duration: -1}", "session.max_duration: must not be negative"),
        ("limits: {max_frame: 0}", "limits.max_frame: must be positive"),
        ("socket: {path: run.sock}", "socket.path: expected an absolute path"),
        ("socket: {mode: 0666}", "socket.mode: the socket must not be accessible to others"),
        ("a: [", "not valid YAML"),
    ],
)
def test_errors_name_the_key_path_and_type(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "cfg.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("cfg.yaml: ")


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_unknown_key_hint_lists_known_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse("policy: {minuid: 5}")
    assert info.value.hint is not None
    assert "min_uid" in info.value.hint


def test_end_mode_all_is_flagged_on_macos_only() -> None:
    from agent.config import parse, platform_warnings

    cfg = parse("session:\n  end_mode: all\n")
    (warning,) = platform_warnings(cfg, "darwin")
    assert "session.end_mode" in warning
    assert "macOS" in warning
    assert platform_warnings(cfg, "linux") == ()
    assert platform_warnings(parse("{}"), "darwin") == ()


def test_recording_defaults_and_values() -> None:
    rec = parse("").recording
    assert rec.enabled is False
    assert rec.dir == "/var/log/runas-agent/sessions"
    assert rec.input is False
    assert rec.on_limit == "end"
    assert rec.on_failure == "end"
    rec = parse("recording: {enabled: true, dir: /srv/casts, input: true, max_bytes: 0,"
                " on_limit: stop, on_failure: continue}").recording
    assert (rec.enabled, rec.dir, rec.input, rec.max_bytes, rec.on_limit, rec.on_failure) == (
        True, "/srv/casts", True, 0, "stop", "continue")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recording: {enable: true}", "recording.enable: unknown key"),
        ("recording: {enabled: 1}", "recording.enabled: expected boolean, got int"),
        ("recording: {dir: casts}", "recording.dir: expected an absolute path"),
        ("recording: {dir: /}", "recording.dir: '/' must be a normalized path other than /"),
        ("recording: {dir: /var/../tmp}", "must be a normalized path"),
        ("recording: {dir: /run/runas-agent/sessions}", "is also session.state_dir"),
        ("recording: {dir: /var/log/runas-agent}", "is also the audit log's directory"),
        ("recording: {max_bytes: -1}", "recording.max_bytes: must not be negative"),
        ("recording: {max_bytes: 100}", "recording.max_bytes: must be 0 (unlimited) or at least"),
        ("recording: {max_bytes: 1.5}", "recording.max_bytes: expected integer, got float"),
        ("recording: {on_limit: drop}", "recording.on_limit: expected one of end, stop"),
        ("recording: {on_failure: ignore}", "recording.on_failure: expected one of end, continue"),
    ],
)
def test_recording_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "cfg.yaml")
    assert message in str(info.value)
