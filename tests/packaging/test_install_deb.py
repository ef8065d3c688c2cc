"""The .deb, installed for real with apt and dpkg inside the isolated namespace (/etc, /usr, /var,
/run and /opt overlaid): first install, the installed agent on /usr/bin/python3, an upgrade that
keeps an edited config, remove, and a purge that leaves no file behind."""

import grp
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Isolated, Users
from tests.packaging.conftest import Built

pytestmark = pytest.mark.privileged

CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
ROOTS = ("/etc", "/usr", "/var", "/run", "/opt")
# Bookkeeping of dpkg and apt themselves, caches, and the backup copies shadow's tools keep of
# /etc/group and /etc/gshadow (their content changes when a group is added and removed again).
CHURN = ("/var/lib/dpkg", "/var/lib/apt", "/var/cache", "/var/log/apt", "/var/log/dpkg.log",
         "/var/log/alternatives.log", "/etc/group-", "/etc/gshadow-", "/etc/ld.so.cache")


def sh(*argv: str, check: bool = True, env: "dict[str, str] | None" = None,
       ) -> "subprocess.CompletedProcess[str]":
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env=env if env is not None else CLEAN_ENV)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def tree() -> dict[str, str]:
    """Every path under ROOTS, with a digest of its type, mode, owner and (for files and links)
    content, except dpkg's and apt's own churn."""
    out: dict[str, str] = {}
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in CHURN]
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if path in CHURN:
                    continue
                st = os.lstat(path)
                h = hashlib.sha256(f"{st.st_mode}:{st.st_uid}:{st.st_gid}".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode())
                elif stat.S_ISREG(st.st_mode) and root in ("/etc", "/var", "/run"):
                    with open(path, "rb") as fh:
                        h.update(fh.read())
                out[path] = h.hexdigest()
    return out


AGENT_DIRS = ("/etc/runas-agent", "/var/log/runas-agent", "/var/lib/runas-agent",
              "/run/runas-agent")


@pytest.fixture
def fresh_node(system_overlay: Isolated) -> Iterator[None]:
    """The agent's directories as on a node that never had it: what earlier tests in this
    namespace left there (the daemon's own runs create some) is set aside, then put back."""
    moved = []
    for d in AGENT_DIRS:
        if os.path.lexists(d):
            os.rename(d, d + ".set-aside")
            moved.append(d)
    try:
        yield
    finally:
        for d in moved:
            if not os.path.lexists(d):
                os.rename(d + ".set-aside", d)


def installed_version() -> str:
    proc = sh("dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", "runas-agent",
              check=False)
    return proc.stdout if proc.returncode == 0 else ""


def agent(*args: str, env: "dict[str, str] | None" = None,
          ) -> "subprocess.CompletedProcess[str]":
    """The installed command, exactly as an admin runs it."""
    return sh("/usr/bin/runas-agent", *args, check=False, env=env)


def test_deb_install_upgrade_remove_purge(system_overlay: Isolated, fresh_node: None,
                                          users: Users, built: Built) -> None:
    assert installed_version() == ""
    before = tree()

    # -- first install, with apt, the way an admin does it ------------------------------------
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends", str(built.old_deb))
    assert installed_version() == f"ii {built.old_version}"
    group = grp.getgrnam("runas-agent")
    assert group.gr_gid < 1000  # a system group
    assert stat.S_IMODE(os.stat("/var/log/runas-agent").st_mode) == 0o750
    assert stat.S_IMODE(os.stat("/var/lib/runas-agent").st_mode) == 0o700
    wants = Path("/etc/systemd/system/sockets.target.wants/runas-agent.socket")
    assert os.readlink(wants) == "/lib/systemd/system/runas-agent.socket"
    assert not Path("/etc/systemd/system/multi-user.target.wants/runas-agent.service").exists()
    # Byte code compiled for the system python3 at install time.
    assert list(Path("/usr/lib/runas-agent/agent/__pycache__").glob("cli.cpython-*.pyc"))
    # All of it in the namespace's overlays: the host has none of it.
    host_ns = f"/proc/{os.getpid()}/fd/{system_overlay.iso.host_ns_fd}"
    for path in ("/usr/lib/runas-agent", "/usr/bin/runas-agent", "/etc/runas-agent",
                 "/lib/systemd/system/runas-agent.socket", str(wants)):
        assert os.path.lexists(path), path
        seen = subprocess.run(["nsenter", f"--mount={host_ns}", "--", "test", "-e", path],
                              timeout=30)
        assert seen.returncode == 1, f"{path} reached the host"

    # -- the installed agent runs from /usr/lib/runas-agent on /usr/bin/python3 -I -----------
    proc = agent("version")
    assert (proc.returncode, proc.stdout) == (0, f"runas-agent {built.old_version}\n")
    # -I: a PYTHONPATH pointing at the source tree (a newer version) changes nothing.
    from tests.packaging.conftest import REPO

    poisoned = dict(CLEAN_ENV, PYTHONPATH=str(REPO), PYTHONHOME="/nonexistent")
    proc = agent("version", env=poisoned)
    assert proc.stdout == f"runas-agent {built.old_version}\n", proc.stderr
    proc = agent("check", users.alice, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["usable"] is True
    assert report["user"] == users.alice
    proc = agent("check", users.toor, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["reason"] == "root_refused"
    proc = agent("config", "check")
    assert (proc.returncode, proc.stdout) == (0, "/etc/runas-agent/config.yaml: ok\n")
    man = sh("man", "-w", "8", "runas-agent")
    assert man.stdout.strip() == "/usr/share/man/man8/runas-agent.8.gz"
    # The installed units, with their man page now resolvable: systemd-analyze prints nothing.
    proc = sh("systemd-analyze", "verify", "/lib/systemd/system/runas-agent.socket",
              "/lib/systemd/system/runas-agent.service", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")

    # -- an admin edits the config; the upgrade keeps the edit --------------------------------
    config = Path("/etc/runas-agent/config.yaml")
    edited = config.read_text().replace("#  min_uid: 0", "  min_uid: 1000")
    assert edited != config.read_text()
    config.write_text(edited)
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends", str(built.new_deb))
    assert installed_version() == f"ii {built.new_version}"
    assert config.read_text() == edited
    assert not list(config.parent.glob("config.yaml.dpkg-*"))
    proc = agent("version")
    assert proc.stdout == f"runas-agent {built.new_version}\n"
    proc = agent("check", users.alice, "--json")
    assert proc.returncode == 0, proc.stderr
    proc = agent("check", users.bob, "--json")  # uid 1001+ passes min_uid 1000
    assert json.loads(proc.stdout)["usable"] is True
    assert os.path.islink(wants)

    # -- remove: the program goes, configuration and state stay ------------------------------
    sh("apt-get", "remove", "-y", "-q", "runas-agent")
    assert installed_version().startswith("rc ")
    assert not Path("/usr/bin/runas-agent").exists()
    assert not Path("/usr/lib/runas-agent").exists()  # byte code included
    assert config.read_text() == edited
    assert Path("/var/log/runas-agent").is_dir()
    grp.getgrnam("runas-agent")

    # -- purge: nothing the package created is left ------------------------------------------
    sh("dpkg", "--purge", "runas-agent")
    assert installed_version() == ""
    after = tree()
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert (added, removed, changed) == ([], [], [])
    with pytest.raises(KeyError):
        grp.getgrnam("runas-agent")


def test_purge_keeps_a_group_that_has_members(system_overlay: Isolated, users: Users,
                                              built: Built) -> None:
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends", str(built.new_deb))
    try:
        sh("usermod", "-a", "-G", "runas-agent", "--", users.bob)
        proc = sh("dpkg", "--purge", "runas-agent")
        assert "group runas-agent kept: it has members (bob)" in proc.stderr
        assert users.bob in grp.getgrnam("runas-agent").gr_mem
        assert not Path("/etc/runas-agent").exists()
    finally:
        if installed_version():
            sh("dpkg", "--purge", "runas-agent", check=False)
        sh("gpasswd", "-d", users.bob, "runas-agent", check=False)
        sh("groupdel", "runas-agent", check=False)

