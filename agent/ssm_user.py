"""ssm-user: the account sessions run as when Run As is off, and its sudoers drop-in.

`ensure()` creates the account once, under an exclusive lock, so any number of first sessions
(separate processes) at the same moment create it exactly once and all succeed. An existing
account is never modified. The drop-in is written only for an account the agent itself created,
and only when `ssm_user.sudoers` is on; an admin's own ssm-user keeps whatever rights it has.

Nothing is created, granted or run for an ssm-user whose home the agent cannot trust (see
agent.homedir): a home path that exists before the account does (say, one that `userdel`
without -r left and a later account now owns), a symlink, another user's directory, or one
that others can write is refused with `ssm_user_unsafe`, and the drop-in is left alone.

A small state file records that the agent created the account and where the drop-in stands
(`pending` until it is written, then `written`; `revoked` after `revoke_sudo`; `off` when the
config said no). If writing the drop-in fails (full disk, visudo refusing) or the process is
killed in between, the next `ensure()` finishes the job for the account the agent created.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import time
from dataclasses import dataclass

from agent import fsutil, homedir, sudoers
from agent.errors import (
    SSM_USER_UNSAFE,
    AgentError,
    CommandFailed,
    SsmUserFailed,
    SsmUserUnsafe,
)
from agent.runner import run, which

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from agent.accounts import Account
    from agent.audit import AuditLog
    from agent.config import Config
    from agent.platform import NewUser, Platform
    from agent.runner import Runner

NAME = "ssm-user"
SUDOERS_PENDING = "pending"
SUDOERS_WRITTEN = "written"
SUDOERS_REVOKED = "revoked"
SUDOERS_OFF = "off"
LOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class Paths:
    """Where ssm-user's lock, state and drop-in live; the visudo/sudo seams (None: look them up
    in the system directories; absent tools mean no validation / no sudo check)."""

    lock: str
    state: str
    drop_in: str = sudoers.DROP_IN_PATH
    sudoers: str = sudoers.SUDOERS_PATH
    visudo: Optional[str] = None
    sudo: Optional[str] = None

    @classmethod
    def for_platform(cls, platform_name: str) -> Paths:
        # Beside the state file, in the agent's private directory (not in the socket's
        # directory, whose mode the transport's group depends on).
        if platform_name == "darwin":
            return cls(lock="/var/db/runas-agent/ssm-user.lock",
                       state="/var/db/runas-agent/ssm-user.created")
        return cls(lock="/var/lib/runas-agent/ssm-user.lock",
                   state="/var/lib/runas-agent/ssm-user.created")

    def visudo_path(self) -> Optional[str]:
        return self.visudo if self.visudo is not None else which("visudo")

    def sudo_path(self) -> Optional[str]:
        return self.sudo if self.sudo is not None else which("sudo")


@dataclass(frozen=True)
class EnsureResult:
    created: bool  # this call created the account
    account: Account
    sudoers_written: bool  # this call wrote (or repaired) the drop-in


def ensure(
    cfg: Config,
    platform: Platform,
    *,
    runner: Runner = run,
    audit: Optional[AuditLog] = None,
    paths: Optional[Paths] = None,
    before_rename: Optional[Callable[[str], None]] = None,
    known: Optional[Account] = None,
) -> EnsureResult:
    """Make sure ssm-user exists (creating it once, under the lock) and return it, validated.

    Raises SsmUserFailed (what happened and what to do), SsmUserUnsafe when its home cannot be
    trusted (agent.homedir: then no drop-in is written, and nothing is created when the home
    path exists before the account does), AuditFailed when a record cannot be made durable, or
    the account check's typed error when the account exists but cannot be a session target
    (e.g. an admin's ssm-user with a disabled shell).
    """
    from agent import accounts
    from agent.platform import NewUser

    paths = paths if paths is not None else Paths.for_platform(platform.name)
    spec = NewUser(NAME, cfg.ssm_user.shell, cfg.ssm_user.uid, cfg.ssm_user.system,
                   cfg.ssm_user.home)
    _require_root()
    # Fast path (every Run As off session comes here): a shared look, never waiting, that
    # finds the account there and no drop-in pending. Anything else, or a creator holding the
    # lock right now, takes the exclusive path below.
    try:
        look = _lock(paths.lock, 0, shared=True)
    except BlockingIOError:
        look = None
    if look is not None:
        try:
            pw = _lookup(NAME)
            # The home: one lstat here; anything short of a clean directory of the account's
            # (or root's) takes the exclusive path, which checks it all and refuses.
            settled = pw is not None and homedir.quick(pw.pw_dir, pw.pw_uid) and not (
                cfg.ssm_user.sudoers
                and _created_state(paths.state, pw.pw_uid) == SUDOERS_PENDING)
        finally:
            os.close(look)
        if settled:
            # KNOWN: the caller validated the account already (the session's resolution);
            # it is the same account if the uid still matches.
            account = (known if known is not None and pw is not None
                       and known.uid == pw.pw_uid
                       else accounts.require(NAME, cfg.policy, platform))
            return EnsureResult(created=False, account=account, sudoers_written=False)
    created = False
    written = False
    lock_fd = _lock(paths.lock)
    try:
        pw = _lookup(NAME)
        if pw is None:
            _check_spec(spec)
            # Before useradd: `useradd -m` over an existing directory leaves its owner and its
            # contents (a leftover home, now another account's) as they are.
            home = spec.home if spec.home is not None else platform.default_home(NAME)
            _require_trusted(home, None)
            if platform.create_user(spec, runner):
                pw = _lookup(NAME)
                if pw is None:
                    raise SsmUserFailed(
                        f"{NAME} was created but the user database does not return it",
                        hint="check /etc/nsswitch.conf and flush any cache (nscd, sssd)",
                    )
                created = True
                state = SUDOERS_PENDING if cfg.ssm_user.sudoers else SUDOERS_OFF
                _write_state(paths.state, pw.pw_uid, state)
                if audit is not None:
                    audit.record("ssm_user.created", user=NAME, uid=pw.pw_uid)
            else:
                pw = _lookup(NAME)
                if pw is None:
                    raise SsmUserFailed(f"{NAME} was reported to exist but cannot be found")
        # Whatever the state file says (even `written`, for an earlier account of that name):
        # nothing is granted to, and no session runs as, an ssm-user whose home is not trusted.
        _require_trusted(pw.pw_dir, pw.pw_uid)
        state_now = _created_state(paths.state, pw.pw_uid)
        if cfg.ssm_user.sudoers and state_now == SUDOERS_PENDING:
            written = _install_drop_in(paths, runner, before_rename)
            _write_state(paths.state, pw.pw_uid, SUDOERS_WRITTEN)
            if audit is not None:
                audit.record("sudoers.written", user=NAME, uid=pw.pw_uid, path=paths.drop_in)
    finally:
        os.close(lock_fd)
    account = accounts.require(NAME, cfg.policy, platform)
    return EnsureResult(created=created, account=account, sudoers_written=written)


def revoke_sudo(
    cfg: Config,
    platform: Platform,
    *,
    runner: Runner = run,
    audit: Optional[AuditLog] = None,
    paths: Optional[Paths] = None,
) -> bool:
    """Remove the drop-in (atomically) and leave the account. True if a drop-in was removed."""
    paths = paths if paths is not None else Paths.for_platform(platform.name)
    _require_root()
    lock_fd = _lock(paths.lock)
    try:
        try:
            removed = fsutil.remove(paths.drop_in)
        except AgentError as exc:
            raise SsmUserFailed(exc.message, hint=exc.hint) from exc
        pw = _lookup(NAME)
        if pw is not None and _created_state(paths.state, pw.pw_uid) is not None:
            _write_state(paths.state, pw.pw_uid, SUDOERS_REVOKED)
        if removed and audit is not None:
            audit.record("sudoers.removed", user=NAME, path=paths.drop_in)
        return removed
    finally:
        os.close(lock_fd)


def status(
    cfg: Config, platform: Platform, runner: Runner = run, *, paths: Optional[Paths] = None
) -> dict[str, Any]:
    """What the node has: the account, whether the agent made it, the drop-in, what sudo says.

    Read-only. Values that cannot be known (no sudo, not root) are None. `problems` lists what
    an admin should fix; it is empty when all is well.
    """
    from agent import accounts

    paths = paths if paths is not None else Paths.for_platform(platform.name)
    problems: list[str] = []
    pw = _lookup(NAME)
    out: dict[str, Any] = {
        "user": NAME, "exists": pw is not None, "uid": None, "gid": None, "shell": None,
        "home": None, "home_owned": None, "usable": None, "reason": None,
        "home_trusted": None, "created_by_agent": None, "sudoers_state": None,
    }
    created_uid = None
    if pw is None:
        problems.append(f"{NAME} does not exist: the first session with Run As off creates it, "
                        "or run `runas-agent ssm-user ensure`")
        # The verdict `ensure` would give before creating it.
        home = cfg.ssm_user.home if cfg.ssm_user.home is not None else platform.default_home(NAME)
        unsafe = homedir.problem(home, None, NAME)
        out.update(home=home, home_trusted=unsafe is None)
        if unsafe is not None:
            out["reason"] = SSM_USER_UNSAFE
            problems.append(f"creating {NAME} is refused: {SSM_USER_UNSAFE}: {unsafe.message} "
                            f"(fix: {unsafe.hint})")
    else:
        out.update(uid=pw.pw_uid, gid=pw.pw_gid, shell=pw.pw_shell, home=pw.pw_dir)
        try:
            home_st = os.stat(pw.pw_dir)
            out["home_owned"] = stat.S_ISDIR(home_st.st_mode) and home_st.st_uid == pw.pw_uid
        except OSError:
            out["home_owned"] = False
        unsafe = homedir.problem(pw.pw_dir, pw.pw_uid, NAME)
        out["home_trusted"] = unsafe is None
        if unsafe is not None:
            problems.append(f"{NAME} cannot be a session target: {SSM_USER_UNSAFE}: "
                            f"{unsafe.message} (fix: {unsafe.hint})")
        elif not out["home_owned"]:
            problems.append(f"home {pw.pw_dir} is missing or not owned by {NAME}")
        report = accounts.inspect(NAME, cfg.policy, platform)
        out["usable"] = report.usable
        out["reason"] = report.reason
        if not report.usable and report.reason != SSM_USER_UNSAFE:
            problems.append(f"{NAME} cannot be a session target: {report.reason}: "
                            f"{report.message}")
        try:
            created = _read_state(paths.state)
        except OSError:
            created = None  # not readable (not root): unknown
        else:
            owned = created is not None and created.get("uid") == pw.pw_uid
            out["created_by_agent"] = owned
            out["sudoers_state"] = created.get("sudoers") if created and owned else None
            if created is not None and not owned and isinstance(created.get("uid"), int):
                created_uid = created["uid"]

    drop_in = _drop_in_status(paths, runner)
    out["sudoers"] = drop_in
    out["includedir"] = _includedir(paths)
    out["sudo_ok"] = _sudo_ok(paths, runner) if pw is not None else None
    if drop_in["present"]:
        if drop_in["mode"] != "0440":
            problems.append(f"{paths.drop_in} has mode {drop_in['mode']}, expected 0440")
        if drop_in["owner"] != "root" or drop_in["gid"] != 0:
            problems.append(f"{paths.drop_in} is owned by {drop_in['owner']}:{drop_in['group']}, "
                            "expected root and group 0")
        if drop_in["content_ok"] is False:
            problems.append(f"{paths.drop_in} does not hold the expected rule")
        if drop_in["valid"] is False:
            problems.append(f"visudo rejects {paths.drop_in}: {drop_in['error']}")
        if out["includedir"] is False:
            problems.append(f"{paths.sudoers} does not include {os.path.dirname(paths.drop_in)}: "
                            "the drop-in has no effect (add `@includedir "
                            f"{os.path.dirname(paths.drop_in)}` with visudo)")
        if out["sudo_ok"] is False:
            problems.append(f"sudo does not grant {NAME} root without a password")
        if created_uid is not None and pw is not None:
            problems.append(
                f"{paths.drop_in} was written for the {NAME} the agent created (uid "
                f"{created_uid}), which is gone; it now grants the {NAME} of uid {pw.pw_uid}, "
                "which the agent did not create (check that account, then keep the drop-in "
                "or run `runas-agent ssm-user revoke-sudo`)")
    out["problems"] = problems
    return out


# -- the lock ------------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SsmUserFailed(f"creating or changing {NAME} needs root", hint="run it as root")


def _lock(path: str, timeout: float = LOCK_TIMEOUT, *, shared: bool = False) -> int:
    """Take the ssm-user lock (an flock, released when the fd closes or we die): exclusive to
    create or change, shared to look (timeout 0: raise BlockingIOError if it is held)."""
    import fcntl

    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    _private_dir(os.path.dirname(path))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SsmUserFailed(f"cannot open the lock file {path}: {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if timeout == 0:
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SsmUserFailed(
                    f"another process has held {path} for more than {timeout:g}s",
                    hint="look for a stuck runas-agent or useradd process",
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except OSError as exc:
            os.close(fd)
            raise SsmUserFailed(f"cannot lock {path}: {exc.strerror}") from exc


def _private_dir(path: str) -> None:
    """PATH exists as a directory owned by us and writable by nobody else (0700 when we make it).

    An existing directory keeps its mode (it may be shared with the daemon's socket).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SsmUserFailed(f"cannot create {path}: {exc.strerror}") from exc
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SsmUserFailed(
            f"{path} is not a directory owned by root and writable only by it",
            hint=f"remove {path}; the agent recreates it",
        )


# -- the account and the state file -------------------------------------------------------


def _require_trusted(home: str, uid: Optional[int]) -> None:
    """Raise SsmUserUnsafe when HOME cannot be trusted as ssm-user's (UID None: before it is
    created, so HOME must not exist yet)."""
    found = homedir.problem(home, uid, NAME)
    if found is not None:
        raise SsmUserUnsafe(f"{NAME} is refused: {found.message}", hint=found.hint)


def _lookup(name: str) -> Optional[pwd.struct_passwd]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw if pw.pw_name == name else None


def _check_spec(spec: NewUser) -> None:
    from agent.accounts import shell_disabled

    if spec.uid is not None and spec.uid <= 0:
        raise SsmUserFailed(f"ssm_user.uid {spec.uid}: {NAME} must not be root",
                            hint="choose a positive uid or leave it unset")
    why = shell_disabled(spec.shell)
    if why is not None:
        raise SsmUserFailed(f"ssm_user.shell: {why}", hint="set ssm_user.shell to a login shell")


def _read_state(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None  # unreadable garbage: treated as "not created by the agent" (fail closed)
    return data if isinstance(data, dict) else None


def _created_state(path: str, uid: int) -> Optional[str]:
    """The drop-in state when the agent created the account that now has UID, else None."""
    try:
        data = _read_state(path)
    except OSError as exc:
        raise SsmUserFailed(f"cannot read {path}: {exc.strerror}") from exc
    if data is None or data.get("user") != NAME or data.get("uid") != uid:
        return None
    value = data.get("sudoers")
    return value if isinstance(value, str) else None


def _write_state(path: str, uid: int, sudoers_state: str) -> None:
    try:
        old = _read_state(path) or {}
    except OSError:
        old = {}
    created = old.get("created") if old.get("uid") == uid else None
    record = {
        "user": NAME,
        "uid": uid,
        "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sudoers": sudoers_state,
    }
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fsutil.install(path, data, mode=0o600, uid=0, gid=0)
    except OSError as exc:
        raise SsmUserFailed(f"cannot create {directory}: {exc.strerror}") from exc
    except AgentError as exc:
        raise SsmUserFailed(f"cannot record that the agent created {NAME}: {exc.message}",
                            hint=exc.hint) from exc


# -- the drop-in ----------------------------------------------------------------------------


def _install_drop_in(
    paths: Paths, runner: Runner, before_rename: Optional[Callable[[str], None]]
) -> bool:
    data = sudoers.render(sudoers.ssm_user_rule(NAME))
    visudo = paths.visudo_path()
    validate = visudo_validator(visudo, runner) if visudo is not None else None
    try:
        done = fsutil.install(paths.drop_in, data, mode=sudoers.DROP_IN_MODE, uid=0, gid=0,
                              validate=validate, before_rename=before_rename)
    except AgentError as exc:
        raise SsmUserFailed(
            f"{NAME} exists, but its sudoers drop-in was not written: {exc.message}",
            hint=(exc.hint + "; " if exc.hint else "")
            + "then run `runas-agent ssm-user ensure` to finish",
        ) from exc
    return done.changed


def visudo_validator(visudo: str, runner: Runner) -> Callable[[str], None]:
    def validate(path: str) -> None:
        # -s (strict): an undefined alias is an error; that is how `NOPASSWD` without `:ALL`
        # would read, and plain `visudo -c` accepts it.
        ok, why = _visudo_check(visudo, runner, path, strict=True)
        if not ok:
            raise SsmUserFailed(f"visudo: {why}", hint="this is a bug in the agent; report it")

    return validate


def _visudo_check(visudo: str, runner: Runner, path: str, *, strict: bool) -> tuple[bool, str]:
    argv = [visudo, "-c", *(["-s"] if strict else []), "-f", path]
    try:
        done = runner(argv, check=False, timeout=30.0)
    except CommandFailed as exc:
        return False, exc.message
    text = (done.stderr + done.stdout).decode("utf-8", "replace").strip()
    return done.returncode == 0, " ".join(text.split()) or f"exit {done.returncode}"


def _drop_in_status(paths: Paths, runner: Runner) -> dict[str, Any]:
    import grp

    path = paths.drop_in
    out: dict[str, Any] = {
        "path": path, "present": False, "mode": None, "owner": None, "group": None, "uid": None,
        "gid": None, "valid": None, "content_ok": None, "error": None, "stale_temp_files": [],
    }
    directory, name = os.path.split(path)
    try:
        out["stale_temp_files"] = sorted(
            os.path.join(directory, e) for e in os.listdir(directory)
            if fsutil.is_temp_name(e, name)
        )
    except OSError:
        pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return out
    except OSError as exc:
        out["error"] = exc.strerror
        return out
    out.update(present=True, mode=f"{stat.S_IMODE(st.st_mode):04o}", uid=st.st_uid,
               gid=st.st_gid)
    try:
        out["owner"] = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        out["owner"] = str(st.st_uid)
    try:
        out["group"] = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        out["group"] = str(st.st_gid)
    if not stat.S_ISREG(st.st_mode):
        out.update(content_ok=False, valid=False, error="not a regular file")
        return out
    try:
        with open(path, "rb") as fh:
            out["content_ok"] = fh.read() == sudoers.render(sudoers.ssm_user_rule(NAME))
    except OSError as exc:
        out["error"] = exc.strerror  # e.g. not root: content unknown
    visudo = paths.visudo_path()
    if visudo is not None and os.geteuid() == 0:
        # Not strict: an admin's drop-in may use aliases defined in /etc/sudoers.
        ok, why = _visudo_check(visudo, runner, path, strict=False)
        out["valid"] = ok
        if not ok:
            out["error"] = why
    return out


def _includedir(paths: Paths) -> Optional[bool]:
    try:
        with open(paths.sudoers, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None

    def same(a: str, b: str) -> bool:
        return os.path.realpath(a) == os.path.realpath(b)

    return sudoers.includes_dir(text, os.path.dirname(paths.drop_in),
                                base=os.path.dirname(paths.sudoers), same=same)


def _sudo_ok(paths: Paths, runner: Runner) -> Optional[bool]:
    sudo = paths.sudo_path()
    if sudo is None or os.geteuid() != 0:
        return None
    try:
        done = runner([sudo, "-n", "-l", "-U", NAME], check=False, timeout=30.0)
    except CommandFailed:
        return False
    if done.returncode != 0:
        return False
    return sudoers.grants_root_nopasswd(done.stdout.decode("utf-8", "replace"))


def format_status(out: dict[str, Any]) -> str:
    """`status()` as text for people."""

    def yes(value: Optional[bool], unknown: str = "unknown") -> str:
        return unknown if value is None else ("yes" if value else "no")

    lines = []
    if out["exists"]:
        lines.append(f"{out['user']}: exists (uid {out['uid']}, shell {out['shell']}, "
                     f"home {out['home']})")
        created = yes(out["created_by_agent"])
        if out["sudoers_state"]:
            created += f" (drop-in {out['sudoers_state']})"
        lines.append(f"  created by the agent: {created}")
        lines.append(f"  usable as a session target: {yes(out['usable'])}"
                     + (f" ({out['reason']})" if out["reason"] else ""))
        lines.append(f"  home can be trusted: {yes(out['home_trusted'])}")
    else:
        lines.append(f"{out['user']}: does not exist")
        if out["home_trusted"] is False:
            lines.append(f"  its home {out['home']} cannot be trusted: creating it is refused "
                         f"({out['reason']})")
    d = out["sudoers"]
    if d["present"]:
        valid = yes(d["valid"], "not checked (no visudo, or not root)")
        content = yes(d["content_ok"], "unknown")
        lines.append(f"sudoers drop-in {d['path']}: present, mode {d['mode']}, "
                     f"{d['owner']}:{d['group']}")
        lines.append(f"  valid (visudo -c): {valid}; expected content: {content}")
    else:
        lines.append(f"sudoers drop-in {d['path']}: not present")
    for path in d["stale_temp_files"]:
        lines.append(f"  leftover temp file (ignored by sudo, removed by the next write): {path}")
    lines.append("sudo grants it root without a password: "
                 + yes(out["sudo_ok"], "unknown (no sudo, no account, or not root)"))
    lines.append("/etc/sudoers includes /etc/sudoers.d: "
                 + yes(out["includedir"], "unknown (cannot read /etc/sudoers)"))
    if out["problems"]:
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in out["problems"])
    else:
        lines.append("no problems")
    return "\n".join(lines) + "\n"
