"""agent.cgroup's path logic: /proc parsing, where the daemon and the sessions live."""

from __future__ import annotations

import os

import pytest

from agent import cgroup
from agent.cgroup import FREEZER, V2, Layout, Mount

HYBRID_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
"""
HYBRID_CGROUP = """\
9:name=systemd:/system.slice/runas-agent.service
6:freezer:/
4:memory:/system.slice/runas-agent.service
1:cpu,cpuacct:/system.slice/runas-agent.service
0::/system.slice/runas-agent.service
"""
PURE_V2_MOUNTINFO = (
    "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
)


def test_mountinfo_lists_the_cgroup_mounts_only() -> None:
    mounts = cgroup.parse_mountinfo(HYBRID_MOUNTINFO)
    assert [(m.point, m.fstype) for m in mounts] == [
        ("/sys/fs/cgroup/freezer", "cgroup"), ("/sys/fs/cgroup/systemd", "cgroup"),
        ("/sys/fs/cgroup/unified", "cgroup2"), ("/sys/fs/cgroup/cpu,cpuacct", "cgroup")]
    assert mounts[0].options == ("rw", "freezer")
    assert mounts[2].root == "/"
    (pure,) = cgroup.parse_mountinfo(PURE_V2_MOUNTINFO)
    assert (pure.point, pure.root, pure.fstype) == ("/sys/fs/cgroup", "/", "cgroup2")


def test_mountinfo_octal_escapes_and_junk() -> None:
    text = ("50 1 0:40 /a\\040b /mnt/c\\040g rw - cgroup2 none rw\n"
            "garbage line\n"
            "51 1 0:41 / /x rw - \n")
    (m,) = cgroup.parse_mountinfo(text)
    assert (m.point, m.root) == ("/mnt/c g", "/a b")


def test_proc_cgroup_hybrid_pure_and_v1() -> None:
    got = cgroup.parse_proc_cgroup(HYBRID_CGROUP)
    assert got[""] == "/system.slice/runas-agent.service"
    assert got["freezer"] == "/"
    assert got["cpu"] == got["cpuacct"] == "/system.slice/runas-agent.service"
    assert got["name=systemd"] == "/system.slice/runas-agent.service"
    assert cgroup.parse_proc_cgroup("0::/\n") == {"": "/"}
    assert "" not in cgroup.parse_proc_cgroup("6:freezer:/x\n")
    assert cgroup.parse_proc_cgroup("junk\n0::relative\n") == {}


def test_fs_path() -> None:
    m = Mount("/sys/fs/cgroup/unified", "/", "cgroup2", ())
    assert cgroup.fs_path(m, "/") == "/sys/fs/cgroup/unified"
    assert cgroup.fs_path(m, "/a/b") == "/sys/fs/cgroup/unified/a/b"
    assert cgroup.fs_path(m, "/a/../b") is None
    assert cgroup.fs_path(m, "relative") is None
    # A mount that shows only part of the hierarchy (a container's bind mount).
    part = Mount("/sys/fs/cgroup", "/docker/abc", "cgroup2", ())
    assert cgroup.fs_path(part, "/docker/abc") == "/sys/fs/cgroup"
    assert cgroup.fs_path(part, "/docker/abc/x") == "/sys/fs/cgroup/x"
    assert cgroup.fs_path(part, "/docker/abcd") is None
    assert cgroup.fs_path(part, "/") is None


@pytest.mark.parametrize(("own", "kind", "want"), [
    # Under a service manager: the unit's cgroup, the daemon moves into a leaf (v2).
    ("/system.slice/runas-agent.service", V2, Layout(
        "/system.slice/runas-agent.service", "/system.slice/runas-agent.service/daemon",
        "/system.slice/runas-agent.service/sessions", False)),
    # Already in that leaf (a restart that kept it, or DelegateSubgroup=daemon).
    ("/system.slice/runas-agent.service/daemon", V2, Layout(
        "/system.slice/runas-agent.service", "/system.slice/runas-agent.service/daemon",
        "/system.slice/runas-agent.service/sessions", False)),
    # The root cgroup (no manager): a unit of the daemon's own making; it stays in the root.
    ("/", V2, Layout("/runas-agent", "/", "/runas-agent/sessions", True)),
    # v1 has no leaf rule: the daemon stays where it is.
    ("/", FREEZER, Layout("/runas-agent", "/", "/runas-agent/sessions", True)),
    ("/some/group", FREEZER, Layout("/some/group", "/some/group", "/some/group/sessions",
                                    False)),
])
def test_layout(own: str, kind: str, want: Layout) -> None:
    assert cgroup.layout(own, kind) == want


def test_logind_scopes() -> None:
    assert cgroup.is_logind_scope("/user.slice/user-1000.slice/session-3.scope")
    assert cgroup.is_logind_scope("/user.slice/user-1000.slice/session-c12.scope/")
    assert not cgroup.is_logind_scope("/system.slice/runas-agent.service")
    assert not cgroup.is_logind_scope("/user.slice/user-1000.slice/session-3.scope/x")
    assert not cgroup.is_logind_scope("/system.slice/docker-ab.scope")
    assert not cgroup.is_logind_scope("/")


def test_session_names_are_never_interface_files() -> None:
    name = cgroup.session_name("cgroup.procs", 42)
    assert name == "session-cgroup.procs-42"
    assert "/" not in cgroup.session_name("a/b", 1)


def test_supervisor_of_a_session_cgroup() -> None:
    assert cgroup.supervisor_of(cgroup.session_name("a-b-c", 4242)) == 4242
    assert cgroup.supervisor_of("session-x-") is None
    assert cgroup.supervisor_of("session-x-01") is None
    assert cgroup.supervisor_of("cgroup.procs") is None
    assert cgroup.supervisor_of("other-12") is None


def test_hierarchies_best_first() -> None:
    mounts = cgroup.parse_mountinfo(HYBRID_MOUNTINFO)
    found = cgroup.find_hierarchies(mounts, cgroup.parse_proc_cgroup(HYBRID_CGROUP))
    assert [(h.kind, h.mount.point, h.own) for h in found] == [
        (V2, "/sys/fs/cgroup/unified", "/system.slice/runas-agent.service"),
        (FREEZER, "/sys/fs/cgroup/freezer", "/")]
    pure = cgroup.parse_mountinfo(PURE_V2_MOUNTINFO)
    assert [h.kind for h in cgroup.find_hierarchies(pure, {"": "/a"})] == [V2]
    v1_only = tuple(m for m in mounts if m.fstype == "cgroup")
    assert [h.kind for h in cgroup.find_hierarchies(v1_only, {"freezer": "/"})] == [FREEZER]
    assert cgroup.find_hierarchies((), {"": "/"}) == ()
    # Our cgroup is not visible through the mount: unusable.
    part = (Mount("/sys/fs/cgroup", "/other", "cgroup2", ()),)
    assert cgroup.find_hierarchies(part, {"": "/mine"}) == ()


def test_no_hierarchy_is_unavailable_and_changes_nothing(tmp_path: str) -> None:
    proc = os.path.join(str(tmp_path), "proc")
    os.makedirs(os.path.join(proc, "self"))
    with open(os.path.join(proc, "self", "mountinfo"), "w") as fh:
        fh.write("23 1 0:21 / /sys rw - sysfs sysfs rw\n")
    with open(os.path.join(proc, "self", "cgroup"), "w") as fh:
        fh.write("0::/\n")
    for got in (cgroup.probe(proc), cgroup.setup(proc)):
        assert isinstance(got, cgroup.Unavailable)
        assert got.describe().startswith("end_mode all is best-effort here: ")
    missing = cgroup.setup(os.path.join(str(tmp_path), "nothing"))
    assert isinstance(missing, cgroup.Unavailable)
