"""ssm-user's home must be one the agent can trust: each condition, against `ssm_user.ensure`.

Real accounts, real directories, real useradd and visudo, inside the isolated namespace (the
homes live under a root-owned 0755 directory in /run; the lock, state file and drop-in under
it too, so /etc/sudoers.d is not touched). Each test ends with no ssm-user.
"""

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import pytest

from agent import homedir, ssm_user
from agent.accounts import Account
from agent.config import Config, SsmUserConfig
from agent.errors import AgentError
from agent.platform.linux import Linux
from tests.conftest import Isolated, Users

pytestmark = pytest.mark.privileged

NAME = "ssm-user"
UNSAFE = "ssm_user_unsafe"


def _gone() -> None:
    subprocess.run(["userdel", "-r", "-f", "--", NAME], capture_output=True)
    subprocess.run(["groupdel", "--", NAME], capture_output=True)
    with pytest.raises(KeyError):
        pwd.getpwnam(NAME)


@dataclass(frozen=True)
class Node:
    base: str  # root-owned 0755: what a home's parent should be
    paths: ssm_user.Paths

    @property
    def home(self) -> str:
        return os.path.join(self.base, "ssm-user")

    def cfg(self, home: Optional[str] = None, sudoers: bool = True) -> Config:
        return Config(ssm_user=SsmUserConfig(home=home or self.home, sudoers=sudoers))

    def ensure(self, home: Optional[str] = None, *, sudoers: bool = True,
               known: Optional[Account] = None) -> ssm_user.EnsureResult:
        return ssm_user.ensure(self.cfg(home, sudoers), Linux(), paths=self.paths, known=known)

    def refused(self, home: Optional[str] = None) -> AgentError:
        with pytest.raises(AgentError) as info:
            self.ensure(home)
        assert info.value.reason == UNSAFE, info.value
        assert info.value.hint
        return info.value

    def drop_in(self) -> bool:
        return os.path.exists(self.paths.drop_in)


@pytest.fixture
def node(isolated: Isolated, users: Users) -> Iterator[Node]:
    _gone()
    base = tempfile.mkdtemp(prefix="ssm-home-", dir="/run")
    os.chmod(base, 0o755)
    os.mkdir(os.path.join(base, "sudoers.d"), 0o755)
    paths = ssm_user.Paths(lock=os.path.join(base, "private", "lock"),
                           state=os.path.join(base, "private", "state"),
                           drop_in=os.path.join(base, "sudoers.d", "ssm-agent-users"))
    try:
        yield Node(base, paths)
    finally:
        _gone()
        subprocess.run(["rm", "-rf", "--", base], check=True)


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _pending(node: Node) -> int:
    """ssm-user as the agent left it when its drop-in is still to be written (a killed first
    session): the next ensure writes the drop-in unless something stops it."""
    res = node.ensure(sudoers=False)
    assert res.created
    uid = res.account.uid
    ssm_user._write_state(node.paths.state, uid, ssm_user.SUDOERS_PENDING)
    assert not node.drop_in()
    return uid


# -- creating it over a path that exists ------------------------------------------------------


def test_creation_over_an_existing_home_of_another_uid_is_refused(node: Node,
                                                                  users: Users) -> None:
    os.mkdir(node.home, 0o755)
    os.chown(node.home, _uid(users.bob), _uid(users.bob))
    with open(os.path.join(node.home, ".profile"), "w") as fh:
        fh.write("echo planted\n")
    err = node.refused()
    assert node.home in err.message
    assert "already exists" in err.message
    assert f"({users.bob})" in err.message
    with pytest.raises(KeyError):
        pwd.getpwnam(NAME)  # checked before useradd: nothing was created
    assert not node.drop_in()
    assert os.stat(node.home).st_uid == _uid(users.bob)


def test_creation_over_an_existing_root_owned_home_is_refused(node: Node) -> None:
    os.mkdir(node.home, 0o755)
    node.refused()
    with pytest.raises(KeyError):
        pwd.getpwnam(NAME)


def test_creation_over_a_symlink_is_refused(node: Node, users: Users) -> None:
    os.symlink(pwd.getpwnam(users.bob).pw_dir, node.home)
    err = node.refused()
    assert "symbolic link" in err.message
    with pytest.raises(KeyError):
        pwd.getpwnam(NAME)
    assert not node.drop_in()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_creation_under_a_parent_others_can_write_is_refused(node: Node, mode: int) -> None:
    parent = os.path.join(node.base, "shared")
    os.mkdir(parent)
    os.chmod(parent, mode)
    err = node.refused(os.path.join(parent, "ssm-user"))
    assert parent in err.message
    assert "writable by group or others" in err.message
    with pytest.raises(KeyError):
        pwd.getpwnam(NAME)
    assert not node.drop_in()


def test_creation_under_a_parent_a_user_owns_is_refused(node: Node, users: Users) -> None:
    parent = os.path.join(node.base, "bobs")
    os.mkdir(parent, 0o755)
    os.chown(parent, _uid(users.bob), _uid(users.bob))
    err = node.refused(os.path.join(parent, "deeper", "ssm-user"))
    assert parent in err.message
    assert f"({users.bob})" in err.message
    with pytest.raises(KeyError):
        pwd.getpwnam(NAME)


def test_a_symlinked_parent_is_followed_and_checked(node: Node, users: Users) -> None:
    unsafe = os.path.join(node.base, "open")
    os.mkdir(unsafe)
    os.chmod(unsafe, 0o777)
    link = os.path.join(node.base, "homes")
    os.symlink("open", link)  # relative, as /home -> usr/home can be
    err = node.refused(os.path.join(link, "ssm-user"))
    assert unsafe in err.message
    # The same link to a safe directory is fine: the account is created through it.
    os.unlink(link)
    safe = os.path.join(node.base, "safe")
    os.mkdir(safe, 0o755)
    os.symlink(safe, link)
    res = node.ensure(os.path.join(link, "ssm-user"))
    assert res.created
    assert res.sudoers_written
    assert os.stat(os.path.join(safe, "ssm-user")).st_uid == res.account.uid


def test_a_fresh_home_in_a_safe_place_is_created_and_granted(node: Node) -> None:
    res = node.ensure()
    assert (res.created, res.sudoers_written) == (True, True)
    st = os.lstat(node.home)
    assert st.st_uid == res.account.uid
    assert homedir.problem(node.home, res.account.uid, NAME) is None
    assert homedir.quick(node.home, res.account.uid)


# -- an existing ssm-user whose home changed ---------------------------------------------------


def test_an_existing_home_made_world_writable_is_refused_and_no_drop_in(node: Node) -> None:
    _pending(node)
    os.chmod(node.home, 0o777)
    err = node.refused()
    assert "writable by group or others (mode 0777)" in err.message
    assert not node.drop_in()


def test_an_existing_home_replaced_by_a_symlink_is_refused_and_no_drop_in(
    node: Node, users: Users
) -> None:
    _pending(node)
    subprocess.run(["rm", "-rf", "--", node.home], check=True)
    os.symlink(pwd.getpwnam(users.bob).pw_dir, node.home)
    err = node.refused()
    assert "symbolic link" in err.message
    assert not node.drop_in()


def test_an_existing_home_owned_by_another_uid_is_refused_and_no_drop_in(
    node: Node, users: Users
) -> None:
    _pending(node)
    os.chown(node.home, _uid(users.bob), -1)
    err = node.refused()
    assert f"owned by uid {_uid(users.bob)} ({users.bob})" in err.message
    assert not node.drop_in()


def test_an_existing_home_under_a_parent_made_writable_is_refused(node: Node) -> None:
    _pending(node)
    os.chmod(node.base, 0o777)
    try:
        err = node.refused()
    finally:
        os.chmod(node.base, 0o755)
    assert node.base in err.message
    assert not node.drop_in()


def test_the_fast_path_refuses_a_home_changed_after_the_drop_in(node: Node) -> None:
    """A settled account (drop-in written) takes the shared look; its one lstat of the home
    sends a changed home to the full check, which refuses it (also for the account the
    session's resolution validated before)."""
    res = node.ensure()
    assert res.sudoers_written
    again = node.ensure(known=res.account)
    assert (again.created, again.sudoers_written) == (False, False)
    os.chmod(node.home, 0o757)
    assert not homedir.quick(node.home, res.account.uid)
    with pytest.raises(AgentError) as info:
        node.ensure(known=res.account)
    assert info.value.reason == UNSAFE
    os.chmod(node.home, 0o750)
    assert node.ensure(known=res.account).account.uid == res.account.uid


def test_a_missing_home_under_safe_parents_is_not_refused(node: Node) -> None:
    res = node.ensure()
    subprocess.run(["rm", "-rf", "--", node.home], check=True)
    assert homedir.problem(node.home, res.account.uid, NAME) is None
    assert node.ensure().account.uid == res.account.uid
