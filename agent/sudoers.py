"""sudoers drop-ins rendered from a typed rule (never from free text); what /etc/sudoers includes.

Pure: no I/O here. Installing the bytes is agent.fsutil's job; running visudo is agent.runner's.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Callable, Optional

SUDOERS_PATH = "/etc/sudoers"
DROP_IN_DIR = "/etc/sudoers.d"
# The cloud vendor's file name, kept for compatibility with nodes it managed before.
DROP_IN_NAME = "ssm-agent-users"
DROP_IN_PATH = f"{DROP_IN_DIR}/{DROP_IN_NAME}"
DROP_IN_MODE = 0o440

# A user name sudoers reads as one plain word: no quoting or escaping is ever needed, it cannot
# start with `#` (a uid), `%` (a group), `+` (a netgroup) or `-`, and it is not an alias (those
# are upper case). Narrower than what accounts accept, on purpose.
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# `#includedir DIR` and `@includedir DIR` (sudo 1.9.1+), DIR optionally in double quotes.
_INCLUDEDIR_RE = re.compile(r'^[ \t]*[#@]includedir[ \t]+(?:"([^"]+)"|(\S+))[ \t]*$')
# How `sudo -l` lists a rule that lets the user run anything as root without a password.
_ROOT_NOPASSWD = frozenset(
    {"(ALL) NOPASSWD: ALL", "(ALL : ALL) NOPASSWD: ALL", "(root) NOPASSWD: ALL"}
)


@dataclass(frozen=True)
class Rule:
    """`USER ALL=(ALL) NOPASSWD:ALL` or `USER ALL=(ALL) ALL`: the user may run anything as anyone.

    Host, run-as list and command are always ALL; the rule says only who and whether a password
    is asked. `NOPASSWD` is always rendered with its `:ALL` (without it sudo reads `NOPASSWD` as
    an undefined command alias, visudo accepts it, and sudo asks for a password).
    """

    user: str
    nopasswd: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.user, str) or not _USER_RE.fullmatch(self.user):
            raise ValueError(
                f"sudoers rule: {self.user!r} is not a plain lower-case user name "
                "(letters, digits, '_', '-'; at most 32 characters)"
            )


def ssm_user_rule(user: str = "ssm-user") -> Rule:
    return Rule(user=user, nopasswd=True)


def render(rule: Rule) -> bytes:
    """The exact bytes: a comment naming the user, then the rule; each line ends in LF."""
    tag = "NOPASSWD:" if rule.nopasswd else ""
    text = f"# User rules for {rule.user}\n{rule.user} ALL=(ALL) {tag}ALL\n"
    return text.encode("ascii")


def includedirs(text: str, base: str = "/etc") -> tuple[str, ...]:
    """The directories a sudoers file includes with #includedir / @includedir, in order.

    A relative directory (sudo 1.9.1+) is relative to BASE, the including file's directory.
    """
    found = []
    for line in text.splitlines():
        m = _INCLUDEDIR_RE.match(line)
        if m:
            found.append(posixpath.join(base, m.group(1) or m.group(2)))
    return tuple(found)


def includes_dir(
    text: str,
    directory: str,
    *,
    base: str = "/etc",
    same: Optional[Callable[[str, str], bool]] = None,
) -> bool:
    """Whether TEXT includes DIRECTORY (trailing slashes ignored).

    SAME, when given, decides whether two paths name the same directory (e.g. by comparing
    realpaths: macOS's /etc/sudoers includes /private/etc/sudoers.d).
    """
    want = directory.rstrip("/") or "/"
    for d in includedirs(text, base):
        got = d.rstrip("/") or "/"
        if got == want:
            return True
        if same is not None and same(got, want):
            return True
    return False


def grants_root_nopasswd(sudo_list_output: str) -> bool:
    """Whether `sudo -l -U USER` output shows the user may run ALL as root without a password."""
    lines = sudo_list_output.splitlines()
    return any(" ".join(line.split()) in _ROOT_NOPASSWD for line in lines)
