"""Session target accounts: name rules, NSS lookup, source, root refusal, shell, node policy.

`inspect()` runs every check and reports each one (the `check` command shows them all);
`require()` returns a usable Account or raises the typed error of the first failed check.
ssm-user's home must also be one the agent can trust (agent.homedir): `ssm_user_unsafe`.
"""

from __future__ import annotations

import os
import pwd
import re

from agent.errors import (
    DENIED_BY_POLICY,
    DIRECTORY_USER_REFUSED,
    INVALID_NAME,
    LOOKUP_FAILED,
    NAME_MISMATCH,
    ROOT_REFUSED,
    SHELL_DISABLED,
    SSM_USER_UNSAFE,
    USER_NOT_FOUND,
    AgentError,
    InvalidName,
    error_for,
)
from agent.policy import SSM_USER
from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Optional, Union

    from agent.config import PolicyConfig
    from agent.platform import Platform

NAME_MAX_BYTES = 256
FALLBACK_SHELL = "/bin/sh"
_DISABLED_SHELLS = frozenset({"nologin", "false"})
# A plain name, optionally qualified with one `@` or `\` (SSSD/AD), optionally ending in `$`.
_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_NAME_RE = re.compile(rf"{_PART}(?:[@\\]{_PART})?\$?")


def validate_name(name: Union[str, bytes]) -> str:
    """Return NAME as str if it is an acceptable account name, else raise InvalidName."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName("account name is not valid UTF-8") from None
    if not name:
        raise InvalidName("account name is empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("account name is not valid UTF-8") from None
    if len(raw) > NAME_MAX_BYTES:
        raise InvalidName(f"account name is longer than {NAME_MAX_BYTES} bytes ({len(raw)})")
    if "\0" in name:
        raise InvalidName("account name contains a NUL byte")
    if name.startswith("-"):
        raise InvalidName("account name starts with '-' (it would read as an option)")
    for ch in name:
        if ord(ch) < 32 or ord(ch) == 127:
            raise InvalidName(f"account name contains a control character (0x{ord(ch):02x})")
        if ch.isspace():
            raise InvalidName("account name contains whitespace")
        if ch in "/:":
            raise InvalidName(f"account name contains {ch!r}")
        if ord(ch) > 127:
            raise InvalidName(f"account name contains a non-ASCII character (U+{ord(ch):04X})")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"account name {name!r} is not of the form NAME, NAME@DOMAIN or DOMAIN\\NAME",
            hint="allowed: letters, digits, '.', '_', '-', one '@' or '\\', a trailing '$'",
        )
    return name


# Frozen value classes (agent.values), not dataclasses: `check` and `resolve` import this module.


class Account(Frozen):
    """A validated session target, resolved once (the spawn path does no further lookups)."""

    __slots__ = ("gid", "groups", "home", "name", "shell", "source", "uid")
    name: str
    uid: int
    gid: int
    home: str
    shell: str  # the shell the session runs (FALLBACK_SHELL when policy allows a disabled one)
    groups: tuple[int, ...]  # supplementary groups, from getgrouplist, primary gid included
    source: str  # "local" or "directory"

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, name: str, uid: int, gid: int, home: str, shell: str, groups: tuple[int, ...],
        source: str,
    ) -> None:
        self._init(name=name, uid=uid, gid=gid, home=home, shell=shell, groups=groups,
                   source=source)


class Check(Frozen):
    __slots__ = ("detail", "fatal", "name", "ok")
    name: str
    ok: bool
    detail: str
    fatal: bool

    def __init__(self, name: str, ok: bool, detail: str, fatal: bool = True) -> None:
        self._init(name=name, ok=ok, detail=detail, fatal=fatal)


class Report(Frozen):
    __slots__ = ("checks", "found", "hint", "login_shell", "message", "reason", "user")
    user: str
    checks: tuple[Check, ...]
    reason: Optional[str]
    message: Optional[str]
    hint: Optional[str]
    found: Optional[Account]  # what the lookup returned, usable or not
    login_shell: Optional[str]  # the shell in the user database, as found

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, user: str, checks: tuple[Check, ...], reason: Optional[str],
        message: Optional[str], hint: Optional[str], found: Optional[Account],
        login_shell: Optional[str] = None,
    ) -> None:
        self._init(user=user, checks=checks, reason=reason, message=message, hint=hint,
                   found=found, login_shell=login_shell)

    @property
    def usable(self) -> bool:
        return self.reason is None

    @property
    def account(self) -> Optional[Account]:
        """The account when it is a usable session target, else None."""
        return self.found if self.reason is None else None

    def error(self) -> AgentError:
        err = error_for(self.reason or "internal_error", self.message or "refused")
        err.hint = self.hint
        return err


def shell_disabled(shell: str) -> Optional[str]:
    """Why SHELL cannot run a session, or None if it can."""
    if not shell:
        return "no login shell set"
    if os.path.basename(shell) in _DISABLED_SHELLS:
        return f"login shell {shell} refuses logins"
    if not os.path.isabs(shell):
        return f"login shell {shell!r} is not an absolute path"
    if not os.path.isfile(shell):
        return f"login shell {shell} does not exist"
    if not os.access(shell, os.X_OK):
        return f"login shell {shell} is not executable"
    return None


class _Builder:
    def __init__(self, user: str) -> None:
        self.user = user
        self.checks: list[Check] = []
        self.reason: Optional[str] = None
        self.message: Optional[str] = None
        self.hint: Optional[str] = None

    def ok(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def warn(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, False, detail, fatal=False))

    def fail(self, name: str, reason: str, detail: str, hint: Optional[str] = None) -> None:
        self.checks.append(Check(name, False, detail))
        if self.reason is None:
            self.reason, self.message, self.hint = reason, detail, hint

    def report(
        self, account: Optional[Account] = None, login_shell: Optional[str] = None
    ) -> Report:
        return Report(
            self.user,
            tuple(self.checks),
            self.reason,
            self.message,
            self.hint,
            account,
            login_shell,
        )


def inspect(name: Union[str, bytes], policy: PolicyConfig, platform: Platform) -> Report:
    """Run every check on NAME as a session target and report each one."""
    shown = name if isinstance(name, str) else name.decode("utf-8", "backslashreplace")
    b = _Builder(shown)
    try:
        user = validate_name(name)
    except InvalidName as exc:
        b.fail("name", INVALID_NAME, exc.message, exc.hint)
        return b.report()
    b.ok("name", f"{user!r} is a valid account name")

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        b.fail(
            "exists",
            USER_NOT_FOUND,
            f"no account named {user!r} (or the user database did not answer)",
            hint="create the account, or check the NSS sources in /etc/nsswitch.conf",
        )
        return b.report()
    except (OSError, ValueError) as exc:
        b.fail("exists", LOOKUP_FAILED, f"user database lookup failed: {exc}")
        return b.report()
    if pw.pw_name != user:
        b.fail(
            "exists",
            NAME_MISMATCH,
            f"the user database answered {pw.pw_name!r} for {user!r}",
            hint="use the account's exact name",
        )
        return b.report()
    b.ok("exists", f"found through NSS: uid={pw.pw_uid} gid={pw.pw_gid}")

    if pw.pw_uid == 0:
        b.fail("uid", ROOT_REFUSED, "uid 0: root is never a session target, whatever its name")
    elif pw.pw_gid == 0:
        # The dropped process could not be told apart from one that kept root's group.
        b.fail("uid", ROOT_REFUSED, f"uid {pw.pw_uid} has primary group 0 (root's group)",
               hint="give the account its own primary group")
    else:
        b.ok("uid", f"{pw.pw_uid} (not root)")

    try:
        source = platform.account_source(user)
    except AgentError as exc:
        b.fail("source", LOOKUP_FAILED, exc.message)
        return b.report()
    if source == "directory" and not policy.allow_directory_users:
        b.fail(
            "source",
            DIRECTORY_USER_REFUSED,
            "directory account, and node policy refuses directory users",
            hint="set policy.allow_directory_users: true to allow them",
        )
    else:
        where = "the node's own user database" if source == "local" else "a directory service"
        b.ok("source", f"{source} ({where})")

    shell = pw.pw_shell
    why = shell_disabled(shell)
    if why is None:
        b.ok("shell", shell)
    elif policy.allow_disabled_shells:
        b.ok("shell", f"{why}; node policy allows it, sessions use {FALLBACK_SHELL}")
        shell = FALLBACK_SHELL
    else:
        b.fail(
            "shell",
            SHELL_DISABLED,
            why,
            hint="give the account a login shell, or set policy.allow_disabled_shells: true",
        )

    unsafe = None
    if user == SSM_USER:
        # ssm-user may hold sudo: a home someone else can write (or wrote) is refused.
        from agent import homedir

        unsafe = homedir.problem(pw.pw_dir, pw.pw_uid, user)
    if unsafe is not None:
        b.fail("home", SSM_USER_UNSAFE, unsafe.message, unsafe.hint)
    elif os.path.isdir(pw.pw_dir):
        b.ok("home", pw.pw_dir if user != SSM_USER else f"{pw.pw_dir} (only {user} and root "
             "can write it and the directories above it)")
    else:
        b.warn("home", f"{pw.pw_dir} is not a directory here; sessions start in /")

    try:
        groups = tuple(sorted(set(os.getgrouplist(user, pw.pw_gid))))
    except OSError as exc:
        b.fail("groups", LOOKUP_FAILED, f"group lookup failed: {exc}")
        groups = ()
    else:
        b.ok("groups", " ".join(str(g) for g in groups))

    refusal = policy_refusal(user, pw.pw_uid, policy)
    if refusal is None:
        b.ok("policy", "allowed by node policy")
    else:
        b.fail("policy", DENIED_BY_POLICY, refusal, hint="see policy: in the agent's config")

    account = Account(user, pw.pw_uid, pw.pw_gid, pw.pw_dir, shell, groups, source)
    return b.report(account, pw.pw_shell)


def policy_refusal(user: str, uid: int, policy: PolicyConfig) -> Optional[str]:
    """Why node policy refuses USER, or None. Policy can only restrict: a denied account is
    denied under every name that has its uid (an alias cannot get around the list)."""
    if user in policy.deny_users:
        return f"{user!r} is in policy.deny_users"
    for denied in policy.deny_users:
        try:
            if pwd.getpwnam(denied).pw_uid == uid:
                return f"uid {uid} is the uid of {denied!r}, which is in policy.deny_users"
        except (KeyError, ValueError):
            continue
    if policy.allow_users and user not in policy.allow_users:
        return f"{user!r} is not in policy.allow_users"
    if uid < policy.min_uid:
        return f"uid {uid} is below policy.min_uid ({policy.min_uid})"
    return None


def require(name: Union[str, bytes], policy: PolicyConfig, platform: Platform) -> Account:
    """A usable Account for NAME, or the typed error of the first failed check."""
    report = inspect(name, policy, platform)
    if report.account is None:
        raise report.error()
    return report.account
