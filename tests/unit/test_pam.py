"""agent.pam without a PAM session: the real libpam's numbers, the conversation, the switches.

The account and session stages themselves run as root in tests/integration/test_pam_sessions.py.
"""

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import pam
from agent.config import from_mapping
from agent.errors import ConfigError, PamFailed
from tests.conftest import REPO


def test_import_does_no_work() -> None:
    code = ("import sys; before = set(sys.modules); import agent.pam, agent.utmp; "
            "new = set(sys.modules) - before; maps = open('/proc/self/maps').read(); "
            "print(sorted(m for m in new if m.startswith(('ctypes', 'ipaddress'))), "
            "'libpam' in maps)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[] False"


def test_linux_pam_constants_match_the_installed_libpam() -> None:
    lib = pam.load()
    c = pam.LINUX_PAM
    assert lib.consts is c
    said = {rc: pam._strerror(lib, None, rc) for rc in
            (c.success, c.conv_err, c.buf_err, c.perm_denied, c.auth_err, c.user_unknown,
             c.new_authtok_reqd, c.acct_expired, c.authtok_expired)}
    assert said == {
        c.success: "Success",
        c.conv_err: "Conversation error",
        c.buf_err: "Memory buffer error",
        c.perm_denied: "Permission denied",
        c.auth_err: "Authentication failure",
        c.user_unknown: "User not known to the underlying authentication module",
        c.new_authtok_reqd: "Authentication token is no longer valid; new one required",
        c.acct_expired: "User account has expired",
        c.authtok_expired: "Authentication token expired",
    }


@pytest.mark.skipif(not os.path.isfile("/etc/pam.d/runuser"), reason="no runuser service")
def test_prewarm_loads_the_stack_and_runs_none_of_it() -> None:
    """The daemon's prewarm maps libpam and every module of the service, which stay loaded
    after its handle ended; no stage ran: the process's loginuid, groups, limits, umask, nice
    value and cgroup are its own."""
    code = """if True:
        import os
        from agent import pam, proclimits

        def state():
            return (open("/proc/self/loginuid").read(), os.getgroups(), proclimits.capture(),
                    open("/proc/self/cgroup").read())

        before = state()
        lib = pam.prewarm("runuser")
        maps = open("/proc/self/maps").read()
        print(lib.path, state() == before, all(m in maps for m in (
            "pam_rootok.so", "pam_keyinit.so", "pam_limits.so", "pam_unix.so")))
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["libpam.so.0", "True", "True"]


def test_prewarm_of_an_invalid_service_loads_nothing() -> None:
    with pytest.raises(PamFailed):
        pam.prewarm("../shadow")


def test_missing_libpam_is_a_clear_error() -> None:
    with pytest.raises(PamFailed) as err:
        pam.load(candidates=("libpam-absent.so.9",))
    assert "libpam cannot be loaded: libpam-absent.so.9" in err.value.message
    assert "libpam0g" in (err.value.hint or "")
    assert "session.pam: false" in (err.value.hint or "")
    assert err.value.reason == "pam_failed"


def test_macos_candidates_and_constants() -> None:
    assert pam.library_candidates("darwin")[0] == "/usr/lib/libpam.dylib"
    assert pam.library_candidates("linux") == ("libpam.so.0",)
    # OpenPAM numbers (XSSO) differ from Linux-PAM's.
    assert (pam.OPENPAM.acct_expired, pam.OPENPAM.establish_cred) == (17, 0x1)
    assert (pam.LINUX_PAM.acct_expired, pam.LINUX_PAM.establish_cred) == (13, 0x2)


def _messages(lib: pam.Libpam, items: list[tuple[int, bytes]]) -> Any:
    structs = [lib.message_struct(style, text) for style, text in items]
    array = (ctypes.POINTER(lib.message_struct) * max(1, len(items)))()
    for i, st in enumerate(structs):
        array[i] = ctypes.pointer(st)
    array._keep = structs
    return array


def test_conversation_keeps_messages_and_acknowledges_them() -> None:
    lib = pam.load()
    c = lib.consts
    said: list[pam.Message] = []
    conv = lib.conv_type(pam.conversation(lib, said))
    msgs = _messages(lib, [(c.error_msg, b"Your account has expired"), (c.text_info, b"hi\n")])
    resp = ctypes.POINTER(lib.response_struct)()
    rc = conv(2, msgs, ctypes.byref(resp), None)
    assert rc == c.success
    assert bool(resp)  # an array of empty answers, which libpam frees
    assert (resp[0].resp, resp[1].resp) == (None, None)
    lib.libc.free(ctypes.cast(resp, ctypes.c_void_p))
    assert said == [pam.Message("error", "Your account has expired"), pam.Message("info", "hi")]


@pytest.mark.parametrize("style", [1, 2, 5, 7])  # echo off, echo on, radio, binary prompt
def test_conversation_answers_no_prompt(style: int) -> None:
    lib = pam.load()
    said: list[pam.Message] = []
    conv = lib.conv_type(pam.conversation(lib, said))
    msgs = _messages(lib, [(lib.consts.text_info, b"before"), (style, b"Password: ")])
    resp = ctypes.POINTER(lib.response_struct)()
    assert conv(2, msgs, ctypes.byref(resp), None) == lib.consts.conv_err
    assert not resp
    assert said[-1] == pam.Message("prompt", "Password:")


def test_conversation_refuses_bad_counts_and_null_messages() -> None:
    lib = pam.load()
    conv = lib.conv_type(pam.conversation(lib, []))
    resp = ctypes.POINTER(lib.response_struct)()
    msgs = _messages(lib, [(lib.consts.text_info, b"x")])
    assert conv(0, msgs, ctypes.byref(resp), None) == lib.consts.conv_err
    assert conv(33, msgs, ctypes.byref(resp), None) == lib.consts.conv_err
    nulls = (ctypes.POINTER(lib.message_struct) * 1)()
    assert conv(1, nulls, ctypes.byref(resp), None) == lib.consts.conv_err
    assert not resp


def test_wanted(tmp_path: Path) -> None:
    (tmp_path / "runas-agent").write_text("account required pam_permit.so\n")
    assert pam.wanted(True, "runas-agent", sys_platform="linux", pam_dir=str(tmp_path))
    assert not pam.wanted(False, "runas-agent", sys_platform="linux", pam_dir=str(tmp_path))
    assert not pam.wanted(True, "runas-agent", sys_platform="darwin", pam_dir=str(tmp_path))
    assert not pam.wanted(True, "other-name", sys_platform="linux", pam_dir=str(tmp_path))
    (tmp_path / "dir-service").mkdir()
    assert not pam.wanted(True, "dir-service", sys_platform="linux", pam_dir=str(tmp_path))
    with pytest.raises(PamFailed):
        pam.wanted(True, "../passwd", sys_platform="linux", pam_dir=str(tmp_path))


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "sp ace", "nul\0"])
def test_service_names(bad: str) -> None:
    with pytest.raises(PamFailed):
        pam.check_service(bad)
    with pytest.raises(ConfigError):
        from_mapping({"session": {"pam_service": bad}})


def test_config_defaults() -> None:
    cfg = from_mapping(None)
    assert cfg.session.pam is True
    assert cfg.session.pam_service == "runas-agent"
    assert from_mapping({"session": {"pam": False}}).session.pam is False


def test_start_rejects_nul_before_loading_anything() -> None:
    with pytest.raises(PamFailed):
        pam.PamSession.start("runas-agent", "ali\0ce", lib=None)
    with pytest.raises(PamFailed):
        pam.PamSession.start("runas-agent", "alice", tty="/dev/pts/1\0x", lib=None)


def test_service_file_shape() -> None:
    """The shipped stack: no authentication, account and session modules in sshd's order."""
    text = (Path(REPO) / "packaging/pam/runas-agent").read_text()
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    modules = [(ln[0], ln[-1] if ln[-1].endswith(".so") else next(w for w in ln if
                                                                   w.endswith(".so")))
               for ln in lines]
    assert modules == [
        ("auth", "pam_deny.so"), ("auth", "pam_permit.so"), ("password", "pam_deny.so"),
        ("account", "pam_nologin.so"), ("account", "pam_unix.so"),
        ("session", "pam_keyinit.so"), ("session", "pam_loginuid.so"),
        ("session", "pam_limits.so"), ("session", "pam_env.so"), ("session", "pam_env.so"),
        ("-session", "pam_systemd.so"), ("session", "pam_unix.so"),
    ]
    assert all("user_readenv=0" in ln for ln in lines if "pam_env.so" in ln)
    # Every module it requires is installed here (libpam-modules, a required package on
    # Debian 12); "-" marks the one that may be absent (pam_systemd, from libpam-systemd).
    for kind, module in modules:
        if kind.startswith("-"):
            continue
        assert any(os.path.exists(os.path.join(d, module)) for d in
                   ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security",
                    "/lib/aarch64-linux-gnu/security", "/usr/lib/aarch64-linux-gnu/security",
                    "/lib64/security", "/usr/lib64/security")), module


# --- the PAM process's report ------------------------------------------------------------------


def test_a_reported_error_comes_back_as_the_class_of_its_reason() -> None:
    from agent.errors import AccountRefused

    refused = pam._error({"error": "account_refused", "message": "alice: expired",
                          "hint": "said so"})
    assert type(refused) is AccountRefused
    assert (refused.message, refused.hint) == ("alice: expired", "said so")
    failed = pam._error({"error": "pam_failed", "message": "pam_open_session failed",
                         "hint": None})
    assert type(failed) is PamFailed
    assert failed.hint is None
    # A reason the PAM process has no business reporting is a PAM failure, never another code.
    other = pam._error({"error": "root_refused", "message": "m"})
    assert type(other) is PamFailed
    with pytest.raises(ValueError, match="without a message"):
        pam._error({"error": "pam_failed", "message": 7})


class _Process:
    pid = 4242


def _report(**over: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "groups": [1000, 27], "environment": {"LANG": "C", "ODD": "\udcff"},
        "limits": {"rlimits": [[1, 8192, 8192]], "umask": 0o077, "nice": None},
        "loginuid": 1000, "cgroup": "/user.slice/session-3.scope",
        "messages": [["info", "hello"]],
    }
    report.update(over)
    return report


def test_a_report_is_read_back_exactly() -> None:
    import json

    from agent.proclimits import ProcessLimits

    sent = json.dumps(_report()).encode()
    got = pam._opened(json.loads(sent.decode("utf-8")), _Process())  # type: ignore[arg-type]
    assert got.pid == 4242
    assert got.groups == (1000, 27)
    assert got.environment == {"LANG": "C", "ODD": "\udcff"}  # surrogateescape survives
    assert got.limits == ProcessLimits(((1, 8192, 8192),), 0o077, None)
    assert (got.loginuid, got.cgroup) == (1000, "/user.slice/session-3.scope")
    assert got.messages == (pam.Message("info", "hello"),)


@pytest.mark.parametrize("bad", [
    {"groups": ["0"]}, {"groups": [True]}, {"environment": {"A": 1}},
    {"limits": {"rlimits": [[1, 2]], "umask": None, "nice": None}},
    {"limits": {"rlimits": [], "umask": "0", "nice": None}}, {"loginuid": "0"},
    {"cgroup": 1}, {"messages": [["info", 1]]},
])
def test_a_malformed_report_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        pam._opened(_report(**bad), _Process())  # type: ignore[arg-type]
