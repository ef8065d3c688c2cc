"""ssm-user and its sudoers drop-in, with real useradd, real sudo and real visudo.

Everything runs inside the isolated namespace. Each test starts and ends with no ssm-user, no
drop-in and no state file (the `clean` fixture), since other tests share the namespace.

How the faults are forced:
- race: 20 `runas-agent ssm-user ensure` processes wait behind one pipe and are released
  together, while useradd is slowed by half a second (a wrapper bind-mounted over it in the
  namespace) so they all overlap with the one creating the account;
- full disk: a 64 KiB tmpfs (mode 0755, as sudo requires) is mounted on /etc/sudoers.d, seeded
  with the previous drop-in, then filled with a dotted filler file (sudo ignores it);
- visudo refusing: the visudo seam points at a script that prints an error and exits 1, and the
  real visudo is given content it must refuse;
- a crash: the install runs in a child process whose before_rename hook reports the temp file
  and blocks; the parent SIGKILLs it between the write and the rename.
"""

import dataclasses
import fcntl
import grp
import json
import os
import pwd
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from agent import fsutil, ssm_user
from agent.config import Config, SsmUserConfig
from agent.errors import AgentError, InstallFailed, SsmUserFailed
from agent.platform.linux import Linux
from agent.runner import run
from tests.conftest import REPO, Isolated, Users, run_cli, run_json, write_config
from tests.support.daemon import DaemonProc, running

pytestmark = pytest.mark.privileged

NAME = "ssm-user"
DIR = "/etc/sudoers.d"
DROP_IN = "/etc/sudoers.d/ssm-agent-users"
STATE = "/var/lib/runas-agent/ssm-user.created"
GOLDEN = b"# User rules for ssm-user\nssm-user ALL=(ALL) NOPASSWD:ALL\n"
# A different drop-in that also grants root: "the previous file" in the fault tests.
PREVIOUS = b"# an earlier rule for ssm-user\nssm-user ALL=(ALL:ALL) NOPASSWD: ALL\n"


def _exists(name: str = NAME) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wipe() -> None:
    while os.path.ismount(DIR):
        subprocess.run(["umount", DIR], check=True)
    if _exists():
        subprocess.run(["userdel", "-r", "-f", "--", NAME], capture_output=True)
        assert not _exists()
    try:
        grp.getgrnam(NAME)
    except KeyError:
        pass
    else:
        subprocess.run(["groupdel", "--", NAME], check=True)
    for entry in os.listdir(DIR):
        if entry == "ssm-agent-users" or fsutil.is_temp_name(entry, "ssm-agent-users"):
            os.unlink(os.path.join(DIR, entry))
    if os.path.exists(STATE):
        os.unlink(STATE)


@pytest.fixture
def clean(isolated: Isolated) -> Iterator[None]:
    _wipe()
    yield
    _wipe()


@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    return write_config(str(tmp_path / "config.yaml"), f"audit: {{path: {tmp_path}/audit.log}}\n")


def _audit(cfg: str) -> list[dict[str, Any]]:
    path = Path(cfg).parent / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _events(cfg: str) -> list[str]:
    return [r["event"] for r in _audit(cfg)]


def _ensure(cfg: str) -> "tuple[int, dict[str, Any], str]":
    proc = run_cli("ssm-user", "ensure", "--json", "--config", cfg)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _status(cfg: str) -> "tuple[int, dict[str, Any]]":
    proc = run_cli("ssm-user", "status", "--json", "--config", cfg)
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def _entries() -> list[str]:
    return sorted(os.listdir(DIR))


def _temps() -> list[str]:
    return [e for e in os.listdir(DIR) if e.startswith(".ssm-agent-users")]


def _sudo_valid() -> None:
    """The whole sudo configuration parses, and sudo itself runs for root."""
    proc = subprocess.run(["visudo", "-c"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["sudo", "-n", "true"], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def _sudo_as_ssm_user() -> "subprocess.CompletedProcess[str]":
    return subprocess.run(["runuser", "-u", NAME, "--", "sudo", "-n", "id", "-u"],
                          capture_output=True, text=True, timeout=30)


def _put(path: str, data: bytes, mode: int = 0o440) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
    os.chown(path, 0, 0)
    os.chmod(path, mode)


def _passwd_lines(name: str = NAME) -> list[str]:
    out = []
    for f in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"):
        with open(f) as fh:
            out += [line for line in fh if line.startswith(name + ":")]
    return out


# -- creation --------------------------------------------------------------------------------


def test_ensure_creates_the_account_and_the_drop_in(clean: None, cfg_path: str) -> None:
    assert not _exists()
    rc, out, err = _ensure(cfg_path)
    assert (rc, err) == (0, "")
    assert (out["ok"], out["created"], out["sudoers_written"]) == (True, True, True)
    pw = pwd.getpwnam(NAME)
    assert (out["uid"], out["home"], out["shell"]) == (pw.pw_uid, "/home/ssm-user", "/bin/bash")
    assert pw.pw_shell == "/bin/bash"
    home = os.stat(pw.pw_dir)
    assert stat.S_ISDIR(home.st_mode)
    assert (home.st_uid, home.st_gid) == (pw.pw_uid, pw.pw_gid)
    assert grp.getgrgid(pw.pw_gid).gr_name == NAME

    with open(DROP_IN, "rb") as fh:
        assert fh.read() == GOLDEN
    st = os.stat(DROP_IN)
    assert stat.S_IMODE(st.st_mode) == 0o440
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert _temps() == []
    _sudo_valid()
    proc = _sudo_as_ssm_user()
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "0\n", "")

    state = os.stat(STATE)
    assert (stat.S_IMODE(state.st_mode), state.st_uid, state.st_gid) == (0o600, 0, 0)
    assert _events(cfg_path) == ["ssm_user.created", "sudoers.written"]
    created = _audit(cfg_path)[0]
    assert (created["user"], created["uid"]) == (NAME, pw.pw_uid)

    # Again: nothing to do, nothing rewritten.
    ino = st.st_ino
    rc, out, err = _ensure(cfg_path)
    assert (rc, out["created"], out["sudoers_written"], out["uid"]) == (0, False, False, pw.pw_uid)
    assert os.stat(DROP_IN).st_ino == ino
    assert _events(cfg_path) == ["ssm_user.created", "sudoers.written"]


def test_text_output(clean: None, cfg_path: str) -> None:
    proc = run_cli("ssm-user", "ensure", "--config", cfg_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("ssm-user: created (uid ")
    assert proc.stdout.rstrip().endswith("sudoers drop-in written")
    proc = run_cli("ssm-user", "status", "--config", cfg_path)
    assert proc.returncode == 0
    assert "created by the agent: yes (drop-in written)" in proc.stdout
    assert "present, mode 0440, root:root" in proc.stdout
    assert "sudo grants it root without a password: yes" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "no problems"


def test_configured_uid_system_shell_home(clean: None, tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "c.yaml"), (
        f"audit: {{path: {tmp_path}/audit.log}}\n"
        "ssm_user: {uid: 4321, system: true, shell: /bin/sh, home: /var/lib/ssm-home}\n"
    ))
    rc, out, _ = _ensure(cfg)
    assert (rc, out["created"], out["uid"]) == (0, True, 4321)
    pw = pwd.getpwnam(NAME)
    assert (pw.pw_uid, pw.pw_shell, pw.pw_dir) == (4321, "/bin/sh", "/var/lib/ssm-home")
    home = os.stat("/var/lib/ssm-home")
    assert (home.st_uid, stat.S_ISDIR(home.st_mode)) == (4321, True)
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == GOLDEN
    subprocess.run(["rm", "-rf", "/var/lib/ssm-home"], check=True)


def test_sudoers_off_creates_the_account_without_a_drop_in(clean: None, tmp_path: Path) -> None:
    cfg = write_config(str(tmp_path / "c.yaml"), (
        f"audit: {{path: {tmp_path}/audit.log}}\nssm_user: {{sudoers: false}}\n"
    ))
    rc, out, _ = _ensure(cfg)
    assert (rc, out["created"], out["sudoers_written"]) == (0, True, False)
    assert not os.path.exists(DROP_IN)
    assert _events(cfg) == ["ssm_user.created"]
    rc, st = _status(cfg)
    assert (rc, st["created_by_agent"], st["sudoers_state"], st["sudo_ok"]) == (
        0, True, "off", False)
    # Turning it on later does not grant rights to the account after the fact.
    cfg_on = write_config(str(tmp_path / "on.yaml"), f"audit: {{path: {tmp_path}/audit.log}}\n")
    rc, out, _ = _ensure(cfg_on)
    assert (rc, out["sudoers_written"]) == (0, False)
    assert not os.path.exists(DROP_IN)


@pytest.fixture
def slow_useradd(isolated: Isolated, tmp_path: Path) -> Iterator[Path]:
    """useradd takes half a second longer and logs each call (the real one, behind a wrapper
    bind-mounted over it inside the namespace), so racing first sessions really overlap while
    one creates the account. Yields the call log."""
    real = tmp_path / "useradd.real"
    calls = tmp_path / "useradd.calls"
    subprocess.run(["cp", "-p", "/usr/sbin/useradd", str(real)], check=True)
    wrapper = tmp_path / "useradd"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nsleep 0.5\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    calls.write_text("")
    subprocess.run(["mount", "--bind", str(wrapper), "/usr/sbin/useradd"], check=True)
    try:
        yield calls
    finally:
        subprocess.run(["umount", "/usr/sbin/useradd"], check=True)


def test_twenty_simultaneous_first_sessions_create_it_once(
    clean: None, slow_useradd: Path, cfg_path: str
) -> None:
    n = 20
    # The barrier: every process first waits to read from one pipe; closing its write end
    # releases them all at once.
    argv = ["/bin/sh", "-c", 'read go; exec "$@"', "sh",
            sys.executable, "-m", "agent", "ssm-user", "ensure", "--json", "--config", cfg_path]
    gate_r, gate_w = os.pipe()
    try:
        procs = [subprocess.Popen(argv, stdin=gate_r, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=REPO) for _ in range(n)]
    finally:
        os.close(gate_r)
    assert all(p.poll() is None for p in procs)  # all waiting at the gate
    os.close(gate_w)
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        results.append((p.returncode, stdout, stderr))
    assert [(rc, err) for rc, _, err in results] == [(0, b"")] * n
    outs = [json.loads(out) for _, out, _ in results]
    assert sum(o["created"] for o in outs) == 1
    # Under the lock only the first one ran useradd; the others found the account made.
    assert slow_useradd.read_text().splitlines() == [
        "--create-home --user-group --shell /bin/bash -- ssm-user"]
    assert sum(o["sudoers_written"] for o in outs) == 1
    assert len({o["uid"] for o in outs}) == 1
    assert len(_passwd_lines()) == 4  # one line each in passwd, shadow, group, gshadow
    assert _entries() == ["README", "ssm-agent-users"]
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == GOLDEN
    assert _events(cfg_path) == ["ssm_user.created", "sudoers.written"]
    proc = _sudo_as_ssm_user()
    assert (proc.returncode, proc.stdout) == (0, "0\n")


def test_the_creator_waits_for_a_session_holding_the_lock_shared(
    clean: None, cfg_path: str
) -> None:
    """A session looking at ssm-user holds the lock shared; creating the account needs it
    exclusive, so `ensure` waits (up to 5 s here) and creates it only once the look is over."""
    lock = ssm_user.Paths.for_platform("linux").lock
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        proc = subprocess.Popen([sys.executable, "-m", "agent", "ssm-user", "ensure", "--json",
                                 "--config", cfg_path], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "ensure finished while the lock was held shared"
        assert not _exists()
    finally:
        os.close(fd)
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, b"")
    assert json.loads(stdout)["created"] is True
    assert _exists()


def test_an_existing_ssm_user_is_not_modified_and_gets_no_drop_in(
    clean: None, cfg_path: str
) -> None:
    subprocess.run(["useradd", "-m", "-u", "4444", "-s", "/bin/sh", "--", NAME], check=True)
    before = _passwd_lines()
    home_before = os.stat("/home/ssm-user")
    rc, out, _ = _ensure(cfg_path)
    assert (rc, out["created"], out["sudoers_written"], out["uid"]) == (0, False, False, 4444)
    assert _passwd_lines() == before
    home_after = os.stat("/home/ssm-user")
    assert (home_after.st_ino, home_after.st_mode, home_after.st_uid) == (
        home_before.st_ino, home_before.st_mode, home_before.st_uid)
    assert not os.path.exists(DROP_IN)
    assert not os.path.exists(STATE)
    assert _events(cfg_path) == []
    rc, st = _status(cfg_path)
    assert rc == 0
    assert (st["exists"], st["uid"], st["shell"], st["created_by_agent"]) == (
        True, 4444, "/bin/sh", False)
    assert (st["sudoers"]["present"], st["sudo_ok"]) == (False, False)
    proc = _sudo_as_ssm_user()
    assert proc.returncode != 0


def test_an_existing_unusable_ssm_user_is_reported_not_changed(
    clean: None, cfg_path: str
) -> None:
    subprocess.run(["useradd", "-m", "-s", "/usr/sbin/nologin", "--", NAME], check=True)
    before = _passwd_lines()
    rc, out, err = _ensure(cfg_path)
    assert rc == 1
    assert (out["ok"], out["reason"]) == (False, "shell_disabled")
    assert "nologin" in err
    assert _passwd_lines() == before
    assert not os.path.exists(DROP_IN)
    rc, st = _status(cfg_path)
    assert (rc, st["usable"], st["reason"]) == (1, False, "shell_disabled")


def test_check_and_resolve_never_create_it(clean: None, users: Users) -> None:
    for args in (["check", NAME], ["resolve", "--no-run-as"],
                 ["resolve", "--run-as", "--default-user", users.alice]):
        run_cli(*args)
    assert not _exists()
    assert not os.path.exists(DROP_IN)


# -- status and revoke-sudo -----------------------------------------------------------------


def test_status_before_and_after(clean: None, cfg_path: str) -> None:
    rc, st = _status(cfg_path)
    assert rc == 1
    assert (st["exists"], st["sudo_ok"], st["includedir"]) == (False, None, True)
    assert st["sudoers"]["present"] is False
    assert "does not exist" in st["problems"][0]

    _ensure(cfg_path)
    rc, st = _status(cfg_path)
    pw = pwd.getpwnam(NAME)
    assert rc == 0
    assert st["problems"] == []
    assert (st["exists"], st["uid"], st["shell"], st["home"]) == (
        True, pw.pw_uid, "/bin/bash", "/home/ssm-user")
    assert (st["created_by_agent"], st["sudoers_state"], st["sudo_ok"], st["includedir"]) == (
        True, "written", True, True)
    assert st["sudoers"] == {
        "path": DROP_IN, "present": True, "mode": "0440", "owner": "root", "group": "root",
        "uid": 0, "gid": 0, "valid": True, "content_ok": True, "error": None,
        "stale_temp_files": [],
    }


def test_status_reports_a_broken_drop_in(clean: None, cfg_path: str) -> None:
    _ensure(cfg_path)
    os.chmod(DROP_IN, 0o644)
    rc, st = _status(cfg_path)
    assert rc == 1
    assert st["sudoers"]["mode"] == "0644"
    assert any("mode 0644" in p for p in st["problems"])
    # `NOPASSWD` without `:ALL`: visudo -c accepts it, sudo reads an undefined alias.
    _put(DROP_IN, b"ssm-user ALL=(ALL) NOPASSWD\n")
    rc, st = _status(cfg_path)
    assert rc == 1
    assert (st["sudoers"]["valid"], st["sudoers"]["content_ok"], st["sudo_ok"]) == (
        True, False, False)
    assert any("does not hold the expected rule" in p for p in st["problems"])
    assert any("does not grant" in p for p in st["problems"])
    # A syntax error: visudo says so.
    _put(DROP_IN, b"ssm-user ALL=(ALL NOPASSWD:ALL\n")
    rc, st = _status(cfg_path)
    assert (rc, st["sudoers"]["valid"], st["sudo_ok"]) == (1, False, False)
    assert "syntax error" in st["sudoers"]["error"]
    os.unlink(DROP_IN)


def test_status_reports_a_missing_includedir(clean: None, cfg_path: str) -> None:
    _ensure(cfg_path)
    with open("/etc/sudoers") as fh:
        original = fh.read()
    try:
        _put("/etc/sudoers", original.replace("@includedir /etc/sudoers.d", "").encode())
        rc, st = _status(cfg_path)
        assert (rc, st["includedir"], st["sudo_ok"]) == (1, False, False)
        assert any("does not include /etc/sudoers.d" in p for p in st["problems"])
    finally:
        _put("/etc/sudoers", original.encode())


def test_revoke_sudo_removes_the_drop_in_and_keeps_the_account(
    clean: None, cfg_path: str
) -> None:
    _ensure(cfg_path)
    uid = pwd.getpwnam(NAME).pw_uid
    stale = os.path.join(DIR, fsutil.temp_name("ssm-agent-users"))
    _put(stale, b"# User rul")  # a killed writer's leftover
    proc = run_cli("ssm-user", "revoke-sudo", "--json", "--config", cfg_path)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"ok": True, "removed": True, "path": DROP_IN}
    assert _entries() == ["README"]
    assert pwd.getpwnam(NAME).pw_uid == uid
    proc = _sudo_as_ssm_user()
    assert proc.returncode != 0
    _sudo_valid()
    rc, st = _status(cfg_path)
    assert (rc, st["sudoers_state"], st["sudo_ok"], st["sudoers"]["present"]) == (
        0, "revoked", False, False)
    assert _events(cfg_path) == ["ssm_user.created", "sudoers.written", "sudoers.removed"]
    # Idempotent, and ensure does not grant it again.
    proc = run_cli("ssm-user", "revoke-sudo", "--config", cfg_path)
    assert (proc.returncode, proc.stdout) == (0, f"{DROP_IN}: not present\n")
    rc, out, _ = _ensure(cfg_path)
    assert (rc, out["sudoers_written"]) == (0, False)
    assert not os.path.exists(DROP_IN)


# -- faults ----------------------------------------------------------------------------------


def _small_sudoers_d(previous: "bytes | None") -> None:
    """/etc/sudoers.d on a 64 KiB tmpfs (mode 0755: sudo skips a world-writable directory)."""
    with open(os.path.join(DIR, "README"), "rb") as fh:
        readme = fh.read()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", DIR], check=True)
    _put(os.path.join(DIR, "README"), readme)
    if previous is not None:
        _put(DROP_IN, previous)


def _fill(directory: str) -> None:
    proc = subprocess.run(["dd", "if=/dev/zero", f"of={directory}/.filler", "bs=4096"],
                          capture_output=True, text=True)
    assert "No space left on device" in proc.stderr


def test_disk_full_keeps_the_previous_drop_in(clean: None, cfg_path: str) -> None:
    _small_sudoers_d(PREVIOUS)
    _fill(DIR)
    rc, out, err = _ensure(cfg_path)
    assert rc == 1
    assert out["reason"] == "ssm_user_failed"
    assert "no space left on /etc/sudoers.d while writing ssm-agent-users" in err
    assert "the previous file is unchanged" in err
    assert "free space on that filesystem" in err
    assert "runas-agent ssm-user ensure" in err
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == PREVIOUS
    assert _temps() == []
    _sudo_valid()
    proc = _sudo_as_ssm_user()
    assert (proc.returncode, proc.stdout) == (0, "0\n")  # the previous rule still works
    assert _events(cfg_path) == ["ssm_user.created"]

    # Space again: the next ensure finishes the job for the account the agent created.
    os.unlink(os.path.join(DIR, ".filler"))
    rc, out, _ = _ensure(cfg_path)
    assert (rc, out["created"], out["sudoers_written"]) == (0, False, True)
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == GOLDEN
    assert _events(cfg_path) == ["ssm_user.created", "sudoers.written"]


def test_disk_full_without_a_previous_drop_in_leaves_none(clean: None, cfg_path: str) -> None:
    _small_sudoers_d(None)
    _fill(DIR)
    rc, _, err = _ensure(cfg_path)
    assert rc == 1
    assert "no space left" in err
    assert "no file was installed" in err
    assert _entries() == [".filler", "README"]
    _sudo_valid()


def _linux_paths(**kw: Any) -> ssm_user.Paths:
    return dataclasses.replace(ssm_user.Paths.for_platform("linux"), **kw)


def test_visudo_refusing_keeps_the_previous_drop_in(clean: None, tmp_path: Path) -> None:
    fake = tmp_path / "visudo"
    fake.write_text("#!/bin/sh\necho \"$3: syntax error near line 2\" >&2\nexit 1\n")
    fake.chmod(0o755)
    _put(DROP_IN, PREVIOUS)
    cfg = Config()
    with pytest.raises(SsmUserFailed) as info:
        ssm_user.ensure(cfg, Linux(), paths=_linux_paths(visudo=str(fake)))
    msg = str(info.value)
    assert "the new content was rejected: visudo:" in msg
    assert "syntax error near line 2" in msg
    assert "the previous file is unchanged" in msg
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == PREVIOUS
    assert _temps() == []
    _sudo_valid()
    # The real visudo accepts the real content; the next ensure finishes.
    res = ssm_user.ensure(cfg, Linux())
    assert (res.created, res.sudoers_written) == (False, True)
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == GOLDEN


@pytest.mark.parametrize("bad", [
    b"ssm-user ALL=(ALL NOPASSWD:ALL\n",  # syntax error
    b"ssm-user ALL=(ALL) NOPASSWD\n",  # undefined alias: only strict mode catches it
])
def test_real_visudo_refuses_bad_content(clean: None, bad: bytes) -> None:
    _put(DROP_IN, PREVIOUS)
    validate = ssm_user.visudo_validator("/usr/sbin/visudo", run)
    with pytest.raises(InstallFailed, match="the new content was rejected: visudo: "):
        fsutil.install(DROP_IN, bad, validate=validate)
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == PREVIOUS
    assert _temps() == []
    _sudo_valid()


_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from agent import fsutil, ssm_user
from agent.config import Config
from agent.platform.linux import Linux
from agent.runner import run

def hold(tmp):
    print(tmp, flush=True)
    time.sleep(120)

if sys.argv[1] == "ensure":
    ssm_user.ensure(Config(), Linux(), before_rename=hold)
else:
    fsutil.install({drop_in!r}, {golden!r},
                   validate=ssm_user.visudo_validator("/usr/sbin/visudo", run),
                   before_rename=hold)
"""


def _kill_before_rename(what: str) -> str:
    code = _CHILD.format(repo=REPO, drop_in=DROP_IN, golden=GOLDEN)
    child = subprocess.Popen([sys.executable, "-c", code, what], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    tmp = child.stdout.readline().strip()
    try:
        assert os.path.dirname(tmp) == DIR
        with open(tmp, "rb") as fh:
            assert fh.read() == GOLDEN  # written and validated, not yet renamed
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return tmp


def test_killed_between_write_and_rename_keeps_the_previous_drop_in(clean: None) -> None:
    subprocess.run(["useradd", "-m", "--", NAME], check=True)
    _put(DROP_IN, PREVIOUS)
    tmp = _kill_before_rename("install")
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == PREVIOUS
    assert _temps() == [os.path.basename(tmp)]  # the killed writer's leftover...
    _sudo_valid()  # ...which sudo ignores (its name has a dot)
    proc = _sudo_as_ssm_user()
    assert (proc.returncode, proc.stdout) == (0, "0\n")
    res = fsutil.install(DROP_IN, GOLDEN)  # the next install cleans it up
    assert res.stale_removed == (tmp,)
    assert _entries() == ["README", "ssm-agent-users"]


def test_killed_first_session_is_finished_by_the_next_ensure(
    clean: None, cfg_path: str
) -> None:
    # The kill lands while the child holds the ssm-user lock, after it created the account.
    tmp = _kill_before_rename("ensure")
    assert _exists()
    assert not os.path.exists(DROP_IN)
    assert _temps() == [os.path.basename(tmp)]
    _sudo_valid()
    rc, st = _status(cfg_path)
    assert (st["created_by_agent"], st["sudoers_state"]) == (True, "pending")
    assert st["sudoers"]["stale_temp_files"] == [tmp]
    # The lock died with the child: the next ensure does not wait, and finishes the job.
    rc, out, err = _ensure(cfg_path)
    assert (rc, err, out["created"], out["sudoers_written"]) == (0, "", False, True)
    assert _entries() == ["README", "ssm-agent-users"]
    with open(DROP_IN, "rb") as fh:
        assert fh.read() == GOLDEN
    proc = _sudo_as_ssm_user()
    assert (proc.returncode, proc.stdout) == (0, "0\n")


@pytest.mark.parametrize(("mode", "user_owned"), [
    pytest.param(0o770, False, id="group-writable"),
    pytest.param(0o1777, False, id="world-writable"),
    pytest.param(0o700, True, id="owned-by-a-user"),
])
def test_a_lock_directory_others_could_write_is_refused_before_anything_is_created(
    clean: None, users: Users, tmp_path: Path, mode: int, user_owned: bool,
) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(mode)
    if user_owned:
        os.chown(lock_dir, pwd.getpwnam(users.alice).pw_uid, -1)
    paths = _linux_paths(lock=str(lock_dir / "ssm-user.lock"))
    with pytest.raises(SsmUserFailed) as info:
        ssm_user.ensure(Config(), Linux(), paths=paths)
    assert info.value.message == (f"{lock_dir} is not a directory owned by root and "
                                  "writable only by it")
    assert os.listdir(lock_dir) == []
    assert not _exists()
    assert not os.path.exists(DROP_IN)


def test_uid_zero_and_a_bad_shell_are_refused_before_anything_is_created(
    clean: None,
) -> None:
    for ssm in (SsmUserConfig(uid=0), SsmUserConfig(shell="/bin/nope")):
        with pytest.raises(SsmUserFailed):
            ssm_user.ensure(Config(ssm_user=ssm), Linux())
        assert not _exists()
        assert not os.path.exists(DROP_IN)


# -- a home the agent cannot trust ------------------------------------------------------------


@pytest.fixture
def carol(clean: None) -> Iterator[Path]:
    """Cleans up after the leftover-home sequence (carol, the leftover home); yields a
    directory anyone may write, where a payload leaves its marker."""
    marks = Path(tempfile.mkdtemp(prefix="ssm-marks-", dir="/run"))
    marks.chmod(0o1777)
    try:
        yield marks
    finally:
        subprocess.run(["userdel", "-f", "--", "carol"], capture_output=True)
        _wipe()
        subprocess.run(["rm", "-rf", "--", "/home/ssm-user", str(marks)], check=True)


def _login_shell(d: DaemonProc, session_id: str) -> "tuple[Optional[str], bytes]":
    """A Run-As-off PTY session: a login shell (it reads ~/.profile), told to exit.
    (reason, output): reason is None when the shell ran, else the refusal's reason code."""
    try:
        sess = d.client.start(session_id=session_id, principal_arn="arn:test",
                              run_as_enabled=False, terminal=("xterm", 24, 80))
    except AgentError as exc:
        return exc.reason, str(exc).encode()
    assert sess.master is not None
    out = b""
    deadline = time.monotonic() + 15
    typed = False
    while b"shell-ran\r\n" not in out:
        if not typed and out.rstrip().endswith(b"$"):  # the prompt: the shell reads now
            os.write(sess.master, b"echo shell-ran; exit 0\n")
            typed = True
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sess.master], [], [], left)[0]:
            sess.terminate()
            break
        try:
            chunk = os.read(sess.master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    sess.wait()
    sess.close()
    return None, out


def _plant(marks: Path) -> Path:
    """carol, who owns the leftover home now, leaves a payload in its .profile (as herself)."""
    ran = marks / "payload-ran"
    payload = f"id -un >> {ran}; sudo -n id -u >> {ran} 2>&1\n"
    proc = subprocess.run(
        ["runuser", "-u", "carol", "--", "sh", "-c",
         'printf "%s" "$1" > /home/ssm-user/.profile', "sh", payload],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.stat("/home/ssm-user/.profile").st_uid == pwd.getpwnam("carol").pw_uid
    return ran


def _drop_in_identity() -> "tuple[int, int, bytes]":
    st = os.stat(DROP_IN)
    with open(DROP_IN, "rb") as fh:
        return st.st_ino, st.st_mtime_ns, fh.read()


def test_ssm_user_re_created_over_a_leftover_home_another_user_owns_is_refused(
    carol: Path
) -> None:
    """first session creates ssm-user (uid N, with sudo) -> `userdel ssm-user` without -r ->
    `useradd carol` gets uid N and owns /home/ssm-user -> carol writes its .profile -> the next
    Run-As-off login shell must not re-create ssm-user there: refused, the payload never runs,
    the drop-in is not rewritten, sudo stays valid."""
    with running() as d:
        first = d.cli("session", "--no-run-as", "--", "sh", "-c", "id -u; sudo -n id -u")
        assert first.returncode == 0, first.stderr
        uid_n, root = first.stdout.decode().split()
        assert root == "0"
        before = _drop_in_identity()

        # No -r: the home stays. (-f: a process of another namespace may have the uid.)
        subprocess.run(["userdel", "-f", "--", NAME], check=True)
        assert os.stat("/home/ssm-user").st_uid == int(uid_n)
        subprocess.run(["useradd", "-M", "-u", uid_n, "-s", "/bin/bash", "--", "carol"],
                       check=True)
        ran = _plant(carol)

        reason, detail = _login_shell(d, "leftover-1")
        assert not ran.exists(), ran.read_text()
        assert reason == "ssm_user_unsafe", detail
        assert b"/home/ssm-user already exists (owned by uid " + uid_n.encode() + b" (carol))" \
            in detail
        assert not ran.exists(), ran.read_text()
        assert not _exists()  # refused before useradd
        assert _drop_in_identity() == before
        _sudo_valid()
        denied = [r for r in d.audit() if r["event"] == "session.denied"]
        assert [r["reason"] for r in denied] == ["ssm_user_unsafe"]
        assert [r["event"] for r in d.audit()].count("sudoers.written") == 1

        # status gives the same verdict, with the fix.
        rc, st = _status(d.config_path)
        assert (rc, st["exists"], st["reason"], st["home_trusted"]) == (
            1, False, "ssm_user_unsafe", False)
        assert any("ssm_user_unsafe" in p and "/home/ssm-user" in p for p in st["problems"])

        # resolve says what the session met.
        proc = run_cli("resolve", "--no-run-as", "--json", "--config", d.config_path)
        res = json.loads(proc.stdout)
        assert (proc.returncode, res["allowed"], res["reason"]) == (1, False, "ssm_user_unsafe")

        # Again, and with the CLI's own ensure: refused each time, nothing created.
        assert _login_shell(d, "leftover-2")[0] == "ssm_user_unsafe"
        rc, out, err = _ensure(d.config_path)
        assert (rc, out["reason"]) == (1, "ssm_user_unsafe")
        assert out["hint"]
        assert "move it away" in err
        assert not ran.exists()
        assert not _exists()
        assert _drop_in_identity() == before


def test_an_existing_ssm_user_over_a_home_another_user_owns_is_refused(carol: Path) -> None:
    """The same leftover home, but an admin re-created ssm-user by hand (a new uid, no -m),
    while the drop-in the agent wrote for the old account is still there: sessions are
    refused, the drop-in is not rewritten, and check and status say why."""
    with running() as d:
        first = d.cli("session", "--no-run-as", "--", "id", "-u")
        assert first.returncode == 0, first.stderr
        uid_n = first.stdout.decode().strip()
        before = _drop_in_identity()
        subprocess.run(["userdel", "-f", "--", NAME], check=True)  # no -r
        subprocess.run(["useradd", "-M", "-u", uid_n, "-s", "/bin/bash", "--", "carol"],
                       check=True)
        ran = _plant(carol)
        subprocess.run(["useradd", "-M", "-s", "/bin/bash", "--", NAME], check=True)
        uid_m = pwd.getpwnam(NAME).pw_uid
        assert uid_m != int(uid_n)

        reason, detail = _login_shell(d, "leftover-3")
        assert not ran.exists(), ran.read_text()
        assert reason == "ssm_user_unsafe", detail
        assert b"owned by uid " + uid_n.encode() + b" (carol)" in detail
        assert _drop_in_identity() == before
        _sudo_valid()
        # A command session is refused the same way (no login shell, but still ssm-user).
        cmd = d.cli("session", "--no-run-as", "--", "sudo", "-n", "id", "-u")
        assert cmd.returncode == 255
        assert b"ssm_user_unsafe" in cmd.stderr
        assert cmd.stdout == b""

        rc, chk = run_json("check", NAME)
        assert (rc, chk["usable"], chk["reason"]) == (1, False, "ssm_user_unsafe")
        home = [c for c in chk["checks"] if c["name"] == "home"]
        assert home
        assert home[0]["ok"] is False
        assert "carol" in home[0]["detail"]
        text = run_cli("check", NAME).stdout
        assert "FAIL  home" in text
        assert "refused: ssm_user_unsafe" in text
        assert "fix:" in text

        rc, st = _status(d.config_path)
        assert (rc, st["reason"], st["home_trusted"], st["created_by_agent"]) == (
            1, "ssm_user_unsafe", False, False)
        assert any(p.startswith(f"{NAME} cannot be a session target: ssm_user_unsafe")
                   for p in st["problems"])
        assert any(f"(uid {uid_n}), which is gone" in p for p in st["problems"])
        text = run_cli("ssm-user", "status", "--config", d.config_path).stdout
        assert "home can be trusted: no" in text

        rc, out, _ = _ensure(d.config_path)
        assert (rc, out["reason"]) == (1, "ssm_user_unsafe")
        assert _drop_in_identity() == before
        assert not ran.exists()
