"""The platform seam: what differs between Linux and macOS lives behind this one interface."""

from __future__ import annotations

import sys

from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Optional, Protocol

    from agent.runner import Runner

    class Platform(Protocol):
        @property
        def name(self) -> str: ...

        def account_source(self, name: str) -> str:
            """'local' when the account is in the node's own user database, else 'directory'."""
            ...

        def default_home(self, name: str) -> str:
            """The home create_user gives NAME when the spec names none."""
            ...

        def create_user(self, spec: NewUser, runner: Runner) -> bool:
            """Create a local account; False (nothing changed) when the name is already taken.

            Raises SsmUserFailed when the account could not be created.
            """
            ...


# Frozen value classes (agent.values), not dataclasses: `check` and `resolve` import this
# package and the platform's module.


class NewUser(Frozen):
    """A local account to create. None means the platform's default (next free uid, /home/NAME
    or /Users/NAME)."""

    __slots__ = ("home", "name", "shell", "system", "uid")
    name: str
    shell: str
    uid: Optional[int]
    system: bool
    home: Optional[str]

    def __init__(self, name: str, shell: str, uid: Optional[int] = None, system: bool = False,
                 home: Optional[str] = None) -> None:
        self._init(name=name, shell=shell, uid=uid, system=system, home=home)


def current(runner: Optional[Runner] = None, sys_platform: str = sys.platform) -> Platform:
    """The platform of this host (imports only the module it needs)."""
    if sys_platform == "darwin":
        from agent.platform.darwin import Darwin

        if runner is None:
            from agent.runner import run

            return Darwin(run)
        return Darwin(runner)
    from agent.platform.linux import Linux

    return Linux()
