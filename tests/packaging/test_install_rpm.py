"""The .rpm, installed with rpm --root into a tree whose /usr is an overlay of this system's: its
scriptlets really run (chrooted, on Debian's userland), for install (1), upgrade (2) and erase (0).
"""

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Isolated
from tests.packaging.conftest import Built

pytestmark = pytest.mark.privileged

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def sh(*argv: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENV)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def rpm_root(system_overlay: Isolated) -> Iterator[Path]:
    """An empty system tree in the namespace's scratch tmpfs: /usr is an overlay of ours (so
    /bin/sh, groupadd, systemctl and python3 exist), /dev is bound in, /etc holds just the
    account databases."""
    root = Path(tempfile.mkdtemp(prefix="rpmroot-", dir=system_overlay.iso.scratch))
    usr_upper = Path(tempfile.mkdtemp(prefix="rpmroot-usr-", dir=system_overlay.iso.scratch))
    for d in ("usr", "etc", "var/tmp", "run", "tmp", "dev", "root"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    (usr_upper / "up").mkdir()
    (usr_upper / "work").mkdir()
    mounts = [root / "usr", root / "dev"]
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir=/usr,upperdir={usr_upper}/up,workdir={usr_upper}/work", str(root / "usr"))
    try:
        sh("mount", "--bind", "/dev", str(root / "dev"))
        for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
            data = Path("/etc", name).read_bytes()
            (root / "etc" / name).write_bytes(data)
        (root / "etc/nsswitch.conf").write_text("passwd: files\ngroup: files\nshadow: files\n")
        sh("rpm", "--root", str(root), "--initdb")
        yield root
    finally:
        for m in reversed(mounts):
            sh("umount", "--lazy", str(m), check=False)


def rpm(root: Path, *args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    return sh("rpm", "--root", str(root), *args, check=check)


def chroot(root: Path, *argv: str) -> "subprocess.CompletedProcess[str]":
    return sh("chroot", str(root), *argv, check=False)


def groups(root: Path) -> list[str]:
    return [line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()]


def test_rpm_install_upgrade_erase(rpm_root: Path, built: Built) -> None:
    root = rpm_root
    # --nodeps: this tree's rpm database is empty; Debian's python3, psutil and PyYAML under the
    # /usr overlay stand in for the RHEL packages the .rpm requires.
    rpm(root, "-i", "--nodeps", str(built.old_rpm))
    assert rpm(root, "-q", "runas-agent").stdout == f"runas-agent-{built.old_version}-1.noarch\n"

    # Into the tree only: its /usr is a separate overlay, /etc its own directory.
    assert (root / "usr/lib/runas-agent/agent/cli.py").is_file()
    assert not Path("/usr/lib/runas-agent").exists()
    assert "runas-agent" not in Path("/etc/group").read_text()
    # %pre and %post (argument 1) ran inside the tree.
    assert "runas-agent" in groups(root)
    assert (root / "var/log/runas-agent").is_dir()
    assert oct((root / "var/lib/runas-agent").stat().st_mode & 0o777) == "0o700"
    wants = root / "etc/systemd/system/sockets.target.wants/runas-agent.socket"
    # (Debian's systemctl, used here, names the unit through /lib; RHEL's through /usr/lib.)
    target = os.readlink(wants)
    assert target.endswith("/lib/systemd/system/runas-agent.socket")
    assert (root / target.lstrip("/")).resolve() == (
        root / "usr/lib/systemd/system/runas-agent.socket").resolve()
    assert list((root / "usr/lib/runas-agent/agent/__pycache__").glob("*.pyc"))
    # Every packaged file is in place, with the packaged digest and mode.
    verify = rpm(root, "-V", "--nodeps", "runas-agent", check=False)
    assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout

    # The installed agent on the tree's /usr/bin/python3, with the vendored structlog first on
    # its path (this host also has Debian's python3-structlog).
    proc = chroot(root, "/usr/bin/runas-agent", "version")
    assert (proc.returncode, proc.stdout) == (0, f"runas-agent {built.old_version}\n"), proc.stderr
    proc = chroot(root, "/usr/bin/python3", "-I", "-c",
                  "import sys; sys.path[:0] = ['/usr/lib/runas-agent', "
                  "'/usr/lib/runas-agent/vendor']; import structlog; print(structlog.__file__)")
    assert proc.stdout == "/usr/lib/runas-agent/vendor/structlog/__init__.py\n", proc.stderr
    proc = chroot(root, "/usr/bin/runas-agent", "check", "root")
    assert proc.returncode == 1
    assert "root_refused" in proc.stdout

    # Upgrade (%post gets 2, the old %preun/%postun get 1): the edited config stays.
    config = root / "etc/runas-agent/config.yaml"
    edited = config.read_text().replace("#  min_uid: 0", "  min_uid: 1000")
    config.write_text(edited)
    rpm(root, "-U", "--nodeps", str(built.new_rpm))
    assert rpm(root, "-q", "runas-agent").stdout == f"runas-agent-{built.new_version}-1.noarch\n"
    # The old version's %preun (argument 1) left the new byte code and the enablement alone
    # (checked before anything runs python3 there, which would write byte code itself).
    assert list((root / "usr/lib/runas-agent/agent/__pycache__").glob("*.pyc"))
    assert os.path.islink(wants)
    assert config.read_text() == edited
    assert not list(config.parent.glob("config.yaml.rpm*"))
    proc = chroot(root, "/usr/bin/runas-agent", "version")
    assert proc.stdout == f"runas-agent {built.new_version}\n", proc.stderr

    # Erase (argument 0): program, byte code, state and enablement go; the edited config is
    # saved by rpm; the audit log directory and the group stay (Fedora's guidelines).
    rpm(root, "-e", "runas-agent")
    assert rpm(root, "-q", "runas-agent", check=False).returncode == 1
    assert not (root / "usr/lib/runas-agent").exists()
    assert not (root / "usr/bin/runas-agent").exists()
    assert not (root / "usr/lib/systemd/system/runas-agent.socket").exists()
    assert not os.path.lexists(wants)
    assert not (root / "var/lib/runas-agent").exists()
    assert (root / "etc/runas-agent/config.yaml.rpmsave").read_text() == edited
    assert (root / "var/log/runas-agent").is_dir()
    assert "runas-agent" in groups(root)
