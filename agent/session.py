"""The per-session supervisor: a small root process, forked by the daemon for one start request.

It owns the client's connection for the session's whole life: it records the request, resolves
the account, starts the shell through agent.spawn, hands the session's I/O to the client (the PTY
master, or three pipe ends, over SCM_RIGHTS), then waits. The connection stays open as the
control channel (resize, terminate); its closing is a hang-up. The supervisor ends the session
(SIGHUP, then SIGKILL after the grace period), records the end and reports the exit status.

It does not depend on the daemon once forked: a daemon restart or crash leaves it running, and it
still records the session's end. Nothing the client does (or fails to do) can block it: every
send is bounded by a timeout, and control-channel errors are answered without waiting.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import time
from dataclasses import dataclass, replace

# recording and relay are imported with this module, so the daemon's import of the supervisor's
# modules before it forks (server.prepare_for_fork) covers them: a recorded session's start
# does not pay for their import.
from agent import asciicast, procname, protocol, recording, relay, values
from agent.errors import (
    AgentError,
    AuditFailed,
    InternalError,
    RecordingFailed,
    SpawnFailed,
    Terminated,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Union

    from agent.accounts import Account
    from agent.audit import AuditLog, Pending
    from agent.cgroup import SessionCgroup, Setup
    from agent.config import Config
    from agent.peer import Peer
    from agent.platform import Platform
    from agent.registry import Registry

PR_SET_CHILD_SUBREAPER = 36
IDLE_CHECK = 1.0  # seconds between idle checks
SEND_TIMEOUT = 5.0  # the longest a send to the client may take (started, exit, errors)
MAX_BAD_CONTROL = 16  # malformed control frames tolerated before the channel counts as hung up
PROFILE_HEAD_START = 0.5  # seconds the shell profile may take to be typed before the client
# While a session ends, its processes' exits wake the supervisor (SIGCHLD: on Linux it is the
# subreaper of everything the session starts). The recheck only covers a group member whose
# parent is another process (which reaps it without telling us), and systems without a
# subreaper, where orphans go to init.
END_RECHECK_SUBREAPER = 0.5
END_RECHECK_OTHER = 0.02
# How long the shell's exit status is waited for once it has been killed (SIGKILL), after a
# tracer of the account's that held it back was killed: a process in uninterruptible sleep, or
# a zombie that root's tracer holds, is then recorded as ended with its status unknown.
KILLED_WAIT = 5.0
# How long a tracer of the killed shell has to let its exit through before it is killed, and
# how often its tracers are looked for again until its status comes.
TRACER_GRACE = 0.5
TRACER_RECHECK = 0.05
TRACERS_LOGGED = 16  # tracers killed at one end that are logged one by one
PREWARM_NAME = "runas-agent-prewarm-none"  # an account name looked up to load NSS modules
PROFILE_ENV = "RUNAS_AGENT_SHELL_PROFILE"
# A command session runs the shell profile from the environment (readable by the account only),
# not from argv (readable by everyone in /proc).
PROFILE_PRELUDE = f'eval "${PROFILE_ENV}"; unset {PROFILE_ENV}\n'


@dataclass(frozen=True)
class Context:
    cfg: Config
    platform: Platform
    audit: AuditLog
    registry: Registry
    peer: Peer
    sys_platform: str
    cgroups: Optional[Setup] = None  # where sessions get their cgroup (agent.cgroup.setup)
    log: Any = None  # the daemon's structured logger (None: plain lines on stderr)
    pam_lib: Any = None  # agent.pam.Libpam loaded by the daemon (agent.pam.prewarm), or None
    preforked: Any = None  # agent.spawn.Preforked: the shell's process, forked ahead, or None
    pam_ahead: Any = None  # agent.pam.LoginAhead: the PAM process, forked ahead, or None
    pty_ahead: Any = None  # agent.terminal.PtyAhead: a PTY opened ahead, or None
    # This process's start time (agent.registry.process_start_time), which its registry
    # records carry; a spare reads it while it waits. None: read once the request is there.
    pid_start: Optional[float] = None
    subreaper: bool = False  # this process is a subreaper already (a spare becomes one early)


@dataclass(frozen=True)
class Started:
    account: Account
    source: str
    pid: int  # the shell; leader of its own session and process group
    master: Optional[int]  # PTY master kept by the supervisor (resize, idle, shell profile)
    slave_path: Optional[str]
    client_fds: tuple[int, ...]
    pam: Any  # agent.pam.Opened (the PAM process) or None
    profile: bytes  # to type into the PTY once the client has the session (interactive only)
    cgroup: Optional[SessionCgroup] = None  # end mode `all` where cgroups are usable
    recorder: Optional[recording.Recorder] = None  # recording on: the session's recording
    io_relay: Optional[relay.Relay] = None  # recording on: the supervisor relays the I/O
    unlisted: Optional[AgentError] = None  # why the session could not be listed (it then ends)


class Signals:
    """The supervisor's signal handling, installed first thing after the fork (replacing the
    daemon's handlers in one step, so a SIGTERM from `terminate` is never fatal)."""

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
        drain(self.wake_r)


def prewarm(sys_platform: str) -> None:
    """Do once, before supervisors are forked, what every session's start would otherwise do
    in its own supervisor: load ctypes (the subreaper call, the keyring calls) and every NSS
    module of the passwd and group chains (a lookup that misses and a group list walk every
    source). Nothing here depends on a session."""
    import ctypes
    import grp
    import pwd

    if sys_platform == "linux":
        ctypes.CDLL(None, use_errno=True)
    for lookup in (lambda: pwd.getpwnam(PREWARM_NAME), lambda: grp.getgrnam(PREWARM_NAME),
                   lambda: pwd.getpwuid(0), lambda: grp.getgrgid(0),
                   lambda: os.getgrouplist("root", 0)):
        try:
            lookup()
        except (KeyError, OSError):
            pass


def rehearse(cfg: Config, platform: Platform) -> None:
    """In a spare supervisor, before its session arrives: run the start's steps that act on
    nothing on made-up values (decode and check a start request, resolve root, which is
    refused, build an environment, prepare a plan, format an audit record and a reply). A
    forked process pays a copy-on-write fault for each page it first writes, and running
    code writes the reference counts of what it uses; taken now, those faults leave the
    start's path. Nothing is written, started or sent. Raises what those steps raise."""
    from agent import environ, policy, spawn
    from agent.accounts import Account
    from agent.audit import format_record
    from agent.resolve import resolve

    request = {"v": protocol.VERSION, "type": "start", "session_id": "rehearsal",
               "principal": {"arn": "arn:rehearsal", "tags": {policy.TAG_KEY: "root"}},
               "preferences": {"run_as_enabled": True}, "command": "true", "env": {},
               "terminal": {"term": "xterm", "rows": 24, "cols": 80}}
    frames = protocol.FrameDecoder(cfg.limits.max_frame)
    frames.push(protocol.encode({"peer": [1, 0, 0, [0]], "request": request, "pending": 0}))
    head = frames.pop()
    req = protocol.parse_request(head["request"] if head is not None else None)
    if not isinstance(req, protocol.StartRequest):  # pragma: no cover - it is one
        raise InternalError("the rehearsal's request is not a start")
    resolve(cfg, platform, run_as_enabled=True, tags=req.principal.tags, default_user=None)
    nobody = Account(PREWARM_NAME, 65534, 65534, "/", "/bin/sh", (65534,), "local")
    environ.build_env(nobody, term="xterm", client_env={})
    spawn.rehearse(nobody)
    format_record("session.requested", session_id=req.session_id, principal="", peer_uid=0)
    protocol.encode(protocol.reply("started", session_id=req.session_id, user="root", uid=0,
                                   source="", pid=1, tty=None))


def release_ahead(*aheads: Any) -> None:
    """Let go of what a spare prepared ahead that a start did not use: the processes it forked
    (agent.spawn's Preforked, agent.pam's LoginAhead) and the PTY it opened (agent.terminal's
    PtyAhead); None: there is none."""
    for ahead in aheads:
        if ahead is not None:
            ahead.release()


def drain(fd: int) -> None:
    """Read a non-blocking fd until it is empty."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e3):03d}Z"


def send(conn: socket.socket, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """Send one frame (with FDS attached) within the socket's timeout."""
    data = protocol.encode(msg)
    if fds:
        sent = socket.send_fds(conn, [data], list(fds))
        data = data[sent:]
    if data:
        conn.sendall(data)


def _reply_error(conn: socket.socket, exc: AgentError) -> None:
    try:
        send(conn, protocol.error_reply(exc.reason, str(exc)))
    except OSError:
        pass


def _warn(message: str) -> None:
    try:
        os.write(2, f"runas-agent supervisor {os.getpid()}: {message}\n".encode())
    except OSError:
        pass


class Channel:
    """The client's side of the connection after `start`: control frames, decoded as they
    arrive (also while the session is starting) and held until the session applies them."""

    def __init__(self, conn: socket.socket, decoder: protocol.FrameDecoder) -> None:
        self.conn, self.decoder = conn, decoder
        self.held: list[Union[protocol.ResizeControl, protocol.TerminateControl, AgentError]] = []
        self.hung_up = False  # the client closed, or the stream cannot be resynchronized
        self._decode()

    def receive(self) -> None:
        """Read what the client sent, if anything (never blocks)."""
        if self.hung_up:
            return
        ready = select.poll()  # not select(): the connection's fd may be above FD_SETSIZE
        ready.register(self.conn, select.POLLIN)
        if not ready.poll(0):
            return
        try:
            data = self.conn.recv(65536)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError:
            data = b""
        if not data:
            self.hung_up = True
            return
        self.decoder.push(data)
        self._decode()

    def _decode(self) -> None:
        while not self.hung_up:
            try:
                msg = self.decoder.pop()
                if msg is None:
                    return
                self.held.append(protocol.parse_control(msg))
            except AgentError as exc:
                if self.decoder.broken:
                    self.hung_up = True
                    return
                self.held.append(exc)

    def terminate_held(self) -> bool:
        return any(isinstance(c, protocol.TerminateControl) for c in self.held)


def run(conn: socket.socket, req: protocol.StartRequest, ctx: Context, sig: Signals,
        decoder: Optional[protocol.FrameDecoder] = None) -> int:
    """Supervise one session. Returns the supervisor's exit code (for os._exit). DECODER holds
    what the client sent after its start request (the control channel's first bytes)."""
    conn.settimeout(SEND_TIMEOUT)
    chan = Channel(conn, decoder or protocol.FrameDecoder(ctx.cfg.limits.max_frame))
    base = {"session_id": req.session_id, "principal": req.principal.arn,
            "peer_uid": ctx.peer.uid}
    try:
        # Durable (its fsync) before anything outside this supervisor acts on the request and
        # before the shell runs, not before the account is resolved: until then the disk's
        # time overlaps the start's own work (the fsync is done at the latest while the
        # shell's process prepares itself, spawn's after_fork).
        requested = ctx.audit.append("session.requested", **base)
    except AuditFailed as exc:
        _reply_error(conn, exc)
        return 1

    if ctx.pid_start is None:
        from agent.registry import process_start_time

        ctx = replace(ctx, pid_start=process_start_time(os.getpid()))
    claimed = False
    user: Optional[str] = None
    uid: Optional[int] = None
    source: Optional[str] = None
    on_record: list[bool] = []  # session.started is on record, and the shell never ran
    try:
        ctx.registry.claim(req.session_id, os.getpid(), ctx.peer.uid, pid_start=ctx.pid_start)
        claimed = True
        account, source = _resolve(req, ctx, requested)
        user, uid = account.name, account.uid
        chan.receive()
        if sig.terminate or chan.terminate_held():
            raise Terminated("the session was terminated before its shell started")
        started = _start(req, ctx, account, source, base=base, chan=chan, sig=sig,
                         requested=requested, on_record=on_record)
    except AgentError as exc:
        # unused: the start never reached them (after a take, a release does nothing)
        release_ahead(ctx.preforked, ctx.pam_ahead, ctx.pty_ahead)
        if claimed:
            ctx.registry.remove(req.session_id)
        # A started session's record ends (the shell never ran); any other start is denied.
        event = "session.ended" if on_record else "session.denied"
        ended = {"exit_status": {"code": None, "signal": None}} if on_record else {}
        try:
            requested.sync()
            ctx.audit.record(event, **base, user=user, uid=uid, source=source,
                             reason=exc.reason, **ended)
        except AuditFailed as audit_exc:
            _warn(f"{event} not recorded: {audit_exc}")
        procname.set_name(procname.ENDED, ctx.sys_platform)  # no live session (see end())
        _reply_error(conn, exc)
        return 1

    sup = _Supervision(chan, req, ctx, sig, started, base=base)
    try:
        return sup.run()
    except BaseException as exc:
        # Whatever went wrong, the session must not outlive its supervisor unrecorded.
        _warn(f"ending session {req.session_id} after an internal error: {exc!r}")
        sup.end("internal_error")
        return 1


def _resolve(req: protocol.StartRequest, ctx: Context,
             requested: Pending) -> tuple[Account, str]:
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

        requested.sync()
        return (ssm_user.ensure(cfg, ctx.platform, audit=ctx.audit, known=res.account).account,
                res.source)
    if res.account is None:  # pragma: no cover - resolve() returns an account when allowed
        raise InternalError("resolution allowed without an account")
    return res.account, res.source


def _shell_profile(req: protocol.StartRequest, ctx: Context) -> str:
    prof = req.preferences.shell_profile
    return ctx.cfg.run_as.shell_profile if prof is None else prof


def _start(req: protocol.StartRequest, ctx: Context, account: Account, source: str, *,
           base: dict[str, Any], chan: Channel, sig: Signals, requested: Pending,
           on_record: list[bool]) -> Started:
    """Open the session's I/O, PAM, and start the shell. Cleans up after itself on failure.
    REQUESTED (`session.requested`) is made durable before PAM, the recording or the login
    record, and at the latest while the shell's process prepares itself; `session.started` is
    on record before the shell is exec'd: if either cannot be written, the shell never runs
    (AuditFailed)."""
    from agent import environ, spawn

    pty = None
    pam: Any = None
    cgroup: Optional[SessionCgroup] = None
    slot: Optional[_RecordingSlot] = None  # recording on: the recording, once created
    relay_: Optional[relay.Relay] = None
    relayed: tuple[int, ...] = ()  # the relay's fds for the client
    child_fds: tuple[int, ...] = ()
    client_fds: tuple[int, ...] = ()
    try:
        if req.terminal is not None:
            from agent import terminal

            rows, cols = req.terminal.rows, req.terminal.cols
            pty = (ctx.pty_ahead.take(account, rows, cols) if ctx.pty_ahead is not None
                   else terminal.open_pty(account, rows, cols))
            child_fds, client_fds = (pty.slave,) * 3, (pty.master,)
        else:
            release_ahead(ctx.pty_ahead)
            in_r, in_w = os.pipe()
            child_fds, client_fds = (in_r,), (in_w,)
            out_r, out_w = os.pipe()
            child_fds, client_fds = (in_r, out_w), (in_w, out_r)
            err_r, err_w = os.pipe()
            child_fds, client_fds = (in_r, out_w, err_w), (in_w, out_r, err_r)
        login = _pam_login(ctx, account, pty.slave_path if pty is not None else None,
                           ruser=req.principal.arn or None, chan=chan, sig=sig,
                           before=requested.sync)
        extra: dict[str, str] = {}
        limits = None
        loginuid = None
        scope: Optional[str] = None
        if login is not None:
            pam = login
            extra = dict(login.environment)
            limits = login.limits  # the session's; this supervisor's own are untouched
            loginuid = login.loginuid
            scope = _logind_scope(ctx, login.cgroup)
            account = values.replace(account, groups=tuple(sorted(set(login.groups))))
        command = req.command
        profile = _shell_profile(req, ctx)
        typed_profile = b""
        if profile and command is not None:
            extra[PROFILE_ENV] = profile
            command = PROFILE_PRELUDE + command
        elif profile:
            typed_profile = (profile.rstrip("\n") + "\n").encode()
        term = req.terminal.term if req.terminal is not None else None
        env = environ.build_env(account, term=term, client_env=req.env, extra=extra)
        # With recording on, the supervisor relays the session's I/O; the recording itself is
        # created (its header written) while the shell's process prepares itself, before the
        # shell runs and before the relay moves a byte.
        if ctx.cfg.recording.enabled:
            slot = _RecordingSlot()
            relay_, relayed = _relay(slot, pty.master if pty is not None else None, client_fds)
        # Every process the session starts ends as a child or descendant of this supervisor,
        # so their exits wake it (SIGCHLD) and it reaps them: the end is reported as soon as
        # they are gone, whatever init does with orphans. End mode `all` also kills them.
        if not ctx.subreaper:
            become_subreaper(ctx.sys_platform)
        if ctx.cfg.session.end_mode == "all":
            cgroup = _open_cgroup(ctx, req.session_id, scope)
        tty_path = pty.slave_path if pty is not None else None
        logged_in: list[str] = []  # the tty whose login record is written

        def while_preparing(pid: int) -> None:
            # The shell's process joins the session's cgroup as soon as it exists, long before
            # it runs anything of the account's: the move (a cgroup migration, which can wait
            # milliseconds in the kernel) overlaps the process's own preparation, as do the
            # fsync of session.requested and the login record.
            if cgroup is not None:
                _adopt(cgroup, pid)
            requested.sync()
            if slot is not None:
                slot.recorder = _open_recording(ctx, req, account, base=base)
            if tty_path is not None:
                # Recorded before the shell runs, under this supervisor's pid (it lives exactly
                # as long as the session), so `who` in the session already lists it.
                logged_in.append(tty_path)
                _login_record(ctx, os.getpid(), account, tty_path)

        def record_start(pid: int) -> None:
            _refuse_if_terminated(chan, sig)  # asked while the session was set up: run nothing
            if scope is not None:
                _join_scope(scope, pid, pam.pid)
            ctx.audit.record("session.started", **base, user=account.name, uid=account.uid,
                             source=source, pid=pid, tty=tty_path)
            # ... and while it was recorded (an fsync, a lock another writer of the log holds):
            # the shell is not let through then either. Its record ends (ON_RECORD).
            try:
                _refuse_if_terminated(chan, sig)
            except Terminated:
                on_record.append(True)
                raise

        unlisted: list[AgentError] = []
        listed: list[bool] = []

        def list_session(pid: int) -> None:
            # Listed, counted and terminable from now on, while the shell's exec completes. A
            # failure ends the session once it is supervised (_Supervision.run).
            try:
                _publish(ctx, req, account, source, shell_pid=pid, tty=tty_path)
                listed.append(True)
            except AgentError as exc:
                unlisted.append(exc)

        try:
            pid = spawn.spawn(spawn.SpawnPlan(account, command, env, *child_fds,
                                              tty=pty is not None, limits=limits,
                                              loginuid=loginuid),
                              after_fork=while_preparing, before_exec=record_start,
                              after_go=list_session, preforked=ctx.preforked)
        except BaseException:
            try:
                if listed:  # the exec failed: unlisted first, before the refusal's clean-up
                    _withdraw(ctx, req)
            finally:
                for tty in logged_in:
                    _logout_record(ctx, os.getpid(), tty)
            raise
    except BaseException:
        unclosed = set(child_fds) | set(client_fds) | set(relayed)
        if relay_ is not None:
            unclosed -= relay_.held
            relay_.close()
        for fd in unclosed:
            os.close(fd)
        if slot is not None and slot.recorder is not None:  # no session ran: nothing recorded
            slot.recorder.close_now()
            _unlink(slot.recorder.path)
        if cgroup is not None:
            _remove_cgroup(cgroup)
        if pam is not None:
            try:
                pam.close()
            except AgentError as exc:  # the error that got us here is the one to report
                _warn(f"closing the PAM session: {exc}")
        raise
    for fd in set(child_fds):
        os.close(fd)
    if relay_ is not None:
        client_fds = relayed
    why = unlisted[0] if unlisted else None
    recorder = slot.recorder if slot is not None else None
    if pty is not None:
        return Started(account, source, pid, pty.master, pty.slave_path, client_fds, pam,
                       typed_profile, cgroup, recorder, relay_, why)
    return Started(account, source, pid, None, None, client_fds, pam, b"", cgroup, recorder,
                   relay_, why)


def _publish(ctx: Context, req: protocol.StartRequest, account: Account, source: str, *,
             shell_pid: int, tty: Optional[str]) -> None:
    """The session's registry record, as started (raises InternalError)."""
    from agent.registry import cut_command

    ctx.registry.publish({
        "id": req.session_id, "pid": os.getpid(), "pid_start": ctx.pid_start,
        "shell_pid": shell_pid, "user": account.name, "uid": account.uid, "source": source,
        "principal": req.principal.arn, "started_at": iso_now(), "tty": tty,
        "command": cut_command(req.command), "peer_uid": ctx.peer.uid, "state": "started",
    })


def _withdraw(ctx: Context, req: protocol.StartRequest) -> None:
    """Unlist a session refused after it was listed; it keeps its id until it is refused."""
    try:
        ctx.registry.withdraw(req.session_id, os.getpid(), ctx.peer.uid,
                              pid_start=ctx.pid_start)
    except AgentError as exc:
        _warn(f"session {req.session_id} stays listed until it is refused: {exc}")


def _open_recording(ctx: Context, req: protocol.StartRequest, account: Account, *,
                    base: dict[str, Any]) -> Optional[recording.Recorder]:
    """The session's recording, when recording is on. Raises RecordingFailed when it cannot be
    created and recording.on_failure is `end`; with `continue`, records the failure and returns
    None (the session runs unrecorded, its I/O through the relay all the same)."""
    cfg = ctx.cfg.recording
    if not cfg.enabled:
        return None
    term = req.terminal
    head = recording.header_for(
        width=term.cols if term is not None else 80, height=term.rows if term is not None else 24,
        term=term.term if term is not None else None, shell=account.shell,
        session_id=req.session_id, user=account.name, uid=account.uid,
        principal=req.principal.arn, command=req.command)
    try:
        return recording.Recorder.create(cfg, req.session_id, head)
    except RecordingFailed as exc:
        if cfg.on_failure == "end":
            raise
        _warn(f"session {req.session_id} runs unrecorded: {exc}")
        ctx.audit.record("recording.failed", **base, user=account.name, uid=account.uid,
                         error=str(exc), action="continue")
        return None


class _RecordingSlot:
    """What the relay records into, set up before the recording exists (it is created while
    the shell's process prepares itself, before the relay moves a byte): the recording once
    there; nothing, with the I/O passing, when it could not be created and the session may
    go on unrecorded (recording.on_failure `continue`)."""

    __slots__ = ("recorder",)

    def __init__(self) -> None:
        self.recorder: Optional[recording.Recorder] = None

    def output(self, data: bytes, stream: object = asciicast.OUTPUT) -> bool:
        return True if self.recorder is None else self.recorder.output(data, stream)

    def input(self, data: bytes) -> bool:
        return True if self.recorder is None else self.recorder.input(data)


def _relay(rec: _RecordingSlot, master: Optional[int],
           client_fds: tuple[int, ...]) -> tuple[relay.Relay, tuple[int, ...]]:
    """Put the supervisor between the client and the session: the client gets the relay's fds
    in place of CLIENT_FDS (which the relay holds, or, for a PTY, the supervisor keeps)."""
    if master is not None:
        r, client = relay.for_pty(master, rec.output, rec.input)
        return r, (client,)
    stdin_w, stdout_r, stderr_r = client_fds
    r, fds = relay.for_pipes(stdin_w, stdout_r, stderr_r,
                             on_stdout=lambda d: rec.output(d, "stdout"),
                             on_stderr=lambda d: rec.output(d, "stderr"), on_input=rec.input)
    return r, fds


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _pam_login(ctx: Context, account: Account, tty: Optional[str], *,
               ruser: Optional[str], chan: Channel, sig: Signals,
               before: Callable[[], None]) -> Any:
    """PAM's account and session stages in a root process of their own (agent.pam.open_login),
    never in this one: what the stages set (limits, umask, nice value, groups, loginuid, the
    logind scope) comes back in the returned agent.pam.Opened for the shell alone. None when PAM
    is off or its service is not installed. PAM_RUSER is the principal that asked for the
    session. A `terminate` (signal or control frame) while a module takes its time ends the
    wait at once: Terminated, and the PAM process is killed. BEFORE (session.requested made
    durable) runs while the PAM process prepares itself; PAM begins only once it returned."""
    from agent import pam

    service = ctx.cfg.session.pam_service
    if not pam.wanted(ctx.cfg.session.pam, service, sys_platform=ctx.sys_platform):
        release_ahead(ctx.pam_ahead)
        return None
    return pam.open_login(service, account.name, account.gid, tty=tty, ruser=ruser,
                          groups=account.groups, wake=sig.wake_r,
                          cancelled=lambda: _refuse_if_terminated(chan, sig), lib=ctx.pam_lib,
                          before=before, ahead=ctx.pam_ahead)


def _refuse_if_terminated(chan: Channel, sig: Signals) -> None:
    """Raise Terminated when the session was terminated (SIGTERM from `terminate`, or the
    client's terminate frame) before its shell runs."""
    sig.drain()
    chan.receive()
    if sig.terminate or chan.terminate_held():
        raise Terminated("the session was terminated before its shell started")


def _logind_scope(ctx: Context, path: Optional[str]) -> Optional[str]:
    """PATH, the cgroup the PAM process was moved to, when it is a logind session scope."""
    if path is None or ctx.sys_platform != "linux":
        return None
    from agent import cgroup

    return path if cgroup.is_logind_scope(path) else None


def _join_scope(scope: str, pid: int, pam_pid: int) -> None:
    """The shell's process (PID, at the exec gate) joins the logind scope PAM opened; then the
    PAM process leaves it for this supervisor's cgroup, so that ending the scope's processes
    never ends the process that is to close the PAM session."""
    from agent import cgroup

    try:
        cgroup.move(scope, pid)
    except OSError as exc:
        raise SpawnFailed(f"could not move the session into its logind scope {scope}: "
                          f"{exc}") from exc
    own = cgroup.own_path(cgroup.V2)
    try:
        if own is None:
            raise OSError("this process's cgroup is unknown")
        cgroup.move(own, pam_pid)
    except OSError as exc:
        _warn(f"the PAM process stays in the logind scope {scope}: {exc}")


def _login_record(ctx: Context, pid: int, account: Account, tty: str) -> None:
    """utmp/wtmp/lastlog for a PTY session; a failure is logged, never fatal. Takes at most
    utmp.LOCK_WAIT more than the writes themselves, whatever locks other users hold."""
    from agent import utmp

    try:
        utmp.login_record(pid, account.name, tty, "runas-agent", uid=account.uid,
                          sys_platform=ctx.sys_platform)
    except AgentError as exc:
        _warn(f"login record: {exc}")


def _logout_record(ctx: Context, pid: int, tty: str) -> None:
    """The end of a PTY session in utmp/wtmp, bounded and never fatal like _login_record."""
    from agent import utmp

    try:
        utmp.logout_record(pid, tty, sys_platform=ctx.sys_platform)
    except AgentError as exc:
        _warn(f"logout record: {exc}")


def _open_cgroup(ctx: Context, session_id: str,
                 scope: Optional[str]) -> Optional[SessionCgroup]:
    """The session's own cgroup: SCOPE, the logind scope PAM opened, if any (None where
    cgroups are not usable: the process walk ends the session then). Raises SpawnFailed: with
    cgroups usable, no session runs outside one."""
    if ctx.cgroups is None:
        return None
    from agent import cgroup

    try:
        return cgroup.open_session(ctx.cgroups, session_id, scope=scope)
    except OSError as exc:
        raise SpawnFailed(f"could not create the session's cgroup: {exc}") from exc


def _adopt(cg: SessionCgroup, pid: int) -> None:
    try:
        cg.adopt(pid)
    except OSError as exc:
        raise SpawnFailed(f"could not move the session into its cgroup {cg.path}: {exc}") from exc


def _remove_cgroup(cg: SessionCgroup) -> None:
    try:
        cg.remove()
    except OSError as exc:
        _warn(f"removing the session's cgroup {cg.path}: {exc}")


def become_subreaper(sys_platform: str) -> None:
    """Make this process the subreaper of everything it starts (Linux; elsewhere nothing), or
    raise InternalError."""
    if sys_platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise InternalError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def _feed(fd: int, data: bytes) -> int:
    """Type DATA into the PTY from a child process: a full terminal buffer blocks the writer,
    never the supervisor. Returns the writer's pid."""
    pid = os.fork()
    if pid == 0:
        try:
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:  # the client made the shared master non-blocking
                    select.select([], [fd], [], 1.0)
        finally:
            os._exit(0)
    return pid


def _killpg(pgid: int, signum: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_tracers(pid: int, uid: int, sys_platform: str, deadline: float) -> list[int]:
    """Kill the process that traces PID (the session's shell), then the one that traces that
    process's tracing thread (a tracer stopped in its exit by its own tracer, with
    PTRACE_O_TRACEEXIT, still holds its tracee), and so on, each only if its real uid is UID
    (the account's: whatever it runs, setuid programs included), until DEADLINE (the chain is
    as long as the account makes it); the pids killed. Linux only (none elsewhere)."""
    if sys_platform != "linux" or not hasattr(os, "pidfd_open"):
        return []
    killed: list[int] = []
    target = pid  # the thread whose tracer goes next
    while time.monotonic() < deadline:  # each step kills a process not killed before
        found = _tracer_of(target, uid)
        if found is None:
            break
        thread, process, fd = found
        try:
            # TARGET is a thread of the process killed last: still so (its id not taken by
            # another since it exited), what was read of its tracer is that thread's.
            if killed and _proc_status(target, b"Tgid:") != (killed[-1],):
                break
            if process in killed:
                break
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            break
        finally:
            os.close(fd)
        killed.append(process)
        target = thread
    return killed


def _tracer_of(pid: int, uid: int) -> Optional[tuple[int, int, int]]:
    """(the thread that traces PID, its process, a pidfd of that process), when that process's
    real uid is UID; None when PID is not traced, by such a process, or anything is gone."""
    tracer = _proc_status(pid, b"TracerPid:")  # the tracing thread
    process = _proc_status(tracer[0], b"Tgid:") if tracer and tracer[0] > 0 else ()
    if not process:
        return None
    try:
        fd = os.pidfd_open(process[0])
    except OSError:
        return None
    # With FD open, PID's tracer is still that thread of that process: FD names that very
    # process, not one that took its pid since.
    uids = _proc_status(process[0], b"Uid:")
    if (_proc_status(pid, b"TracerPid:") != tracer
            or _proc_status(tracer[0], b"Tgid:") != process or not uids or uids[0] != uid):
        os.close(fd)
        return None
    return tracer[0], process[0], fd


def _proc_status(pid: int, field: bytes) -> tuple[int, ...]:
    """The numbers of FIELD's line (e.g. b"Uid:") in /proc/PID/status; () when unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(field):
                    return tuple(int(n) for n in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def _tty_activity(path: str) -> float:
    try:
        st = os.stat(path)
    except OSError:
        return 0.0
    return max(st.st_atime, st.st_mtime)


class _Supervision:
    """A started session, from handing it to the client to recording its end."""

    def __init__(self, chan: Channel, req: protocol.StartRequest, ctx: Context,
                 sig: Signals, st: Started, *, base: dict[str, Any]) -> None:
        self.conn, self.req, self.ctx, self.sig, self.st, self.base = (chan.conn, req, ctx, sig,
                                                                       st, base)
        self.chan = chan
        self.cfg = ctx.cfg.session
        self.status: Optional[int] = None  # the shell's wait status, once reaped
        self.hung_up = False  # SIGHUP already sent to the shell's process group
        self.ended = False
        self.feeder: Optional[int] = None
        self.announced = False  # the client has been sent `started`
        self.bad_frames = 0
        self.recheck = (END_RECHECK_SUBREAPER if ctx.sys_platform == "linux"
                        else END_RECHECK_OTHER)
        self.rec_reported = False  # a recording stop or failure is on record

    def run(self) -> int:
        st = self.st
        if st.unlisted is not None:  # the session is not in the registry: it ends
            raise st.unlisted
        if st.profile and st.master is not None:
            # Typed before the client can type anything; by a child, so a full terminal buffer
            # never blocks the supervisor.
            self.feeder = _feed(st.master, st.profile)
            self._wait_feeder(PROFILE_HEAD_START)
        try:
            send(self.conn, protocol.reply(
                "started", session_id=self.req.session_id, user=st.account.name,
                uid=st.account.uid, source=st.source, pid=st.pid, tty=st.slave_path),
                st.client_fds)
        except OSError:
            self.end("hangup", notify=False)
            return 0
        finally:
            for fd in st.client_fds:
                if fd != st.master:
                    os.close(fd)
        self.announced = True
        self.end(self._wait())
        return 0

    def _wait(self) -> str:
        """Wait for the session's end; returns why it ended."""
        st, cfg = self.st, self.cfg
        sel = selectors.DefaultSelector()
        sel.register(self.conn, selectors.EVENT_READ)
        sel.register(self.sig.wake_r, selectors.EVENT_READ)
        started_mono, started_wall = time.monotonic(), time.time()
        idle = cfg.idle_timeout if st.slave_path is not None else 0.0
        rec, io_relay = st.recorder, st.io_relay
        try:
            held = self._apply_control()  # what the client sent while the session started
            if held is not None:
                return held
            while True:
                if self._reap_children():
                    return "exited"
                if self.sig.terminate:
                    return "terminated"
                if rec is not None:
                    if rec.flush_due() == 0.0:
                        rec.flush()
                    why = self._recording_state()
                    if why is not None:
                        return why
                if io_relay is not None:
                    io_relay.sync(sel)
                timeout: Optional[float] = None
                if cfg.max_duration > 0:
                    timeout = started_mono + cfg.max_duration - time.monotonic()
                    if timeout <= 0:
                        return "max_duration"
                if idle > 0 and st.slave_path is not None:
                    last = max(started_wall, _tty_activity(st.slave_path))
                    if time.time() - last >= idle:
                        return "idle_timeout"
                    timeout = IDLE_CHECK if timeout is None else min(timeout, IDLE_CHECK)
                due = rec.flush_due() if rec is not None else None
                if due is not None:
                    timeout = due if timeout is None else min(timeout, due)
                for key, mask in sel.select(timeout):
                    if key.data == "relay":
                        assert io_relay is not None
                        io_relay.handle(key.fd, mask)
                    elif key.fileobj is self.conn:
                        reason = self._control()
                        if reason is not None:
                            return reason
                    else:
                        self.sig.drain()
        finally:
            if io_relay is not None:
                io_relay.unregister(sel)
            sel.close()

    def _recording_state(self) -> Optional[str]:
        """Record (once) that the recording stopped at its limit or failed; returns an end
        reason when the config says the session ends then."""
        rec = self.st.recorder
        if rec is None or self.rec_reported or (rec.stopped is None and rec.failed is None):
            return None
        self.rec_reported = True
        rcfg = self.ctx.cfg.recording
        user = {"user": self.st.account.name, "uid": self.st.account.uid}
        if rec.failed is not None:
            action = rcfg.on_failure
            _warn(f"session {self.req.session_id}: recording failed ({rec.failed}); {action}")
            self._audit("recording.failed", **user, error=rec.failed, action=action,
                        recording=rec.summary().as_record())
            if action == "end":
                return "recording_failed"
            rec.stop_writing()
            return None
        action = rcfg.on_limit
        self._audit("recording.stopped", **user, cause=rec.stopped, action=action,
                    max_bytes=rcfg.max_bytes, recording=rec.summary().as_record())
        return "recording_limit" if action == "end" else None

    def _audit(self, event: str, **fields: Any) -> None:
        try:
            self.ctx.audit.record(event, **self.base, **fields)
        except AuditFailed as exc:
            _warn(f"{event} not recorded: {exc}")

    def _reap_children(self) -> bool:
        """Reap exited children other than the shell (orphans in end mode `all`, the profile
        writer); when the shell has exited, hang up its group first, then reap it. True then."""
        if not hasattr(os, "waitid"):  # macOS before Python 3.13: no orphans come to us there
            if self.feeder is not None and os.waitpid(self.feeder, os.WNOHANG)[0]:
                self.feeder = None
            got, status = os.waitpid(self.st.pid, os.WNOHANG)
            if got == self.st.pid:
                self.status = status
                self._hang_up_group()
                return True
            return False
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return self.status is not None
            if info is None:
                return False
            if info.si_pid != self.st.pid:
                _, status = os.waitpid(info.si_pid, 0)
                self._reaped(info.si_pid, status)
                continue
            # Still a zombie, so its pid (the group's id) cannot have been reused.
            self._hang_up_group()
            _, self.status = os.waitpid(self.st.pid, 0)
            return True

    def _control(self) -> Optional[str]:
        """Handle what the client sent; returns an end reason or None."""
        self.chan.receive()
        return self._apply_control()

    def _apply_control(self) -> Optional[str]:
        """Apply the held control frames in order; returns an end reason or None."""
        held = self.chan.held
        while held:
            ctl = held.pop(0)
            if isinstance(ctl, AgentError):
                self.bad_frames += 1
                if self.bad_frames > MAX_BAD_CONTROL:
                    return "hangup"
                self._error_nowait(ctl)
            elif isinstance(ctl, protocol.TerminateControl):
                return "terminated"
            elif self.st.master is not None:
                from agent import terminal

                try:
                    terminal.set_window_size(self.st.master, ctl.rows, ctl.cols)
                except OSError as exc:
                    _warn(f"resize: {exc}")
                else:
                    if self.st.recorder is not None:
                        self.st.recorder.resize(ctl.rows, ctl.cols)
        return "hangup" if self.chan.hung_up else None

    def _error_nowait(self, exc: AgentError) -> None:
        """An error reply that is dropped if the client is not reading."""
        try:
            self.conn.send(protocol.encode(protocol.error_reply(exc.reason, str(exc))),
                           socket.MSG_DONTWAIT)
        except OSError:
            pass

    def _hang_up_group(self) -> None:
        if not self.hung_up:
            self.hung_up = True
            _killpg(self.st.pid, signal.SIGHUP)
            _killpg(self.st.pid, signal.SIGCONT)

    def end(self, reason: str, *, notify: bool = True) -> None:
        """End the session (if it is not over) and everything it left, within one grace
        period; then record the end, tell the client, and release the session's resources."""
        if self.ended:
            return
        self.ended = True
        from agent import spawn

        deadline = time.monotonic() + self.cfg.grace_period
        if self.status is None:
            self._hang_up_group()
            self._wait_for(lambda: self.status is not None, deadline)
        if self.status is None:
            _killpg(self.st.pid, signal.SIGKILL)
            # A process that traces the shell and never waits keeps the dead shell's exit
            # from this supervisor, its parent, for good: one of the account's that has not
            # let it go within a moment is killed, with any tracer of its own (the shell is
            # then released to us); no wait here is unbounded.
            # Looked for again and again: another process of the account may attach to the
            # dying shell once its tracer is gone.
            if not self._wait_for(lambda: self.status is not None,
                                  time.monotonic() + TRACER_GRACE):
                self._end_tracers(time.monotonic() + KILLED_WAIT)
        status = self.status
        self._end_the_rest(deadline)
        exit_status = (spawn.describe_status(status) if status is not None
                       else {"code": None, "signal": None})
        recorded: dict[str, Any] = {}
        if self.st.io_relay is not None:
            # What the session wrote last reaches the client (and the recording) before the
            # end, within a bounded time; then the client's fds reach end-of-file.
            self.st.io_relay.drain(time.monotonic() + SEND_TIMEOUT)
            self.st.io_relay.close()
        if self.st.recorder is not None:
            recorded["recording"] = self.st.recorder.close(reason, exit_status).as_record()
            self._recording_state()  # a stop or failure not on record yet (the last write's)
        recorded.update(self._close_pam())
        try:
            self.ctx.audit.record("session.ended", **self.base, user=self.st.account.name,
                                  uid=self.st.account.uid, source=self.st.source, reason=reason,
                                  exit_status=exit_status, **recorded)
        except AuditFailed as exc:
            _warn(f"session.ended not recorded: {exc}")
        # Over: not counted as a live session from now on, though this process lives a moment
        # longer (its client may start the next session as soon as it has the exit status).
        procname.set_name(procname.ENDED, self.ctx.sys_platform)
        if notify and reason != "hangup":
            msg = (protocol.reply("exit", session_id=self.req.session_id, reason=reason,
                                  **exit_status) if self.announced else
                   protocol.error_reply("internal_error", f"the session failed ({reason})"))
            try:
                send(self.conn, msg)
            except OSError:
                pass
        # The connection ends only once the session is unlisted: a client that has seen its
        # end never finds the session in a list.
        self._release()
        self.conn.close()

    def _end_tracers(self, deadline: float) -> None:
        """Until the killed shell's status comes or DEADLINE: kill the account's processes
        that trace it (agent.session._kill_tracers), every TRACER_RECHECK seconds; then, if it
        never came, say so (the session ends with its status unknown)."""
        logged: set[int] = set()  # a tracer killed a moment ago may not be gone yet
        while True:
            for tracer in _kill_tracers(self.st.pid, self.st.account.uid,
                                        self.ctx.sys_platform, deadline):
                if tracer not in logged:
                    logged.add(tracer)
                    if len(logged) <= TRACERS_LOGGED:  # the rest are counted, not listed
                        self._log_warning("session.tracer_killed", shell_pid=self.st.pid,
                                          tracer_pid=tracer)
            reaped = self._wait_for(lambda: self.status is not None,
                                    min(deadline, time.monotonic() + TRACER_RECHECK))
            if reaped or time.monotonic() >= deadline:
                break
        if len(logged) > TRACERS_LOGGED:
            self._log_warning("session.tracers_killed", shell_pid=self.st.pid,
                              count=len(logged))
        if not reaped:
            self._log_warning("session.shell_not_reaped", shell_pid=self.st.pid,
                              detail="the shell was killed but its exit status never came; "
                                     "the session ends with its status unknown")

    def _wait_feeder(self, timeout: float) -> None:
        """Give the profile a head start over the client's typing (it completes at once unless
        it is larger than the terminal's input buffer)."""
        deadline = time.monotonic() + timeout
        while self.feeder is not None and time.monotonic() < deadline:
            if os.waitpid(self.feeder, os.WNOHANG)[0]:
                self.feeder = None
                return
            time.sleep(0.001)

    def _wait_for(self, done: Callable[[], bool], deadline: float) -> bool:
        """Reap the session's processes as they exit until DONE() or DEADLINE; woken by
        SIGCHLD (through the signal wake-up pipe), not by polling. True if DONE()."""
        sel = selectors.DefaultSelector()
        sel.register(self.sig.wake_r, selectors.EVENT_READ)
        try:
            while True:
                self._reap_exited()
                if done():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if sel.select(min(left, self.recheck)):
                    self.sig.drain()  # before reaping: a later exit writes the pipe again
        finally:
            sel.close()

    def _reap_exited(self) -> None:
        """Reap every child that has exited (the shell's group was hung up before)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.st.pid:
                self.status = status
            else:
                self._reaped(pid, status)

    def _reaped(self, pid: int, status: int) -> None:
        """PID, a child other than the shell, was reaped with wait status STATUS. The PAM
        process ending before it was told to close (killed, crashed) is logged at once, and
        session.ended says the PAM session was not closed."""
        if pid == self.feeder:
            self.feeder = None
            return
        pam = self.st.pam
        if pam is None or pid != pam.pid:
            return
        from agent.pam import describe_status

        pam.process.ended(status)
        self._log_warning("session.pam_process_ended", pam_pid=pid,
                          status=describe_status(status),
                          detail="pam_close_session will not run for this session")

    def _log_warning(self, event: str, **fields: Any) -> None:
        log = self.ctx.log
        if log is None:
            _warn(f"{event}: " + " ".join(f"{k}={v}" for k, v in fields.items()))
            return
        log.warning(event, session_id=self.req.session_id, **fields)

    def _close_pam(self) -> dict[str, Any]:
        """End the PAM session (before session.ended, which says whether it was): the fields
        `pam_closed` and, when it was not, `pam_error` (none with PAM off)."""
        pam = self.st.pam
        if pam is None:
            return {}
        try:
            pam.close()
        except AgentError as exc:
            self._log_warning("session.pam_not_closed", error=exc.message)
            return {"pam_closed": False, "pam_error": exc.message}
        return {"pam_closed": True}

    def _end_the_rest(self, deadline: float) -> None:
        """What the shell left: its process group (or, in end mode `all`, everything the
        session started) gets SIGHUP, and SIGKILL if still there at DEADLINE."""
        pgid = self.st.pid
        self._hang_up_group()
        # (a group that is gone is never signalled again: its id may be reused)
        if not self._wait_for(lambda: not _killpg(pgid, 0), deadline):
            _killpg(pgid, signal.SIGKILL)
        if self.feeder is not None:  # still our unreaped child: its pid cannot be reused
            os.kill(self.feeder, signal.SIGKILL)
        if self.cfg.end_mode == "all":
            grace = max(0.0, deadline - time.monotonic())
            cg = self.st.cgroup
            if cg is None or not cg.end(grace):
                _kill_descendants(grace, self._reaped, spare=self.st.pam)
        _reap_all(self._reaped)
        if self.st.cgroup is not None:
            _remove_cgroup(self.st.cgroup)

    def _release(self) -> None:
        st = self.st
        if st.slave_path is not None:
            _logout_record(self.ctx, os.getpid(), st.slave_path)
        if st.master is not None:
            try:
                os.close(st.master)
            except OSError:
                pass
        self.ctx.registry.remove(self.req.session_id)


def _reap_all(reaped: Callable[[int, int], None]) -> None:
    """Reap every child that has exited, each told to REAPED(pid, wait status)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reaped(pid, status)


def _kill_descendants(grace: float, reaped: Callable[[int, int], None], *,
                      spare: Any = None) -> None:
    """Kill every process left under this supervisor (it is their subreaper): SIGHUP first,
    SIGKILL for whatever is still there after GRACE. SPARE (agent.pam.Opened): its PAM process
    is not the session's, and ends the PAM session after this. Children that exit are reaped
    (REAPED), never waited for: a dead child that a tracer holds cannot be reaped by its parent,
    so a zombie counts as gone, and every wait here has its end."""
    import psutil

    me = psutil.Process()
    spared = {spare.pid} if spare is not None else set()

    def children() -> list[psutil.Process]:
        return [p for p in me.children(recursive=True) if p.pid not in spared and _running(p)]

    def wait(until: float) -> None:
        while True:
            _reap_all(reaped)
            if not children() or time.monotonic() >= until:
                return
            time.sleep(0.01)

    kids = children()
    for p in kids:
        try:
            p.send_signal(signal.SIGHUP)
            p.send_signal(signal.SIGCONT)
        except psutil.Error:
            pass
    if kids:
        wait(time.monotonic() + grace)
    for _ in range(50):  # processes may fork while being killed; go until none is left
        left = children()
        if not left:
            break
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        wait(time.monotonic() + 0.1)


def _running(p: Any) -> bool:
    """Whether the psutil Process P is still there and not a zombie."""
    import psutil

    try:
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
