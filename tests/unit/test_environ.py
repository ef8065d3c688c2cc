"""The session environment: built from scratch, allowlisted, validated."""

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.accounts import Account
from agent.environ import ALLOWED_CLIENT_ENV, DEFAULT_PATH, build_env, env_path
from agent.errors import BadRequest

ALICE = Account("alice", 1001, 1001, "/home/alice", "/bin/bash", (1001, 1002), "local")
FIXED = {"HOME", "USER", "LOGNAME", "SHELL", "PATH"}


def defs(tmp_path: Path, text: str) -> str:
    path = tmp_path / "login.defs"
    path.write_text(text)
    return str(path)


def test_identity_from_the_account_and_nothing_else(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNAS_MARKER", "leak")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent.so")
    env = build_env(ALICE, term=None, client_env={},
                    login_defs=defs(tmp_path, "ENV_PATH\tPATH=/usr/bin:/bin\n"))
    assert env == {
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/bash",
        "PATH": "/usr/bin:/bin",
    }


def test_term_only_when_given() -> None:
    assert "TERM" not in build_env(ALICE, term=None, client_env={"TERM": "xterm"})
    env = build_env(ALICE, term="xterm-256color", client_env={})
    assert env["TERM"] == "xterm-256color"
    assert build_env(ALICE, term="screen.xterm-256color", client_env={})["TERM"] == (
        "screen.xterm-256color")


@pytest.mark.parametrize("term", ["", "../../etc/x", "xterm 256", "a\0b", "x" * 65, "-x",
                                  "xterm\n"])
def test_bad_term_is_refused(term: str) -> None:
    with pytest.raises(BadRequest, match="TERM") as info:
        build_env(ALICE, term=term, client_env={})
    assert info.value.reason == "bad_request"


def test_locale_and_tz_from_the_client_others_dropped() -> None:
    client = {
        "LANG": "de_DE.UTF-8",
        "LC_TIME": "en_GB.UTF-8",
        "LANGUAGE": "de:en",
        "TZ": "Europe/Berlin",
        "LD_PRELOAD": "/tmp/evil.so",
        "LD_LIBRARY_PATH": "/tmp",
        "DYLD_INSERT_LIBRARIES": "/tmp/evil.dylib",
        "PYTHONPATH": "/tmp",
        "PYTHONSTARTUP": "/tmp/x.py",
        "BASH_ENV": "/tmp/x.sh",
        "PATH": "/tmp",
        "HOME": "/tmp",
        "USER": "root",
        "SHELL": "/tmp/sh",
        "LC_EVIL": "x",
        "IFS": " ",
    }
    env = build_env(ALICE, term=None, client_env=client)
    assert set(env) == FIXED | {"LANG", "LC_TIME", "LANGUAGE", "TZ"}
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["TZ"] == "Europe/Berlin"
    assert env["HOME"] == "/home/alice"
    assert env["USER"] == "alice"
    assert env["PATH"] != "/tmp"


def test_allowlist_is_the_locale_and_tz() -> None:
    assert {"LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ"} <= ALLOWED_CLIENT_ENV
    assert all(n in ("LANG", "LANGUAGE", "TZ") or n.startswith("LC_")
               for n in ALLOWED_CLIENT_ENV)


@pytest.mark.parametrize(
    ("name", "value"),
    [("LANG=x", "C"), ("A\0B", "C"), ("LANG", "C\0.UTF-8"), ("", "x"), ("1LANG", "C"),
     ("LA NG", "C"), ("=", "")],
)
def test_bad_names_and_values_raise_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as info:
        build_env(ALICE, term=None, client_env={name: value})
    assert repr(name) in str(info.value) or name in str(info.value)
    with pytest.raises(BadRequest):
        build_env(ALICE, term=None, client_env={}, extra={name: value})


def test_equals_sign_in_a_value_is_fine() -> None:
    env = build_env(ALICE, term=None, client_env={}, extra={"LESS": "-R --x=1"})
    assert env["LESS"] == "-R --x=1"


def test_extra_is_merged_last_but_never_identity_or_forbidden() -> None:
    extra = {
        "LANG": "fr_FR.UTF-8",
        "PATH": "/opt/site/bin:/usr/bin:/bin",
        "KRB5CCNAME": "FILE:/tmp/krb5cc_1001",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/evil",
        "LD_PRELOAD": "/x.so",
        "ld_library_path": "/x",
        "DYLD_LIBRARY_PATH": "/x",
        "PYTHONHOME": "/x",
    }
    env = build_env(ALICE, term=None, client_env={"LANG": "C.UTF-8"}, extra=extra)
    assert env["LANG"] == "fr_FR.UTF-8"
    assert env["PATH"] == "/opt/site/bin:/usr/bin:/bin"
    assert env["KRB5CCNAME"] == "FILE:/tmp/krb5cc_1001"
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (
        "/home/alice", "alice", "alice", "/bin/bash")
    assert not [n for n in env if n.upper().startswith(("LD_", "DYLD_", "PYTHON"))]


def test_non_string_values_are_refused() -> None:
    with pytest.raises(BadRequest, match="LANG"):
        build_env(ALICE, term=None, client_env={"LANG": 5})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ENV_PATH\tPATH=/usr/local/bin:/usr/bin:/bin:/usr/games\n",
         "/usr/local/bin:/usr/bin:/bin:/usr/games"),
        ("# comment\nENV_SUPATH PATH=/sbin:/bin\nENV_PATH /usr/bin:/bin\n", "/usr/bin:/bin"),
        ('ENV_PATH "PATH=/a:/b"\n', "/a:/b"),
        ("ENV_PATH PATH=/first\nENV_PATH PATH=/second\n", "/second"),
        ("#ENV_PATH PATH=/commented\n", DEFAULT_PATH),
        ("ENV_PATH PATH=:/usr/bin\n", DEFAULT_PATH),  # empty entry = working directory
        ("ENV_PATH PATH=bin:/usr/bin\n", DEFAULT_PATH),  # relative entry
        ("ENV_PATH PATH=\n", DEFAULT_PATH),
        ("ENV_PATH\n", DEFAULT_PATH),
        ("", DEFAULT_PATH),
        ("ENV_PATH PATH=/a\r\nUMASK 022\r\n", "/a"),
        ("UMASK 022\nENV_PATH PATH=/last", "/last"),  # no newline at the end
        ("  ENV_PATH PATH=/indented\n", "/indented"),
        ("ENV_PATHS PATH=/no\nXENV_PATH PATH=/no\n", DEFAULT_PATH),
        ("UMASK 022 # ENV_PATH PATH=/no\n", DEFAULT_PATH),
        ("ENV_PATH PATH=/a\nENV_PATH PATH=relative\n", DEFAULT_PATH),  # the last one counts
        # getdef's fields: the key ends at a space or a tab, after spaces and tabs only; a line
        # ends at a newline only
        ("ENV_PATH\r\t/b\n", DEFAULT_PATH),
        ("ENV_PATH\x0bPATH=/b\n", DEFAULT_PATH),
        ("\x0cENV_PATH PATH=/b\n", DEFAULT_PATH),
        ("X\rENV_PATH PATH=/b\n", DEFAULT_PATH),
        ("ENV_PATH PATH=/a\nENV_PATH\r\n", "/a"),
    ],
)
def test_env_path_from_login_defs(tmp_path: Path, text: str, expected: str) -> None:
    assert env_path(defs(tmp_path, text)) == expected


def test_env_path_default_when_login_defs_is_missing(tmp_path: Path) -> None:
    assert env_path(str(tmp_path / "absent")) == DEFAULT_PATH
    env = build_env(ALICE, term=None, client_env={}, login_defs=str(tmp_path / "absent"))
    assert env["PATH"] == DEFAULT_PATH


def test_this_hosts_login_defs_is_read() -> None:
    if not os.path.exists("/etc/login.defs"):
        assert env_path() == DEFAULT_PATH
        return
    with open("/etc/login.defs") as fh:
        lines = [ln.split(None, 1) for ln in fh if ln.startswith("ENV_PATH")]
    expected = lines[-1][1].strip().removeprefix("PATH=") if lines else DEFAULT_PATH
    assert env_path() == expected


_names = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=1,
                 max_size=12)
_values = st.text(max_size=20).filter(lambda v: "\0" not in v)


@given(st.dictionaries(_names, _values, max_size=8))
def test_whatever_the_client_sends_only_allowed_names_come_through(
        client: dict[str, str]) -> None:
    try:
        env = build_env(ALICE, term=None, client_env=client)
    except BadRequest:
        assert any(not n.isidentifier() or not n.isascii() or "=" in n for n in client)
        return
    assert set(env) <= FIXED | ALLOWED_CLIENT_ENV
    for name in set(env) - FIXED:
        assert env[name] == client[name]


def test_macos_sessions_get_sbin_in_path_as_sshd_gives(tmp_path: Path) -> None:
    """macOS has no /etc/login.defs; sshd there gives /usr/bin:/bin:/usr/sbin:/sbin."""
    missing = str(tmp_path / "no-login.defs")
    path = build_env(ALICE, term=None, client_env={}, login_defs=missing,
                     sys_platform="darwin")["PATH"].split(":")
    assert {"/usr/bin", "/bin", "/usr/sbin", "/sbin"} <= set(path)
    assert build_env(ALICE, term=None, client_env={}, login_defs=missing,
                     sys_platform="linux")["PATH"] == DEFAULT_PATH
