"""Real login sessions: the PAM account and session stages through the real libpam and the
shipped service file, loginuid, limits, pam_env, utmp/wtmp/lastlog, refusals, and PAM off.

Each session runs in its own root process (tests/support/pam_harness.py, the supervisor's
stand-in), so the pytest process plays the daemon: its own loginuid and limits never change.
Everything is installed inside the isolated namespace (overlays on /etc, /var, /run).
"""

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import REPO, Users, sh

pytestmark = pytest.mark.privileged

SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
LIMITS_FILE = "/etc/security/limits.d/runas-agent-test.conf"
UNSET_LOGINUID = "4294967295"


def read_loginuid() -> str:
    with open("/proc/self/loginuid") as fh:
        return fh.read().strip()


@dataclass(frozen=True)
class PamSetup:
    users: Users
    daemon_loginuid: str


@pytest.fixture(scope="module")
def pam_setup(users: Users) -> Iterator[PamSetup]:
    """Install the service file, a limits.d entry for alice, an /etc/environment variable and
    the utmp file (systemd-update-utmp would create it at boot); removed afterwards."""
    shutil.copyfile(SERVICE_FILE, "/etc/pam.d/runas-agent")
    with open(LIMITS_FILE, "w") as fh:
        fh.write(f"{users.alice} soft nofile 1234\n{users.alice} hard nofile 2345\n")
    with open("/etc/environment") as fh:
        environment = fh.read()
    with open("/etc/environment", "a") as fh:
        fh.write("RUNAS_SITE_VAR=from-etc-environment\n")
    if not os.path.exists("/run/utmp"):
        fd = os.open("/run/utmp", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o664)
        os.close(fd)
        shutil.chown("/run/utmp", "root", "utmp")
    before = read_loginuid()
    try:
        yield PamSetup(users, before)
    finally:
        for path in ("/etc/pam.d/runas-agent", "/etc/pam.d/runas-agent-userenv", LIMITS_FILE):
            if os.path.exists(path):
                os.unlink(path)
        with open("/etc/environment", "w") as fh:
            fh.write(environment)


def session(**spec: Any) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.pam_harness", json.dumps(spec)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def lines(result: dict[str, Any]) -> list[str]:
    return str(result["output"]).replace("\r\n", "\n").splitlines()


def test_loginuid_can_be_set_here() -> None:
    """Precondition, checked rather than assumed: the kernel has audit support (the file
    exists), this process has CAP_AUDIT_CONTROL, and a fresh process may set its loginuid."""
    assert os.path.exists("/proc/self/loginuid")
    with open("/proc/self/status") as fh:
        caps = int(re.search(r"CapEff:\s*([0-9a-f]+)", fh.read()).group(1), 16)  # type: ignore[union-attr]
    assert caps & (1 << 30), "CAP_AUDIT_CONTROL is needed to set loginuid"
    probe = subprocess.run(["/bin/sh", "-c", "echo 4242 > /proc/self/loginuid && "
                            "cat /proc/self/loginuid"], capture_output=True, text=True)
    assert probe.stdout.strip() == "4242", probe.stderr


def test_loginuid_is_set_in_the_session_not_in_the_daemon(pam_setup: PamSetup) -> None:
    alice = pwd.getpwnam(pam_setup.users.alice)
    assert str(alice.pw_uid) != pam_setup.daemon_loginuid  # otherwise the test proves nothing
    res = session(user="alice", command="cat /proc/self/loginuid; echo; id -u")
    assert res["refused"] is None
    assert res["status"] == 0, res["output"]
    assert lines(res) == [str(alice.pw_uid), str(alice.pw_uid)]
    assert res["pam_loginuid"] == alice.pw_uid  # set by pam_open_session in the PAM process
    assert res["supervisor_loginuid"] == pam_setup.daemon_loginuid  # never in the supervisor
    assert read_loginuid() == pam_setup.daemon_loginuid


def test_groups_and_the_pam_environment(pam_setup: PamSetup) -> None:
    import grp

    devs = grp.getgrnam(pam_setup.users.devs_group).gr_gid
    alice = pwd.getpwnam(pam_setup.users.alice)
    res = session(user="alice", command="id -G; echo \"site=$RUNAS_SITE_VAR\"")
    assert res["status"] == 0, res["output"]
    gids, site = lines(res)
    assert sorted(int(g) for g in gids.split()) == sorted({alice.pw_gid, devs})
    assert site == "site=from-etc-environment"
    assert res["pam_env"]["RUNAS_SITE_VAR"] == "from-etc-environment"


def test_user_pam_environment_file_is_ignored(pam_setup: PamSetup) -> None:
    home = pwd.getpwnam(pam_setup.users.alice).pw_dir
    user_file = os.path.join(home, ".pam_environment")
    with open(user_file, "w") as fh:
        fh.write("RUNAS_USER_VAR DEFAULT=from-home\n")
    try:
        res = session(user="alice", command="echo \"user=$RUNAS_USER_VAR\"")
        assert lines(res) == ["user="]
        assert "RUNAS_USER_VAR" not in res["pam_env"]
        # Control: the same file is read by a service that allows it, so the check above
        # would catch a service file that let users set their own PAM environment.
        with open(SERVICE_FILE) as fh:
            text = fh.read().replace("user_readenv=0", "user_readenv=1")
        with open("/etc/pam.d/runas-agent-userenv", "w") as fh:
            fh.write(text)
        res = session(user="alice", service="runas-agent-userenv",
                      command="echo \"user=$RUNAS_USER_VAR\"")
        assert lines(res) == ["user=from-home"]
    finally:
        os.unlink(user_file)


def test_limits_d_entry_applies_to_the_session(pam_setup: PamSetup) -> None:
    res = session(user="alice", command="ulimit -n; ulimit -Hn")
    assert lines(res) == ["1234", "2345"]
    # Not alice: no entry, the supervisor's own limits pass through.
    soft = subprocess.run(["/bin/sh", "-c", "ulimit -n"], capture_output=True,
                          text=True).stdout.strip()
    res = session(user="bob", command="ulimit -n")
    assert lines(res) == [soft]


def test_who_lists_the_live_pty_session_and_last_shows_it_ended(pam_setup: PamSetup) -> None:
    marker = f"runas-{uuid.uuid4().hex[:10]}.test"
    res = session(user="alice", pty=True, host=marker, command="who /var/run/utmp")
    assert res["record_problems"] == []
    tty = res["tty"]
    line = tty[len("/dev/"):]
    live = [ln.split() for ln in lines(res) if marker in ln]
    assert len(live) == 1, res["output"]
    assert live[0][:2] == ["alice", line]
    assert live[0][-1] == f"({marker})"
    # Ended: gone from utmp...
    assert marker not in sh("who", "/var/run/utmp")
    # ...and in wtmp with a logout time. (`last` calls a session that ended in the very second
    # it started "still running", so let the clock move on first.)
    time.sleep(1.1)
    out = sh("last", "-w", "-f", "/var/log/wtmp", "--time-format", "iso", "alice")
    ended = [ln.split() for ln in out.splitlines() if marker in ln]
    assert len(ended) == 1, out
    assert ended[0][:3] == ["alice", line, marker]
    assert ended[0][4] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", ended[0][5]), ended[0]
    assert ended[0][6] == "(00:00)"
    # lastlog (Debian 12 still keeps /var/log/lastlog).
    out = sh("lastlog", "-u", "alice")
    assert re.search(rf"^alice\s+{re.escape(line)}\s+{re.escape(marker)}\s", out, re.M), out


def test_missing_utmp_is_reported_and_the_rest_still_written(pam_setup: PamSetup) -> None:
    from agent import utmp
    from agent.errors import LoginRecordFailed

    os.rename("/run/utmp", "/run/utmp.away")
    try:
        size = os.stat("/var/log/wtmp").st_size
        with pytest.raises(LoginRecordFailed) as err:
            utmp.login_record(os.getpid(), "nobody-real", "/dev/pts/99", "h")
        assert "utmp: No such file or directory" in err.value.message
        assert os.stat("/var/log/wtmp").st_size == size + utmp.LINUX_UTMPX_SIZE
    finally:
        os.rename("/run/utmp.away", "/run/utmp")
    utmp.logout_record(os.getpid(), "/dev/pts/99")


def test_expired_account_is_refused_and_nothing_spawned(pam_setup: PamSetup) -> None:
    sh("useradd", "-m", "-s", "/bin/sh", "--", "expo")
    sh("chage", "-E", "0", "--", "expo")
    marker = "/home/expo/spawned"
    res = session(user="expo", command=f"touch {marker}")
    assert res["refused"]["reason"] == "account_refused"
    assert "User account has expired" in res["refused"]["message"]
    assert "Your account has expired" in (res["refused"]["hint"] or "")
    assert res["spawned"] is False
    assert not os.path.exists(marker)
    assert res["supervisor_loginuid"] == pam_setup.daemon_loginuid  # no session was opened


def test_nologin_refuses_users(pam_setup: PamSetup) -> None:
    with open("/etc/nologin", "w") as fh:
        fh.write("maintenance until noon\n")
    try:
        res = session(user="bob", command="true")
    finally:
        os.unlink("/etc/nologin")
    assert res["refused"]["reason"] == "account_refused"
    assert "maintenance until noon" in (res["refused"]["hint"] or "")
    assert res["spawned"] is False
    assert session(user="bob", command="true")["status"] == 0


def test_directory_user_passes_the_account_stage(pam_setup: PamSetup) -> None:
    res = session(user=pam_setup.users.dirk, command="id -u; cat /proc/self/loginuid")
    assert res["refused"] is None
    assert lines(res) == ["5001", "5001"]


def test_a_missing_optional_module_is_skipped(pam_setup: PamSetup) -> None:
    """The "-session" line (pam_systemd) must not break systems without that module."""
    with open(SERVICE_FILE) as fh:
        text = fh.read()
    assert "-session  optional    pam_systemd.so" in text
    with open("/etc/pam.d/runas-agent-nosystemd", "w") as fh:
        fh.write(text.replace("pam_systemd.so", "pam_runas_absent_module.so"))
    try:
        res = session(user="alice", service="runas-agent-nosystemd",
                      command="cat /proc/self/loginuid")
    finally:
        os.unlink("/etc/pam.d/runas-agent-nosystemd")
    assert res["refused"] is None
    assert lines(res) == [str(pwd.getpwnam("alice").pw_uid)]


def test_pam_off_makes_no_libpam_call(pam_setup: PamSetup) -> None:
    res = session(user="alice", pam=False, command="cat /proc/self/loginuid; echo; ulimit -n")
    assert res["status"] == 0, res["output"]
    loginuid, nofile = lines(res)
    assert loginuid == pam_setup.daemon_loginuid  # inherited, never written
    assert nofile != "1234"  # limits.d not applied
    assert res["libpam_loaded"] is False
    assert res["pam_env"] == {}


def test_environment_list_is_freed_exactly_once(pam_setup: PamSetup) -> None:
    """pam_getenvlist hands over malloc'd memory: freed once per call (a double free aborts,
    a leak grows the process by megabytes over these calls)."""
    code = """
import os, pwd
from agent import pam

def rss_kib():  # resident now (ru_maxrss would start at the forking parent's peak)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

pw = pwd.getpwnam("alice")
login = pam.login("runas-agent", "alice", pw.pw_gid)
for _ in range(1000):
    login.pam.environment()
start = rss_kib()
for _ in range(20000):
    env = login.pam.environment()
grown = rss_kib() - start
login.pam.close()
print(sum(k.startswith("RUNAS_PAD_") for k in env), grown)
"""
    with open("/etc/environment") as fh:
        saved = fh.read()
    with open("/etc/environment", "a") as fh:
        for i in range(8):
            fh.write(f"RUNAS_PAD_{i}={'x' * 200}\n")  # ~2 KiB of strings per call
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    finally:
        with open("/etc/environment", "w") as fh:
            fh.write(saved)
    assert proc.returncode == 0, proc.stderr
    count, grown_kib = (int(x) for x in proc.stdout.split())
    assert count == 8
    assert grown_kib < 1024, f"grew {grown_kib} KiB over 20000 calls"


def test_daemon_loginuid_unchanged_after_all_sessions(pam_setup: PamSetup) -> None:
    session(user="alice", command="true")
    assert read_loginuid() == pam_setup.daemon_loginuid
