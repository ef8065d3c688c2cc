"""The privilege drop and its verification through the Syscalls seam (Linux and macOS branches),
and the wait-status description. The real drop is exercised in tests/integration/test_spawn.py.
"""

import dataclasses
import errno
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from agent.accounts import Account
from agent.errors import InternalError, RootRefused, SpawnFailed
from agent.spawn import Identity, StageFailed, Syscalls, become, describe_status, verify

ALICE = Account("alice", 1001, 1001, "/home/alice", "/bin/bash", (1002, 1001), "local")


@dataclass
class Kernel:
    """A fake process credential state that behaves like the kernel for an unprivileged
    process once the uid is no longer 0, and records every call."""

    uid: tuple[int, int, int] = (0, 0, 0)
    gid: tuple[int, int, int] = (0, 0, 0)
    groups: list[int] = field(default_factory=lambda: [0])
    calls: list[tuple[object, ...]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)

    def _privileged(self, name: str) -> None:
        if name in self.fail:
            raise OSError(self.fail[name], os.strerror(self.fail[name]))

    def _root(self) -> bool:
        return self.uid[1] == 0

    def setgroups(self, groups: "list[int] | tuple[int, ...]") -> None:
        self.calls.append(("setgroups", tuple(groups)))
        self._privileged("setgroups")
        if not self._root():
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.groups = list(groups)

    def setresgid(self, r: int, e: int, s: int) -> None:
        self.calls.append(("setresgid", r, e, s))
        self._privileged("setresgid")
        self.gid = (r, e, s)

    def setresuid(self, r: int, e: int, s: int) -> None:
        self.calls.append(("setresuid", r, e, s))
        self._privileged("setresuid")
        self.uid = (r, e, s)

    def initgroups(self, name: str, gid: int) -> None:
        self.calls.append(("initgroups", name, gid))
        self._privileged("initgroups")
        self.groups = [gid, *sorted(set(ALICE.groups) - {gid})]

    def setgid(self, gid: int) -> None:
        self.calls.append(("setgid", gid))
        self._privileged("setgid")
        if self._root():
            self.gid = (gid, gid, gid)
        elif gid in (self.gid[0], self.gid[2]):
            self.gid = (self.gid[0], gid, self.gid[2])
        else:
            raise PermissionError(errno.EPERM, "Operation not permitted")

    def setuid(self, uid: int) -> None:
        self.calls.append(("setuid", uid))
        self._privileged("setuid")
        if self._root():
            self.uid = (uid, uid, uid)
        elif uid in (self.uid[0], self.uid[2]):
            self.uid = (self.uid[0], uid, self.uid[2])
        else:
            raise PermissionError(errno.EPERM, "Operation not permitted")

    login: str = "root"  # the session's login name (setlogin), inherited from the daemon

    def setlogin(self, name: str) -> None:
        self.calls.append(("setlogin", name))
        self._privileged("setlogin")
        if not self._root():
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.login = name

    def directory_groups(self) -> list[int]:
        """os.getgroups() on macOS: getgrouplist() of the login name, whatever the kernel holds
        (CPython's "unlimited" getgroups, Libinfo); before setlogin that name is root."""
        if self.login == ALICE.name:
            return [ALICE.gid, *sorted(set(ALICE.groups) - {ALICE.gid})]
        return [0]

    def syscalls(self, *, darwin: bool = False, **override: object) -> Syscalls:
        funcs: dict[str, object] = dict(
            setgroups=self.setgroups,
            setresgid=None if darwin else self.setresgid,
            setresuid=None if darwin else self.setresuid,
            getresgid=None if darwin else (lambda: self.gid),
            getresuid=None if darwin else (lambda: self.uid),
            initgroups=self.initgroups,
            setgid=self.setgid,
            setuid=self.setuid,
            getgid=lambda: self.gid[0],
            getegid=lambda: self.gid[1],
            getuid=lambda: self.uid[0],
            geteuid=lambda: self.uid[1],
            getgroups=self.directory_groups if darwin else (lambda: list(self.groups)),
            login_tty=None,
            keyctl=None,
            kernel_groups=(lambda: list(self.groups)) if darwin else None,
            setlogin=self.setlogin if darwin else None,
        )
        funcs.update(override)
        return Syscalls(**funcs)  # type: ignore[arg-type]


def linux() -> Identity:
    return Identity.of(ALICE, "linux")


def darwin() -> Identity:
    return Identity.of(ALICE, "darwin")


def test_identity_prepared_in_the_parent() -> None:
    ident = linux()
    assert ident == Identity("alice", 1001, 1001, (1001, 1002), False)
    assert darwin().darwin is True
    odd = Account("odd", 1003, 1003, "/h", "/bin/sh", (), "directory")
    assert Identity.of(odd, "linux").groups == (1003,)  # the primary gid is always in


def test_identity_refuses_root_and_group_zero() -> None:
    with pytest.raises(RootRefused):
        Identity.of(Account("toor", 0, 0, "/root", "/bin/sh", (0,), "local"), "linux")
    with pytest.raises(SpawnFailed, match="primary group 0"):
        Identity.of(Account("g0", 1005, 0, "/h", "/bin/sh", (0,), "local"), "linux")
    with pytest.raises(SpawnFailed, match="invalid"):
        Identity.of(Account("neg", 1005, 1005, "/h", "/bin/sh", (-1,), "local"), "linux")


def test_linux_drop_order_groups_then_gid_then_uid_and_verify_passes() -> None:
    k = Kernel()
    ops = k.syscalls()
    become(ops, linux())
    assert k.calls == [
        ("setgroups", (1001, 1002)),
        ("setresgid", 1001, 1001, 1001),
        ("setresuid", 1001, 1001, 1001),
    ]
    verify(ops, linux())
    assert k.calls[-2:] == [("setgid", 0), ("setuid", 0)]  # both tried, both refused
    assert (k.uid, k.gid) == ((1001,) * 3, (1001,) * 3)


@pytest.mark.parametrize("stage", ["setgroups", "setresgid", "setresuid"])
def test_linux_drop_failure_names_the_stage_and_stops(stage: str) -> None:
    k = Kernel(fail={stage: errno.EPERM})
    with pytest.raises(StageFailed) as info:
        become(k.syscalls(), linux())
    assert (info.value.stage, info.value.errno) == (stage, errno.EPERM)
    assert info.value.reason == "spawn_failed"
    assert k.calls[-1][0] == stage  # nothing after the failed call


@dataclass(frozen=True)
class Lie:
    field: str
    value: Any
    message: str


LIES = [
    Lie("getresuid", lambda: (1001, 1001, 0), r"uids are \(1001, 1001, 0\)"),  # saved uid kept
    Lie("getresuid", lambda: (1001, 0, 1001), "uids are"),
    Lie("getresgid", lambda: (1001, 1001, 0), r"gids are \(1001, 1001, 0\)"),
    Lie("getresgid", lambda: (0, 1001, 1001), "gids are"),
    Lie("getgroups", lambda: [0, 1001, 1002], r"groups are \[0, 1001, 1002\]"),  # root's kept
    Lie("getgroups", lambda: [1001], r"expected \[1001, 1002\]"),  # one missing
    Lie("setuid", lambda uid: None, r"setuid\(0\) succeeded"),
    Lie("setgid", lambda gid: None, r"setgid\(0\) succeeded"),
]


@pytest.mark.parametrize("lie", LIES, ids=lambda lie: f"{lie.field}:{lie.message}")
def test_verify_catches_every_mismatch(lie: Lie) -> None:
    k = Kernel()
    ops = k.syscalls()
    become(ops, linux())
    verify(ops, linux())  # the honest kernel passes
    with pytest.raises(StageFailed, match=lie.message) as info:
        verify(dataclasses.replace(ops, **{lie.field: lie.value}), linux())
    assert info.value.stage == "verify"


def test_verify_wants_eperm_from_setuid_0() -> None:
    def odd(uid: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    k = Kernel()
    become(k.syscalls(), linux())
    with pytest.raises(StageFailed, match="not with EPERM"):
        verify(k.syscalls(setuid=odd), linux())


def test_verify_fails_when_nothing_was_dropped() -> None:
    k = Kernel()
    with pytest.raises(StageFailed, match="uids are"):
        verify(k.syscalls(), linux())


def test_darwin_drop_initgroups_then_setgid_then_setuid() -> None:
    k = Kernel()
    ops = k.syscalls(darwin=True)
    become(ops, darwin())
    # initgroups builds the kernel list (primary gid first, at most 16) and turns on directory
    # membership; a raw setgroups of the full list is never made on macOS
    assert k.calls == [("setlogin", "alice"), ("initgroups", "alice", 1001), ("setgid", 1001),
                       ("setuid", 1001)]
    verify(ops, darwin())
    assert (k.uid, k.gid) == ((1001,) * 3, (1001,) * 3)


@pytest.mark.parametrize("stage", ["setlogin", "initgroups", "setgid", "setuid"])
def test_darwin_drop_failure_names_the_stage(stage: str) -> None:
    k = Kernel(fail={stage: errno.EPERM})
    with pytest.raises(StageFailed) as info:
        become(k.syscalls(darwin=True), darwin())
    assert info.value.stage == stage


def test_darwin_verify_catches_a_kept_root_uid() -> None:
    """macOS cannot read the saved uid; setuid(0) succeeding is what betrays it."""
    k = Kernel()
    ops = k.syscalls(darwin=True)
    become(ops, darwin())
    k.uid = (1001, 1001, 0)  # saved uid still root
    with pytest.raises(StageFailed, match=r"setuid\(0\) succeeded"):
        verify(ops, darwin())
    k2 = Kernel()
    become(k2.syscalls(darwin=True), darwin())
    with pytest.raises(StageFailed, match="gids are"):
        verify(k2.syscalls(darwin=True, getegid=lambda: 0), darwin())


def test_darwin_session_has_the_accounts_login_name() -> None:
    """Without setlogin, getlogin() and `logname` in the session say the daemon's: root."""
    k = Kernel()
    become(k.syscalls(darwin=True), darwin())
    assert k.login == "alice"


def test_darwin_verify_reads_the_kernels_groups_not_the_directorys() -> None:
    """An initgroups that left root's groups in the credential: os.getgroups() on macOS asks the
    directory and would say all is well; the kernel's list says otherwise."""
    k = Kernel()
    ops = k.syscalls(darwin=True, initgroups=lambda name, gid: None)
    become(ops, darwin())
    assert sorted(set(ops.getgroups())) == list(darwin().groups)  # the directory is fine
    with pytest.raises(StageFailed, match="kernel's groups"):
        verify(ops, darwin())


def test_darwin_verify_accepts_the_16_group_kernel_list() -> None:
    many = Account("bob", 1010, 1010, "/Users/bob", "/bin/zsh", tuple(range(2000, 2030)),
                   "local")
    ident = Identity.of(many, "darwin")
    k = Kernel()
    ops = k.syscalls(darwin=True, initgroups=lambda name, gid: setattr(
        k, "groups", [gid, *[g for g in ident.groups if g != gid][:15]]))
    become(ops, ident)
    verify(ops, ident)
    k.groups = k.groups[:15]  # one short of what initgroups sets
    with pytest.raises(StageFailed, match="kernel's groups"):
        verify(ops, ident)


def test_a_linux_host_without_setresuid_fails_closed() -> None:
    k = Kernel()
    with pytest.raises(StageFailed, match="unavailable"):
        become(k.syscalls(setresuid=None), linux())
    assert k.calls == []


def test_real_syscalls_match_this_platform() -> None:
    real = Syscalls.real()
    assert real.setresuid is getattr(os, "setresuid", None)
    assert real.login_tty is getattr(os, "login_tty", None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, {"code": 0, "signal": None}),
        (7 << 8, {"code": 7, "signal": None}),
        (255 << 8, {"code": 255, "signal": None}),
        (signal.SIGKILL, {"code": None, "signal": 9}),
        (signal.SIGSEGV | 0x80, {"code": None, "signal": signal.SIGSEGV}),  # core dumped
    ],
)
def test_describe_status(status: int, expected: dict[str, Optional[int]]) -> None:
    assert describe_status(status) == expected


def test_describe_status_refuses_a_stopped_status() -> None:
    with pytest.raises(InternalError):
        describe_status((signal.SIGSTOP << 8) | 0x7F)


def test_describe_status_of_real_children() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(42)
    assert describe_status(os.waitpid(pid, 0)[1]) == {"code": 42, "signal": None}
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)
    assert describe_status(os.waitpid(pid, 0)[1]) == {"code": None, "signal": 9}
