"""Whether a home directory can be trusted with an account that may hold sudo (ssm-user).

A login shell runs the home's startup files (~/.profile, ~/.bashrc) as the account, so whoever
can write the home, or could have before the account got it, runs code with the account's
rights. A home is trusted when only the account and root can have put anything in it:

- the home itself (lstat: a symlink is never followed) is a directory owned by the account or
  by root and not writable by group or others;
- every directory above it, with symlinks followed component by component (each link is then
  in a directory already found safe), is owned by root and not writable by group or others.
  Sticky directories (/tmp) are not trusted either: anyone may create the home's name in one;
- before the account is created (`uid=None`) the home must not exist at all: `useradd -m`
  leaves an existing directory, its owner and its contents as they are.

A home that does not exist (an existing account's, removed since) is trusted when the
directories above it are: only root can create it there.

`quick()` is the per-session look: the one lstat of the home. `problem()` is the whole verdict.
"""

from __future__ import annotations

import os
import stat

from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Optional

_MAX_LINKS = 40  # as the kernel's path walk (ELOOP)


class Problem(Frozen):
    """Why a home cannot be trusted (MESSAGE names the path at fault) and what to do (HINT).

    A frozen value (agent.values): `check ssm-user` imports this module."""

    __slots__ = ("hint", "message", "path")
    path: str
    message: str
    hint: str

    def __init__(self, path: str, message: str, hint: str) -> None:
        self._init(path=path, message=message, hint=hint)


def owner(uid: int) -> str:
    """`uid N (name)`, or `uid N (no account)`."""
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid} (no account)"


def home_problem(home: str, st: os.stat_result, uid: int, user: str) -> Optional[Problem]:
    """Why the home itself, as lstat found it (ST), cannot be trusted for USER (UID), or None."""
    mode = st.st_mode
    fix = (f"check what is in {home}, move it away, and give {user} a fresh home "
           f"(or set ssm_user.home to a new path before it is created)")
    if stat.S_ISLNK(mode):
        return Problem(home, f"home {home} is a symbolic link", fix)
    if not stat.S_ISDIR(mode):
        return Problem(home, f"home {home} is not a directory", fix)
    if st.st_uid not in (uid, 0):
        return Problem(home, f"home {home} is owned by {owner(st.st_uid)}, not by {user} "
                       f"(uid {uid}) or root", fix)
    if mode & 0o022:
        return Problem(home, f"home {home} is writable by group or others "
                       f"(mode {stat.S_IMODE(mode):04o})",
                       f"check what is in {home}, then `chmod go-w {home}`")
    return None


def quick(home: str, uid: int) -> bool:
    """The per-session look (one lstat): the home exists and passes `home_problem`."""
    try:
        st = os.lstat(home)
    except OSError:
        return False
    return home_problem(home, st, uid, "") is None


def problem(home: str, uid: Optional[int], user: str) -> Optional[Problem]:
    """Why HOME cannot be trusted as USER's home, or None when it can.

    UID None: the account is about to be created, and HOME must not exist yet.
    """
    parts = home.split("/")
    if not home.startswith("/") or ".." in parts or "." in parts:
        return Problem(home, f"home {home!r} is not a plain absolute path",
                       "set an absolute home without '.' or '..' components")
    path = os.path.normpath(home)
    if path != "/":
        found = _ancestors_problem(os.path.dirname(path))
        if found is not None:
            return found
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Problem(path, f"cannot inspect home {path}: {exc.strerror}",
                       f"make {path} inspectable by root")
    if uid is None:
        what = ("a symbolic link" if stat.S_ISLNK(st.st_mode)
                else f"owned by {owner(st.st_uid)}")
        return Problem(
            path,
            f"home {path} already exists ({what}): a new {user} would get whatever is in it",
            f"check what is in {path} and move it away (e.g. a home left behind by "
            f"`userdel` without -r), or set ssm_user.home to a new path",
        )
    return home_problem(path, st, uid, user)


def _ancestors_problem(directory: str) -> Optional[Problem]:
    """The first directory on the way to DIRECTORY (absolute) that is not root's alone."""
    found = _dir_problem("/")
    if found is not None:
        return found
    todo = [p for p in directory.split("/") if p][::-1]  # next component last
    current = "/"
    links = 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        path = os.path.join(current, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None  # the rest is created later, under directories found safe
        except OSError as exc:
            return Problem(path, f"cannot inspect {path}: {exc.strerror}",
                           f"make {path} inspectable by root")
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return Problem(path, f"too many symbolic links on the way to {directory}",
                               "fix the symbolic link loop")
            try:
                target = os.readlink(path)
            except OSError as exc:
                return Problem(path, f"cannot read the symbolic link {path}: {exc.strerror}",
                               f"make {path} inspectable by root")
            if target.startswith("/"):
                current = "/"
            todo.extend(p for p in reversed(target.split("/")) if p)
            continue
        found = _dir_problem(path, st)
        if found is not None:
            return found
        current = path
    return None


def _dir_problem(path: str, st: Optional[os.stat_result] = None) -> Optional[Problem]:
    if st is None:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return Problem(path, f"cannot inspect {path}: {exc.strerror}",
                           f"make {path} inspectable by root")
    hint = (f"only root may be able to change {path}: `chown root {path}; chmod go-w {path}`, "
            "or set ssm_user.home under another directory")
    if not stat.S_ISDIR(st.st_mode):
        return Problem(path, f"{path}, above the home, is not a directory", hint)
    if st.st_uid != 0:
        return Problem(path, f"{path}, above the home, is owned by {owner(st.st_uid)}, "
                       "not root", hint)
    if st.st_mode & 0o022:
        return Problem(path, f"{path}, above the home, is writable by group or others "
                       f"(mode {stat.S_IMODE(st.st_mode):04o})", hint)
    return None
