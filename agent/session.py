"""The per-session supervisor: a small root process, forked by the daemon for one start request.

It owns the client's connection for the session's whole life: it records the request, resolves
the account, starts the shell through agent.spawn, hands the session's I/O to the client (the PTY
master, or three pipe ends, over SCM_RIGHTS), then waits. The connection stays open as the
control channel (resize, terminate); its closing is a hang-up. The supervisor ends the session
(SIGHUP, then SIGKILL after the grace period), records the end and reports the exit status.

It does not depend on the daemon once forked: a daemon restart or crash leaves it running, and it
still records the session's end.
"""

from __future__ import annotations

import dataclasses
import os
import select
import selectors
import signal
import socket
import time
from dataclasses import dataclass

from agent import protocol
from agent.errors import AgentError, AuditFailed, InternalError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

    from agent.accounts import Account
    from agent.audit import AuditLog
    from agent.config import Config
    from agent.peer import Peer
    from agent.platform import Platform
    from agent.registry import Registry

PR_SET_CHILD_SUBREAPER = 36
IDLE_CHECK = 1.0


@dataclass(frozen=True)
class Context:
    cfg: Config
    platform: Platform
    audit: AuditLog
    registry: Registry
    peer: Peer
    sys_platform: str


@dataclass(frozen=True)
class Started:
    account: Account
    source: str
    pid: int  # the shell; leader of its own session and process group
    master: Optional[int]  # PTY master kept by the supervisor (resize, idle, shell profile)
    slave_path: Optional[str]
    client_fds: tuple[int, ...]
    pam: Any  # agent.pam.PamSession or None


def iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e3):03d}Z"


def send(conn: socket.socket, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = protocol.encode(msg)
    if fds:
        sent = socket.send_fds(conn, [data], list(fds))
        data = data[sent:]
    if data:
        conn.sendall(data)


def run(conn: socket.socket, req: protocol.StartRequest, ctx: Context) -> int:
    """Supervise one session. Returns the supervisor's exit code (for os._exit)."""
    conn.setblocking(True)
    base = {"session_id": req.session_id, "principal": req.principal.arn,
            "peer_uid": ctx.peer.uid}
    try:
        ctx.audit.record("session.requested", **base)
    except AuditFailed as exc:
        _reply_error(conn, exc)
        return 1

    claimed = False
    user: Optional[str] = None
    uid: Optional[int] = None
    source: Optional[str] = None
    try:
        ctx.registry.claim(req.session_id, os.getpid())
        claimed = True
        account, source = _resolve(req, ctx)
        user, uid = account.name, account.uid
        started = _start(req, ctx, account, source)
    except AgentError as exc:
        if claimed:
            ctx.registry.remove(req.session_id)
        try:
            ctx.audit.record("session.denied", **base, user=user, uid=uid, source=source,
                             reason=exc.reason)
        except AuditFailed:
            pass  # the client is told anyway; there is nothing more durable to write to
        _reply_error(conn, exc)
        return 1

    return _supervise(conn, req, ctx, started, base)


def _reply_error(conn: socket.socket, exc: AgentError) -> None:
    try:
        send(conn, protocol.error_reply(exc.reason, str(exc)))
    except OSError:
        pass


def _resolve(req: protocol.StartRequest, ctx: Context) -> tuple[Account, str]:
    from agent import policy
    from agent.resolve import resolve

    cfg = ctx.cfg
    prefs = req.preferences
    enabled = cfg.run_as.enabled if prefs.run_as_enabled is None else prefs.run_as_enabled
    default = (cfg.run_as.default_user if prefs.run_as_default_user is None
               else prefs.run_as_default_user)
    res = resolve(cfg, ctx.platform, run_as_enabled=enabled, tags=req.principal.tags,
                  default_user=default)
    if not res.allowed or res.source is None:
        raise res.error()
    if res.source == policy.SOURCE_SSM_USER:
        # Run As is off: make sure ssm-user and its drop-in exist (created once, under a lock;
        # also finishes a drop-in that a crash left pending), then use the validated account.
        from agent import ssm_user

        return ssm_user.ensure(cfg, ctx.platform, audit=ctx.audit).account, res.source
    if res.account is None:  # pragma: no cover - resolve() returns an account when allowed
        raise InternalError("resolution allowed without an account")
    return res.account, res.source


def _shell_profile(req: protocol.StartRequest, ctx: Context) -> str:
    prof = req.preferences.shell_profile
    return ctx.cfg.run_as.shell_profile if prof is None else prof


def _start(req: protocol.StartRequest, ctx: Context, account: Account, source: str) -> Started:
    """Open the session's I/O, PAM, and start the shell. Cleans up after itself on failure."""
    from agent import environ, spawn

    pty = None
    pam: Any = None
    child_fds: tuple[int, ...] = ()
    client_fds: tuple[int, ...] = ()
    try:
        if req.terminal is not None:
            from agent import terminal

            pty = terminal.open_pty(account, req.terminal.rows, req.terminal.cols)
            child_fds, client_fds = (pty.slave,) * 3, (pty.master,)
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            child_fds, client_fds = (in_r, out_w, err_w), (in_w, out_r, err_r)
        login = _pam_login(ctx, account, pty.slave_path if pty is not None else None)
        extra: dict[str, str] = {}
        if login is not None:
            pam = login.pam
            extra = login.environment
            account = dataclasses.replace(account, groups=tuple(sorted(set(login.groups))))
        term = req.terminal.term if req.terminal is not None else None
        env = environ.build_env(account, term=term, client_env=req.env, extra=extra)
        command = req.command
        profile = _shell_profile(req, ctx)
        if command is not None and profile:
            command = profile + "\n" + command
        if ctx.cfg.session.end_mode == "all":
            _become_subreaper(ctx.sys_platform)
        if pty is not None:
            # Recorded before the shell runs, under this supervisor's pid (it lives exactly as
            # long as the session), so `who` in the session already lists it.
            _login_record(ctx, os.getpid(), account, pty.slave_path)
        try:
            pid = spawn.spawn(spawn.SpawnPlan(account, command, env, *child_fds,
                                              tty=pty is not None))
        except BaseException:
            if pty is not None:
                _logout_record(ctx, os.getpid(), pty.slave_path)
            raise
    except BaseException:
        for fd in set(child_fds) | set(client_fds):
            os.close(fd)
        if pam is not None:
            pam.close()
        raise
    for fd in set(child_fds):
        os.close(fd)
    if pty is not None:
        if command is None and profile:
            _write_all(pty.master, (profile.rstrip("\n") + "\n").encode())
        return Started(account, source, pid, pty.master, pty.slave_path, client_fds, pam)
    return Started(account, source, pid, None, None, client_fds, pam)


def _pam_login(ctx: Context, account: Account, tty: Optional[str]) -> Any:
    """PAM's account and session stages in this process (loginuid, limits, environment are set
    here and inherited by the shell), or None when PAM is off or its service is not installed."""
    from agent import pam

    service = ctx.cfg.session.pam_service
    if not pam.wanted(ctx.cfg.session.pam, service, sys_platform=ctx.sys_platform):
        return None
    return pam.login(service, account.name, account.gid, tty=tty)


def _login_record(ctx: Context, pid: int, account: Account, tty: str) -> None:
    """utmp/wtmp/lastlog for a PTY session; a failure is logged, never fatal."""
    from agent import utmp

    try:
        utmp.login_record(pid, account.name, tty, "runas-agent", uid=account.uid,
                          sys_platform=ctx.sys_platform)
    except AgentError as exc:
        _warn(f"login record: {exc}")


def _logout_record(ctx: Context, pid: int, tty: str) -> None:
    from agent import utmp

    try:
        utmp.logout_record(pid, tty, sys_platform=ctx.sys_platform)
    except AgentError as exc:
        _warn(f"logout record: {exc}")


def _warn(message: str) -> None:
    try:
        os.write(2, f"runas-agent supervisor {os.getpid()}: {message}\n".encode())
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _become_subreaper(sys_platform: str) -> None:
    if sys_platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise InternalError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


# -- the waiting part -----------------------------------------------------------------------


class _Signals:
    def __init__(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.terminate = False
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_term(self, *_: object) -> None:
        self.terminate = True

    def drain(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass


def _supervise(conn: socket.socket, req: protocol.StartRequest, ctx: Context, st: Started,
               base: dict[str, Any]) -> int:
    from agent import spawn

    sess_cfg = ctx.cfg.session
    sig = _Signals()
    started_mono = time.monotonic()
    started_wall = time.time()
    record = {
        "id": req.session_id, "pid": os.getpid(), "shell_pid": st.pid,
        "user": st.account.name, "uid": st.account.uid, "source": st.source,
        "principal": req.principal.arn, "started_at": iso_now(), "tty": st.slave_path,
        "command": req.command, "peer_uid": ctx.peer.uid, "state": "started",
    }
    from agent.registry import process_start_time

    record["pid_start"] = process_start_time(os.getpid())
    ctx.registry.publish(record)
    status: Optional[int] = None
    try:
        ctx.audit.record("session.started", **base, user=st.account.name, uid=st.account.uid,
                         source=st.source, pid=st.pid, tty=st.slave_path)
    except AuditFailed as exc:
        # Never a session without a record: stop it before the client can use it.
        status = _end(st, sess_cfg.grace_period, sess_cfg.end_mode, sig)
        _finish(ctx, req, st, base, status=status, reason="audit_failed")
        _reply_error(conn, exc)
        return 1

    reason: Optional[str] = None
    try:
        send(conn, protocol.reply("started", session_id=req.session_id, user=st.account.name,
                                  uid=st.account.uid, source=st.source, pid=st.pid,
                                  tty=st.slave_path), st.client_fds)
    except OSError:
        reason = "hangup"
    for fd in st.client_fds:
        if fd != st.master:
            os.close(fd)

    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    sel.register(sig.wake_r, selectors.EVENT_READ)
    decoder = protocol.FrameDecoder(ctx.cfg.limits.max_frame)
    max_dur = sess_cfg.max_duration
    idle = sess_cfg.idle_timeout if st.slave_path is not None else 0.0

    while reason is None:
        pid, wstatus = os.waitpid(st.pid, os.WNOHANG)
        if pid == st.pid:
            status = wstatus
            reason = "exited"
            break
        if sig.terminate:
            reason = "terminated"
            break
        now = time.monotonic()
        timeout: Optional[float] = None
        if max_dur > 0:
            left = started_mono + max_dur - now
            if left <= 0:
                reason = "max_duration"
                break
            timeout = left
        if idle > 0 and st.slave_path is not None:
            last = max(started_wall, _tty_activity(st.slave_path))
            if time.time() - last >= idle:
                reason = "idle_timeout"
                break
            timeout = IDLE_CHECK if timeout is None else min(timeout, IDLE_CHECK)
        for key, _ in sel.select(timeout):
            if key.fileobj is conn:
                reason = _control(conn, decoder, st)
            else:
                sig.drain()
    sel.close()

    if status is None:
        status = _end(st, sess_cfg.grace_period, sess_cfg.end_mode, sig)
    elif sess_cfg.end_mode == "all":
        _kill_descendants(sess_cfg.grace_period)
    exit_status = spawn.describe_status(status)
    _finish(ctx, req, st, base, status=status, reason=reason)
    if reason != "hangup":
        try:
            send(conn, protocol.reply("exit", session_id=req.session_id, reason=reason,
                                      **exit_status))
        except OSError:
            pass
    conn.close()
    return 0


def _control(conn: socket.socket, decoder: protocol.FrameDecoder, st: Started) -> Optional[str]:
    """Handle what the client sent; returns an end reason or None."""
    try:
        data = conn.recv(65536)
    except OSError:
        return "hangup"
    if not data:
        return "hangup"
    try:
        msgs = decoder.feed(data)
        for msg in msgs:
            ctl = protocol.parse_control(msg)
            if isinstance(ctl, protocol.TerminateControl):
                return "terminated"
            if st.master is not None:
                from agent import terminal

                terminal.set_window_size(st.master, ctl.rows, ctl.cols)
    except AgentError as exc:
        _reply_error(conn, exc)
    return None


def _tty_activity(path: str) -> float:
    try:
        st = os.stat(path)
    except OSError:
        return 0.0
    return max(st.st_atime, st.st_mtime)


def _end(st: Started, grace: float, end_mode: str, sig: _Signals) -> int:
    """Hang up the session: SIGHUP (+SIGCONT) to its process group, SIGKILL after GRACE."""
    _killpg(st.pid, signal.SIGHUP)
    _killpg(st.pid, signal.SIGCONT)
    status = _wait_for(st.pid, grace, sig)
    if status is None:
        _killpg(st.pid, signal.SIGKILL)
        _, status = os.waitpid(st.pid, 0)
    if end_mode == "all":
        _kill_descendants(grace)
    else:
        _killpg(st.pid, signal.SIGKILL)  # what is left of the group after the grace period
    return status


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_for(pid: int, timeout: float, sig: _Signals) -> Optional[int]:
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        select.select([sig.wake_r], [], [], min(left, 0.05))
        sig.drain()


def _kill_descendants(grace: float) -> None:
    """Kill every process left under this supervisor (it is their subreaper): SIGHUP first,
    SIGKILL for whatever is still there after GRACE, then reap them all."""
    import psutil

    me = psutil.Process()
    kids = me.children(recursive=True)
    for p in kids:
        try:
            p.send_signal(signal.SIGHUP)
            p.send_signal(signal.SIGCONT)
        except psutil.Error:
            pass
    if kids:
        psutil.wait_procs(kids, timeout=grace)
    for _ in range(50):  # processes may fork while being killed; go until none is left
        left = me.children(recursive=True)
        if not left:
            break
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=0.1)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _finish(ctx: Context, req: protocol.StartRequest, st: Started, base: dict[str, Any], *,
            status: int, reason: str) -> None:
    from agent import spawn

    ctx.registry.remove(req.session_id)
    if st.slave_path is not None:
        _logout_record(ctx, os.getpid(), st.slave_path)
    if st.pam is not None:
        try:
            st.pam.close()
        except AgentError:
            pass
    if st.master is not None:
        try:
            os.close(st.master)
        except OSError:
            pass
    try:
        ctx.audit.record("session.ended", **base, user=st.account.name, uid=st.account.uid,
                         source=st.source, reason=reason,
                         exit_status=spawn.describe_status(status))
    except AuditFailed:
        pass  # logged by the caller's stderr; the end is still reported to the client
