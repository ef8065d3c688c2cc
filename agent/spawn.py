"""Start a session's process under its account: fork, drop privileges, verify, exec.

The parent (a single-threaded root process) prepares everything before fork: argv, the
environment as bytes, the group list, the messages. The child then makes system calls on those
values only, in this order (design §5):

 1. every signal disposition back to default, the signal mask cleared;
 2. a new session; with a terminal, the slave becomes the controlling terminal;
 3. stdin/stdout/stderr onto 0/1/2;
 4. what the PAM session stage set for the session (the login uid pam_loginuid set, else the
    account's uid where the login uid is unset, then the resource limits, umask and nice
    value; the stage ran in a process of its own, agent.pam), still as root: setting the login
    uid, raising a hard limit or the priority needs it;
 5. supplementary groups, then gid, then uid (real, effective, saved);
 6. verification: the ids and groups are exactly the target's and setuid(0)/setgid(0) fail;
 7. a new session keyring, joined as the account so that it owns it (agent.keyring): the
    daemon's keyring, and every other session's, out of reach;
 8. every fd above 2 closed (the report pipe is close-on-exec);
 9. chdir(home) as the user (root cannot enter a root-squashed NFS home), else a warning and /;
10. execve of the account's shell: a login shell (argv[0] "-bash"), or `shell -c COMMAND`.

A failure before exec reaches the parent through a close-on-exec pipe (EOF with no data: the
exec happened) and is raised as SpawnFailed naming the stage and errno; the parent reaps that
child. The child ends in execve or os._exit, whatever happens.

The child may also be forked ahead (prefork(), in a spare supervisor's idle time): it then waits
with every signal blocked, holding only stdio and one end of a socket pair, until spawn() sends
it the prepared plan and the stdio descriptors; the steps above then run in the same order, the
socket pair serving as the report pipe and the gate.
"""

from __future__ import annotations

import fcntl
import gc
import marshal
import os
import select
import signal
import socket
import sys
import termios
import time
from dataclasses import dataclass

from agent import keyring, proclimits
from agent.environ import check_name, forbidden
from agent.errors import BadRequest, InternalError, RootRefused, SpawnFailed
from agent.proclimits import ProcessLimits

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Callable, NoReturn, Optional

    from agent.accounts import Account

SPAWN_TIMEOUT = 30.0  # seconds for the child to reach exec (a hung NFS home, say)
CHDIR_WARNING = b"could not chdir to HOME, starting in /"
_EXIT_FAILED = 127
_REPORT_MAX = 1024
_AT_GATE = b"\x06"  # the child's word, with a gate, that it is ready to exec
_GO = b"g"
_UNSET_LOGINUID = b"4294967295"  # (uid_t)-1 in /proc/self/loginuid


@dataclass(frozen=True)
class SpawnPlan:
    account: Account
    command: Optional[str]  # None: an interactive login shell
    env: Mapping[str, str]  # the complete environment (agent.environ.build_env)
    stdin: int
    stdout: int
    stderr: int
    tty: bool  # stdin is a PTY slave, to become the controlling terminal
    limits: Optional[ProcessLimits] = None  # what PAM's session stage set (pam.Opened.limits)
    loginuid: Optional[int] = None  # the login uid PAM's session stage set (pam.Opened.loginuid)


class StageFailed(SpawnFailed):
    """A step of the child failed before exec (reason spawn_failed), with its stage and errno."""

    def __init__(self, stage: str, errno: int, detail: str, *, who: str = "") -> None:
        where = f"starting the session as {who}: " if who else ""
        cause = f"[Errno {errno}] {detail}" if errno else detail
        super().__init__(f"{where}{stage} failed: {cause}")
        self.stage = stage
        self.errno = errno
        self.detail = detail


@dataclass(frozen=True)
class Syscalls:
    """The identity system calls the child makes, as one seam: macOS has no set/getres*id, and
    tests inject fakes to show that a failed or lying call ends in a refusal."""

    setgroups: Callable[[Sequence[int]], None]
    setresgid: Optional[Callable[[int, int, int], None]]
    setresuid: Optional[Callable[[int, int, int], None]]
    getresgid: Optional[Callable[[], tuple[int, int, int]]]
    getresuid: Optional[Callable[[], tuple[int, int, int]]]
    initgroups: Callable[[str, int], None]
    setgid: Callable[[int], None]
    setuid: Callable[[int], None]
    getgid: Callable[[], int]
    getegid: Callable[[], int]
    getuid: Callable[[], int]
    geteuid: Callable[[], int]
    getgroups: Callable[[], list[int]]
    login_tty: Optional[Callable[[int], None]]  # Python 3.11+
    keyctl: Optional[Callable[[int, int, int], int]]  # None: no kernel keyrings (macOS)
    # macOS: the kernel's own group list (os.getgroups there is getgrouplist() of the login
    # name and never reads the credential), and setlogin(2). None elsewhere.
    kernel_groups: Optional[Callable[[], list[int]]] = None
    setlogin: Optional[Callable[[str], None]] = None

    @classmethod
    def real(cls, sys_platform: str = sys.platform) -> Syscalls:
        """The process's own calls. Raises SpawnFailed where the session keyring call is
        unknown (a Linux machine without a known keyctl number)."""
        kernel_groups = setlogin = None
        if sys_platform == "darwin":  # resolved here, in the parent, never after the fork
            kernel_groups, setlogin = _darwin_credential_calls()
        return cls(
            setgroups=os.setgroups,
            setresgid=getattr(os, "setresgid", None),
            setresuid=getattr(os, "setresuid", None),
            getresgid=getattr(os, "getresgid", None),
            getresuid=getattr(os, "getresuid", None),
            initgroups=os.initgroups,
            setgid=os.setgid,
            setuid=os.setuid,
            getgid=os.getgid,
            getegid=os.getegid,
            getuid=os.getuid,
            geteuid=os.geteuid,
            getgroups=os.getgroups,
            login_tty=getattr(os, "login_tty", None),
            keyctl=keyring.load(sys_platform),
            kernel_groups=kernel_groups,
            setlogin=setlogin,
        )


DARWIN_NGROUPS = 16  # the kernel's limit (NGROUPS in <sys/param.h>)


def _darwin_credential_calls() -> tuple[Callable[[], list[int]], Callable[[str], None]]:
    """libSystem's plain `getgroups` (the system call; the $DARWIN_EXTSN variant that Python
    links asks the directory instead) and setlogin, through ctypes."""
    import ctypes

    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    getgroups, setlogin = libc.getgroups, libc.setlogin
    getgroups.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]
    getgroups.restype = ctypes.c_int
    setlogin.argtypes = [ctypes.c_char_p]
    setlogin.restype = ctypes.c_int

    def kernel_groups() -> list[int]:
        buf = (ctypes.c_uint32 * DARWIN_NGROUPS)()
        n = getgroups(DARWIN_NGROUPS, buf)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return [int(g) for g in buf[:n]]

    def set_login(name: str) -> None:
        if setlogin(os.fsencode(name)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return kernel_groups, set_login


@dataclass(frozen=True)
class Identity:
    """Who the child becomes. `groups` is the setgroups list (sorted, primary gid included)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    darwin: bool

    @classmethod
    def of(cls, account: Account, sys_platform: str = sys.platform) -> Identity:
        if account.uid == 0:
            raise RootRefused(f"{account.name}: uid 0 is never a session target")
        if account.gid == 0:
            raise SpawnFailed(f"{account.name}: primary group 0: the drop from root could not "
                              "be verified (setgid(0) would succeed)")
        groups = tuple(sorted(set(account.groups) | {account.gid}))
        if any(not isinstance(g, int) or g < 0 for g in (account.uid, *groups)):
            raise SpawnFailed(f"{account.name}: invalid uid or group list")
        return cls(account.name, account.uid, account.gid, groups, sys_platform == "darwin")


def become(ops: Syscalls, ident: Identity) -> None:
    """Drop from root to IDENT: supplementary groups first, then the gid, then the uid.

    Linux: setgroups, setresgid, setresuid (real, effective and saved). macOS: initgroups
    (primary gid first, the 16-group kernel list, directory membership), then setgid and setuid,
    which as root set the real, effective and saved ids. Raises StageFailed."""
    if ident.darwin:
        if ops.setlogin is not None:
            # After setsid, while still root: the session's login name (getlogin, logname) is
            # the account's, not the daemon's, as sshd does it.
            _step("setlogin", ops.setlogin, ident.name)
        _step("initgroups", ops.initgroups, ident.name, ident.gid)
        _step("setgid", ops.setgid, ident.gid)
        _step("setuid", ops.setuid, ident.uid)
        return
    if ops.setresgid is None or ops.setresuid is None:
        raise StageFailed("setresgid", 0, "setresgid/setresuid unavailable on this platform")
    _step("setgroups", ops.setgroups, ident.groups)
    _step("setresgid", ops.setresgid, ident.gid, ident.gid, ident.gid)
    _step("setresuid", ops.setresuid, ident.uid, ident.uid, ident.uid)


def verify(ops: Syscalls, ident: Identity) -> None:
    """Raise StageFailed("verify") unless the process is exactly IDENT and cannot get root back:
    all uids and gids are the target's, the groups are the expected set, setuid(0) and
    setgid(0) fail with EPERM."""
    if ops.getresuid is not None and ops.getresgid is not None:
        uids, gids = tuple(ops.getresuid()), tuple(ops.getresgid())
    else:  # macOS: no saved ids to read; setuid(0) failing below proves the saved uid too
        uids = (ops.getuid(), ops.geteuid())
        gids = (ops.getgid(), ops.getegid())
    if uids != (ident.uid,) * len(uids):
        raise StageFailed("verify", 0, f"uids are {uids}, expected {ident.uid}")
    if gids != (ident.gid,) * len(gids):
        raise StageFailed("verify", 0, f"gids are {gids}, expected {ident.gid}")
    if ident.darwin and ops.kernel_groups is not None:
        _verify_darwin_groups(ops.kernel_groups(), ident)
    else:
        groups = sorted(set(ops.getgroups()))
        if groups != list(ident.groups):
            raise StageFailed("verify", 0, f"groups are {groups}, expected {list(ident.groups)}")
    for call, fn in (("setgid", ops.setgid), ("setuid", ops.setuid)):
        try:
            fn(0)
        except PermissionError:
            continue
        except OSError as exc:
            raise StageFailed(
                "verify", exc.errno or 0, f"{call}(0) failed, but not with EPERM"
            ) from None
        raise StageFailed("verify", 0, f"{call}(0) succeeded: root could be regained")


def session_keyring(ops: Syscalls, ident: Identity) -> None:
    """Join a new session keyring, owned by the account (call after the drop), with the
    account's user keyring linked into it: what pam_keyinit does, PAM or not. Raises
    StageFailed("session keyring") when that fails while keyrings are within reach (an account
    at its key quota, kernel.keys.maxkeys, is refused: EDQUOT); nothing is done on macOS, or
    where the kernel has no keyrings or keyctl is filtered for this process (agent.keyring)."""
    if ident.darwin:
        return
    if ops.keyctl is None:
        raise StageFailed("session keyring", 0, "no keyctl call on this platform")
    _step("session keyring", keyring.join_fresh_session_keyring, ops.keyctl)


def _verify_darwin_groups(kernel: list[int], ident: Identity) -> None:
    """The kernel's list after initgroups: the effective gid first, then at most 16 of the
    expected groups in all."""
    want = min(len(ident.groups), DARWIN_NGROUPS)
    if (not kernel or kernel[0] != ident.gid or len(set(kernel)) != want
            or not set(kernel) <= set(ident.groups)):
        raise StageFailed("verify", 0, f"the kernel's groups are {kernel}, expected {want} of "
                          f"{list(ident.groups)} with {ident.gid} first")


def spawn(plan: SpawnPlan, *, timeout: float = SPAWN_TIMEOUT,
          syscalls: Optional[Syscalls] = None,
          after_fork: Optional[Callable[[int], None]] = None,
          before_exec: Optional[Callable[[int], None]] = None,
          after_go: Optional[Callable[[int], None]] = None,
          preforked: Optional[Preforked] = None) -> int:
    """Start PLAN's process; return its pid (leader of a new session and process group).

    Raises BadRequest for a plan that cannot be run (NUL in the command, a bad environment),
    RootRefused for uid 0, SpawnFailed (StageFailed with .stage and .errno) when the child
    fails before exec or does not reach exec within TIMEOUT seconds (it is then killed); a
    failed child is reaped here. Call from a single-threaded process; the caller keeps (and
    closes) the plan's fds.

    BEFORE_EXEC(pid), if given, runs once the child is ready to exec (dropped, verified, in its
    directory) and before it does: the child waits at a gate. If it raises, the child is killed
    without running anything and the error propagates (e.g. an audit record that could not be
    made durable: nothing runs unrecorded). AFTER_FORK(pid), if given, runs in the parent right
    after the fork, while the child prepares itself (work that may overlap the child's: an
    fsync, a move to another cgroup); if it raises, the child is killed in the same way.
    AFTER_GO(pid), if given (with BEFORE_EXEC), runs once the child is let through the gate,
    while it execs: work that needs the session under way and need not hold it back.

    PREFORKED (from prefork()), if given, is the child: it is sent the plan instead of a fork
    being made now, and runs the same steps with the syscalls given to prefork(). spawn takes
    it over: used, or released when the plan is refused; one that is gone, or stopped (killed
    and reaped), is replaced by a fork."""
    try:
        prep = _prepare(plan)
    except BaseException:
        if preforked is not None:
            preforked.release()
        raise
    gated = before_exec is not None
    opened: list[int] = []  # the parent's ends of the report and gate channels
    try:
        got = _hand_plan(preforked, prep, gated, timeout) if preforked is not None else None
        if got is not None:
            pid, r = got
            opened.append(r)
            gate_w, blocked = r, None
        else:
            pid, r, gate_w, blocked = _fork(prep, syscalls, gated, opened)
        try:
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            deadline = time.monotonic() + timeout
            if after_fork is not None:
                after_fork(pid)
            report = _read_report(r, deadline, until_gate=gated)
            if before_exec is not None and report == _AT_GATE:
                before_exec(pid)
                _open_gate(gate_w, plan.account.name)
                if after_go is not None:
                    after_go(pid)
                report = _read_report(r, deadline)
            elif before_exec is not None and report == b"":
                report = b"gate\x000\x00the child ended before it was ready to exec"
        except BaseException:  # a signal handler or BEFORE_EXEC raised: nothing runs
            kill_and_reap(pid)
            raise
    finally:
        for fd in set(opened):
            os.close(fd)
    if report is None:
        kill_and_reap(pid)
        raise StageFailed("exec", 0, f"the child did not reach exec within {timeout:g}s",
                          who=plan.account.name)
    if report:
        _reap(pid)
        stage, err, detail = _parse_report(report)
        raise StageFailed(stage, err, detail, who=plan.account.name)
    return pid


def rehearse(account: Account) -> None:
    """Prepare, and pack as for a process forked ahead, a plan for ACCOUNT (a made-up one
    will do) without starting anything: see agent.session.rehearse. Raises what spawn would."""
    prep = _prepare(SpawnPlan(account, "true", {"PATH": "/usr/bin:/bin"}, 0, 1, 2, tty=False))
    _pack(prep, gated=True)


def _fork(prep: _Prepared, syscalls: Optional[Syscalls], gated: bool,
          opened: list[int]) -> tuple[int, int, int, Any]:
    """Fork the child now: (pid, report read end, gate write end or -1, the signal mask to
    restore, which the caller restores once it is ready to kill the child on an error). The
    parent's ends are added to OPENED as soon as they exist."""
    ops = Syscalls.real() if syscalls is None else syscalls
    _require_single_thread()
    r, w = _report_pipe()
    opened.append(r)
    gate_r, gate_w = _report_pipe() if gated else (-1, -1)
    if gate_w != -1:
        opened.append(gate_w)
    try:
        bound = _fd_bound(max(w, gate_r, gate_w))
        pid, blocked = _fork_blocked()
        if pid == 0:
            _child(prep, ops, w, bound, gate_r)
    finally:
        os.close(w)
        if gate_r != -1:
            os.close(gate_r)
    return pid, r, gate_w, blocked


def _fork_blocked() -> tuple[int, Any]:
    """fork() with every signal blocked: (pid, the mask before), the child (pid 0) keeping
    them blocked, the parent to restore the mask itself."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        return os.fork(), blocked
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise SpawnFailed(f"fork failed: [Errno {exc.errno}] {exc.strerror}") from exc


class Preforked:
    """A child forked ahead of its plan (prefork()), waiting for it on a socket pair: the fork
    of a large process, the costliest step of a start, then leaves the start's path. It holds
    nothing but its end of the pair and the standard descriptors, with every signal blocked;
    it runs nothing until a plan comes, and exits when its parent's end closes. Used once, by
    spawn(); release() lets an unused one go."""

    __slots__ = ("_sock", "pid")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock: Optional[socket.socket] = sock

    def take(self) -> Optional[tuple[int, socket.socket]]:
        sock, self._sock = self._sock, None
        return None if sock is None else (self.pid, sock)

    def release(self) -> None:
        """Close the parent's end, kill the child (it is idle, or was never sent a plan) and
        reap it. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            kill_and_reap(self.pid)


def prefork(syscalls: Optional[Syscalls] = None) -> Preforked:
    """Fork the child of a later spawn() now, before its plan exists (the caller's idle time).
    The child keeps SYSCALLS (default: the real calls, resolved here, before the fork)."""
    ops = Syscalls.real() if syscalls is None else syscalls
    _require_single_thread()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours, theirs = _above_stdio(ours), _above_stdio(theirs)
        bound = _fd_bound(max(ours.fileno(), theirs.fileno()))
        pid, blocked = _fork_blocked()
        if pid == 0:
            _await_plan(theirs.fileno(), ops, bound)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Preforked(pid, ours)


def _above_stdio(sock: socket.socket) -> socket.socket:
    """SOCK, or a close-on-exec copy of it above 2 (as the report pipe: the child's dup2 onto
    0/1/2 cannot clobber it)."""
    if sock.fileno() > 2:
        return sock
    high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
    sock.close()
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=high)


def _hand_plan(pre: Preforked, prep: _Prepared, gated: bool,
               timeout: float) -> Optional[tuple[int, int]]:
    """Send PREP, and the descriptors of its stdio, to the preforked child: (its pid, the
    parent's end as the report and gate channel), or None when the child cannot take it: gone
    (reaped), or stopped or not reading it within TIMEOUT seconds (killed and reaped)."""
    try:
        data = _pack(prep, gated)
    except BaseException:
        pre.release()
        raise
    taken = pre.take()
    if taken is None:
        return None
    pid, sock = taken
    if not still_waiting(pid):
        sock.close()
        return None
    try:
        sock.settimeout(timeout)  # a child stopped since never reads a plan its buffer lacks
        sent = socket.send_fds(sock, [data], list(prep.stdio))
        if sent < len(data):
            sock.sendall(data[sent:])
        sock.settimeout(None)
    except OSError:
        sock.close()
        kill_and_reap(pid)
        return None
    return pid, sock.detach()


def _pack(prep: _Prepared, gated: bool) -> bytes:
    """PREP but its stdio (sent as descriptors) and GATED, length-prefixed, for _await_plan."""
    i = prep.ident
    lim = prep.limits
    body = marshal.dumps((
        i.name, i.uid, i.gid, i.groups, i.darwin, prep.path, prep.argv, prep.env, prep.home,
        prep.tty, tuple(int(n) for n in prep.signals), prep.chdir_warning, lim.rlimits,
        lim.umask, lim.nice, prep.loginuid, gated))
    return len(body).to_bytes(4, "big") + body


def still_waiting(pid: int) -> bool:
    """Whether PID, a child forked ahead (the shell's or the PAM process), still waits for what
    it is to run: neither ended nor stopped (a stopped one would never read it). One that
    stopped is killed and reaped; one that ended is reaped by this check. A child reaped
    before is never signalled: its pid may be reused."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
    except ChildProcessError:
        return False
    if got == 0:
        return True
    if os.WIFSTOPPED(status):
        kill_and_reap(pid)
    return False


def _await_plan(chan: int, ops: Syscalls, bound: int) -> NoReturn:
    """The preforked child: let go of everything but CHAN, wait for the plan, then run the
    child's steps (_child) on it, reporting on CHAN and waiting there at the gate. Exits
    without running anything when CHAN ends first."""
    stage = "plan"
    try:
        # No collection may run a finalizer of an object whose descriptor was closed here: it
        # would close or write a number the session's stdio reuses.
        gc.disable()
        os.closerange(3, chan)
        os.closerange(chan + 1, bound)
        # Every disposition to its default now, while every signal stays blocked (nothing is
        # delivered): the steps need not do it when the plan comes.
        idle_default = _settable_signals()
        _set_default(idle_default)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=chan)
        data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 3)
        while 4 <= len(data) < 4 + int.from_bytes(data[:4], "big"):
            more = sock.recv(65536)
            if not more:
                break
            data += more
        if len(data) < 4 or len(data) != 4 + int.from_bytes(data[:4], "big") or len(fds) != 3:
            os._exit(_EXIT_FAILED)  # released (or a short plan): nothing runs
        # From the parent, over a socket pair only the two processes hold; plain values only.
        (name, uid, gid, groups, darwin, path, argv, env, home, tty, signals, warning,
         rlimits, umask, nice, loginuid, gated) = marshal.loads(data[4:])  # noqa: S302
        # What was sent to this process while it waited is pending (blocked, a signal is kept
        # even where its disposition ignores it) but was sent to no session's process: setting
        # its disposition to ignore discards it, so the steps start without any, as a child
        # forked now would (fork clears pending signals); then back to the default.
        for signum in signal.sigpending():
            try:
                signal.signal(signum, signal.SIG_IGN)
            except (OSError, ValueError):
                continue  # reserved by the C library (only root can signal this process)
            signal.signal(signum, signal.SIG_DFL)
        signals = tuple(signals)
        prep = _Prepared(Identity(name, uid, gid, tuple(groups), darwin), path, tuple(argv),
                         env, home, (fds[0], fds[1], fds[2]), tty, signals, warning,
                         ProcessLimits(tuple(rlimits), umask, nice), loginuid)
        _child(prep, ops, chan, max(chan, *fds) + 4, chan if gated else -1,
               defaults_set=signals == idle_default)
    except BaseException as exc:  # nothing may escape the child
        _report(chan, stage, exc)
    finally:
        os._exit(_EXIT_FAILED)


def describe_status(wait_status: int) -> dict[str, Optional[int]]:
    """{"code": exit code or None, "signal": terminating signal or None} of a waitpid status."""
    if os.WIFEXITED(wait_status):
        return {"code": os.WEXITSTATUS(wait_status), "signal": None}
    if os.WIFSIGNALED(wait_status):
        return {"code": None, "signal": os.WTERMSIG(wait_status)}
    raise InternalError(f"wait status {wait_status:#x} is neither an exit nor a signal")


# --- the parent's preparation ------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    ident: Identity
    path: bytes
    argv: tuple[bytes, ...]
    env: dict[bytes, bytes]
    home: bytes
    stdio: tuple[int, int, int]
    tty: bool
    signals: tuple[int, ...]
    chdir_warning: bytes
    limits: ProcessLimits
    loginuid: Optional[bytes]


def _prepare(plan: SpawnPlan) -> _Prepared:
    account = plan.account
    ident = Identity.of(account)
    shell = account.shell
    if not isinstance(shell, str) or not shell.startswith("/") or "\0" in shell:
        raise SpawnFailed(f"{account.name}: shell {shell!r} is not an absolute path")
    if "\0" in account.home:
        raise SpawnFailed(f"{account.name}: home directory contains NUL")
    path = os.fsencode(shell)
    base = os.path.basename(path)
    if plan.command is None:
        argv: tuple[bytes, ...] = (b"-" + base,)
    else:
        if not isinstance(plan.command, str) or "\0" in plan.command:
            raise BadRequest("the command contains NUL")
        argv = (base, b"-c", os.fsencode(plan.command))
    env: dict[bytes, bytes] = {}
    for name, value in plan.env.items():
        check_name(name, "session environment")
        if forbidden(name):
            raise BadRequest(f"session environment: {name} is never passed to a session")
        if not isinstance(value, str) or "\0" in value:
            raise BadRequest(f"session environment: value of {name} is not a NUL-free string")
        env[os.fsencode(name)] = os.fsencode(value)
    stdio = (plan.stdin, plan.stdout, plan.stderr)
    for label, fd in zip(("stdin", "stdout", "stderr"), stdio):
        try:
            os.fstat(fd)
        except (OSError, TypeError, ValueError) as exc:
            raise SpawnFailed(f"{label} ({fd!r}) is not an open file descriptor") from exc
    if plan.tty and not os.isatty(plan.stdin):
        raise SpawnFailed("a terminal session needs a terminal on stdin")
    home = os.fsencode(account.home)
    signals = _settable_signals()
    warning = CHDIR_WARNING + b" (" + home + b": "
    limits = ProcessLimits() if plan.limits is None else plan.limits
    if not isinstance(limits, ProcessLimits):
        raise SpawnFailed("the session's limits are not a ProcessLimits")
    loginuid = plan.loginuid
    if loginuid is not None and (type(loginuid) is not int or not 0 <= loginuid < 2**32 - 1):
        raise SpawnFailed(f"the session's login uid {loginuid!r} is not a uid")
    return _Prepared(ident, path, argv, env, home, stdio, bool(plan.tty), signals, warning,
                     limits, None if loginuid is None else str(loginuid).encode())


def _settable_signals() -> tuple[int, ...]:
    """Every signal number but SIGKILL and SIGSTOP, as plain ints (signal.valid_signals() makes
    an enum of each, raising and catching an error for every real-time one); the child skips
    the few the C library reserves for itself."""
    return tuple(s for s in range(1, signal.NSIG) if s not in (signal.SIGKILL, signal.SIGSTOP))


def _set_default(signals: Iterable[int]) -> None:
    """Each of SIGNALS back to its default disposition (those the C library reserves for itself
    are skipped)."""
    for sig in signals:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def _require_single_thread() -> None:
    threading = sys.modules.get("threading")
    count = threading.active_count() if threading is not None else 1
    if count != 1:
        raise SpawnFailed(f"refusing to fork from a process with {count} threads")


def _report_pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are above 2 (so dup2 onto 0/1/2 cannot clobber it)."""
    r, w = os.pipe()
    fds = []
    for fd in (r, w):
        high = fd
        if fd <= 2:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
        os.set_inheritable(high, False)
        fds.append(high)
    return fds[0], fds[1]


def _fd_bound(w: int) -> int:
    """One above the highest fd the child can hold: what is open now, plus the three stdio
    copies the child makes, so closing up to it closes everything (without sweeping a huge
    RLIMIT_NOFILE on Pythons that lack close_range)."""
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(w, *(int(n) for n in os.listdir(d))) + 4
        except (OSError, ValueError):
            continue
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 65536


def _read_report(fd: int, deadline: float, *, until_gate: bool = False) -> Optional[bytes]:
    """What the child wrote before EOF, or None if the deadline passed first. UNTIL_GATE:
    return _AT_GATE as soon as the child says it waits at the gate."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(max(1, int(left * 1000))):
            continue
        chunk = os.read(fd, _REPORT_MAX)
        if until_gate and not chunks and chunk == _AT_GATE:
            return _AT_GATE
        if not chunk or size > _REPORT_MAX:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)


def _parse_report(report: bytes) -> tuple[str, int, str]:
    parts = report.decode("utf-8", "replace").split("\0", 2)
    if len(parts) != 3:
        return "child", 0, parts[0]
    try:
        err = int(parts[1])
    except ValueError:
        err = 0
    return parts[0], err, parts[2]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped already (SIGCHLD ignored, or a handler waited for it)


def _open_gate(gate_w: int, who: str) -> None:
    """Let the child at the gate exec. It waits there as the account already, so any process
    of the account may have killed it: StageFailed("gate") then (it is killed and reaped)."""
    try:
        os.write(gate_w, _GO)
    except OSError as exc:
        raise StageFailed("gate", exc.errno or 0, "the child ended at the exec gate",
                          who=who) from None


def kill_and_reap(pid: int) -> None:
    """SIGKILL PID, a child of this process, and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


# --- the child ---------------------------------------------------------------------------------


def _step(stage: str, fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError as exc:
        raise StageFailed(stage, exc.errno or 0, exc.strerror or str(exc)) from None


def _controlling_tty(ops: Syscalls, fd: int) -> None:
    """New session with FD (a PTY slave) as its controlling terminal."""
    if ops.login_tty is not None:
        # setsid, TIOCSCTTY, dup2 onto 0/1/2; it closes the fd it is given, hence the copy
        _step("controlling tty", ops.login_tty, os.dup(fd))
    else:
        _step("setsid", os.setsid)
        _step("controlling tty", fcntl.ioctl, fd, termios.TIOCSCTTY, 0)


def _child(p: _Prepared, ops: Syscalls, report: int, bound: int, gate: int, *,
           defaults_set: bool = False) -> NoReturn:
    """The checklist, from every signal's default disposition (set here unless DEFAULTS_SET:
    they are already) to the exec; any failure is reported on REPORT, and nothing runs."""
    stage = "signals"
    try:
        if not defaults_set:
            _set_default(p.signals)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        stage = "stdio"
        high = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in p.stdio)
        if p.tty:
            _controlling_tty(ops, high[0])
        else:
            stage = "setsid"
            os.setsid()
        stage = "stdio"
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        stage = "loginuid"  # before the limits: it takes a descriptor (nofile)
        if p.loginuid is not None:
            _write_loginuid(p.loginuid)
        elif not p.ident.darwin:
            _claim_unset_loginuid(str(p.ident.uid).encode())
        if not p.limits.empty:
            stage = "limits"
            proclimits.apply(p.limits)
        become(ops, p.ident)
        verify(ops, p.ident)
        session_keyring(ops, p.ident)
        stage = "close fds"
        low = 3
        for keep in sorted(fd for fd in (report, gate) if fd != -1):
            os.closerange(low, keep)
            low = keep + 1
        os.closerange(low, bound)
        stage = "chdir"
        try:
            os.chdir(p.home)
        except OSError as exc:
            _warn(p.chdir_warning + os.strerror(exc.errno or 0).encode() + b")\n")
            os.chdir(b"/")
        if gate != -1:
            stage = "gate"
            os.write(report, _AT_GATE)
            if os.read(gate, 1) != _GO:  # the parent gave up (or died): run nothing
                os._exit(_EXIT_FAILED)
        stage = "exec"
        os.execve(p.path, p.argv, p.env)  # noqa: S606 - the account's shell, by design
    except BaseException as exc:  # nothing may escape the child
        _report(report, stage, exc)
    finally:
        os._exit(_EXIT_FAILED)


def _claim_unset_loginuid(value: bytes) -> None:
    """Set the login uid to VALUE (the account's uid) when it is unset: PAM off, or a stack
    without pam_loginuid. An unset login uid may be set once by anyone, so the account could
    otherwise give its session any login uid it likes (0: its audit events would name root).
    Nothing to do without one (a kernel without audit), or where the kernel refuses it even
    to root (EPERM here means the account is refused as well)."""
    try:
        fd = os.open("/proc/self/loginuid", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        current = os.read(fd, 32).strip()
    finally:
        os.close(fd)
    if current != _UNSET_LOGINUID:
        return
    try:
        _write_loginuid(value)
    except PermissionError:
        pass


def _write_loginuid(value: bytes) -> None:
    fd = os.open("/proc/self/loginuid", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _warn(message: bytes) -> None:
    try:
        os.write(2, message)
    except OSError:
        pass


def _report(fd: int, stage: str, exc: BaseException) -> None:
    try:
        if isinstance(exc, StageFailed):
            stage, err, detail = exc.stage, exc.errno, exc.detail
        elif isinstance(exc, OSError):
            err, detail = exc.errno or 0, exc.strerror or type(exc).__name__
            if exc.filename is not None:
                detail += f": {os.fsdecode(exc.filename)}"
        else:
            err, detail = 0, f"{type(exc).__name__}: {exc}"
        msg = f"{stage}\0{err}\0{detail}".encode("utf-8", "replace")
        os.write(fd, msg[:_REPORT_MAX])
    except BaseException:  # noqa: S110 - the child is about to _exit either way
        pass
