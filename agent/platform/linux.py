"""Linux specifics."""

from __future__ import annotations

import posixpath
import pwd

from agent.errors import CommandFailed, LookupFailed, SsmUserFailed
from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from agent.platform import NewUser
    from agent.runner import Completed, Runner

USERADD = "/usr/sbin/useradd"
_USERADD_UID_IN_USE = 4
_USERADD_NAME_IN_USE = 9


class Linux(Frozen):
    """A frozen value (agent.values, agent.platform)."""

    __slots__ = ("name", "passwd_path", "useradd", "useradd_defaults")
    passwd_path: str
    name: str
    useradd: str
    useradd_defaults: str

    def __init__(
        self, passwd_path: str = "/etc/passwd",  # noqa: S107 - a path, not a password
        name: str = "linux", useradd: str = USERADD,
        useradd_defaults: str = "/etc/default/useradd",
    ) -> None:
        self._init(passwd_path=passwd_path, name=name, useradd=useradd,
                   useradd_defaults=useradd_defaults)

    def account_source(self, name: str) -> str:
        """'local' when NAME is in /etc/passwd (the files backend), else 'directory'."""
        prefix = name.encode() + b":"
        try:
            with open(self.passwd_path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise LookupFailed(f"cannot read {self.passwd_path}: {exc.strerror}") from exc
        return "local" if data.startswith(prefix) or b"\n" + prefix in data else "directory"

    def default_home(self, name: str) -> str:
        """BASE/NAME, BASE being HOME= in useradd's defaults file (/home when unset), as
        `useradd` without --home-dir or --base-dir chooses."""
        base = "/home"
        try:
            with open(self.useradd_defaults, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            raise SsmUserFailed(f"cannot read {self.useradd_defaults}: {exc.strerror}") from exc
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() == "HOME" and value.strip().strip('"'):
                base = value.strip().strip('"')
        return posixpath.join(base, name)

    def create_user(self, spec: NewUser, runner: Runner) -> bool:
        """`useradd` a local account with its own group and a home it owns (-m).

        False (nothing changed) when an account of that name already exists.
        """
        argv = [self.useradd, "--create-home", "--user-group", "--shell", spec.shell]
        if spec.system:
            argv.append("--system")
        if spec.uid is not None:
            argv += ["--uid", str(spec.uid)]
        if spec.home is not None:
            argv += ["--home-dir", spec.home]
        argv += ["--", spec.name]
        try:
            done = runner(argv, check=False, timeout=60.0)
        except CommandFailed as exc:
            raise SsmUserFailed(f"cannot create {spec.name}: {exc.message}", hint=exc.hint) from exc
        if done.returncode == 0:
            return True
        exists = _exists(spec.name)
        if done.returncode == _USERADD_NAME_IN_USE and exists:
            return False
        why = _last_line(done)
        if exists:
            raise SsmUserFailed(
                f"useradd added {spec.name} but then failed (exit {done.returncode}): {why}",
                hint=f"fix the account or remove it (userdel -r -- {spec.name}), then run "
                "`runas-agent ssm-user ensure` again",
            )
        if done.returncode == _USERADD_UID_IN_USE:
            raise SsmUserFailed(
                f"cannot create {spec.name}: uid {spec.uid} is already in use ({why})",
                hint="choose another ssm_user.uid in the config, or leave it unset",
            )
        raise SsmUserFailed(f"cannot create {spec.name}: useradd exited {done.returncode}: {why}")


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _last_line(done: Completed) -> str:
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no message"
