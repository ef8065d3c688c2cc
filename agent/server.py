"""The daemon: one single-threaded event loop on the Unix socket.

For every connection: read the peer's credentials from the kernel and check them before reading
anything; enforce the connection limit and a read deadline; parse exactly one request frame; then
either answer it (ping, list, terminate) or give the connection to the session's supervisor
(start), which takes it over. The daemon itself never drops privileges and never waits on a
session.

The supervisor is forked ahead of its request: a spare, waiting on a socket pair only the daemon
holds the other end of, receives the connection (SCM_RIGHTS), the peer's credentials as the
daemon read them, the start request and any bytes that followed it; the daemon forks the next
spare after handing over. Without a spare (its fork failed, or it died), the start forks its
supervisor itself, as before. A spare is the daemon's child in its own session, as a supervisor
is; it exits when its channel ends (the daemon stopped, crashed or let it go on reload), so it
never outlives the daemon, while the supervisors it became do.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, field

from agent import procname, protocol
from agent.errors import (
    AgentError,
    BadRequest,
    ConfigError,
    LimitReached,
    Unauthorized,
)
from agent.peer import may_see
from agent.session import drain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Callable, Optional

    from agent.audit import AuditLog
    from agent.cgroup import Setup
    from agent.config import Config
    from agent.peer import Peer
    from agent.platform import Platform
    from agent.registry import Registry


@dataclass
class _Conn:
    sock: socket.socket
    peer: Peer
    deadline: float
    decoder: protocol.FrameDecoder
    out: bytes = b""  # a reply being written; the connection closes once it is sent
    request: Optional[dict[str, Any]] = None  # the request frame, once read


@dataclass
class _Spare:
    """A supervisor forked ahead of demand, waiting for a connection on its channel."""

    pid: int
    chan: socket.socket  # the daemon's end of their socket pair


ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of file descriptors
HANDOVER_TIMEOUT = 2.0  # seconds a handover to the spare supervisor may take
SPARE_EXIT_WAIT = 1.0  # seconds a stopping daemon waits for its spare to exit
SPARE_NAME = procname.SPARE  # an idle spare's process name (ps, /proc/PID/comm; Linux)
HANDOVER_MAX = 1 << 24  # the largest handover frame a spare accepts


@dataclass
class Daemon:
    cfg: Config
    listener: socket.socket
    platform: Platform
    audit: AuditLog
    registry: Registry
    log: Any
    reload: Callable[[], Config]
    on_ready: Callable[[], None] = lambda: None
    on_stopping: Callable[[], None] = lambda: None
    sys_platform: str = sys.platform
    cgroups: Optional[Setup] = None  # set up for end mode `all` (agent.cgroup)
    _cgroups_tried: bool = False
    _pam_lib: Any = None  # libpam with the service's modules, loaded before the first fork
    _conns: dict[int, _Conn] = field(default_factory=dict)
    # This daemon's supervisors: pid -> the uid of the peer that started the session.
    _children: dict[int, int] = field(default_factory=dict)
    # Supervisors of sessions started before this daemon process (pid -> start time, peer uid);
    # only they need the registry: this daemon's own are its children.
    _foreign: dict[int, tuple[Optional[float], Optional[int]]] = field(default_factory=dict)
    # The supervisor of the next session, forked before it is asked for (off the start's path).
    _spare: Optional[_Spare] = None
    _want_spare: bool = False
    _retired: set[int] = field(default_factory=set)  # spares let go, not reaped yet
    # `list` requests per peer uid: uid -> (what is left of its burst, when that was counted,
    # whether its last one was refused).
    _lists: dict[int, tuple[float, float, bool]] = field(default_factory=dict)
    _wake: tuple[int, ...] = ()
    _accept_paused_until: float = 0.0
    _stop: bool = False
    _hup: bool = False

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        self._wake = (wake_r, wake_w)
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        _warn_unknown_groups(self.cfg, self.log)
        _warn_unguarded_ptys(self.log)
        self.listener.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "listen")
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        live = self.registry.live(include_starting=True)
        self._foreign = {int(r["pid"]): (r.get("pid_start"), _peer_uid(r)) for r in live}
        self.log.info("daemon.ready", pid=os.getpid(), sessions=len(live))
        self._setup_cgroups()
        self._pam_lib = prepare_for_fork(end_mode_all=self.cfg.session.end_mode == "all",
                                         sys_platform=self.sys_platform,
                                         pam_service=self._pam_service(), log=self.log)
        self._fork_spare(sel)
        self.on_ready()
        try:
            while not self._stop:
                for key, mask in sel.select(self._next_deadline()):
                    self._event(sel, key, mask)
                self._reap()
                if self._want_spare and not self._stop:
                    self._fork_spare(sel)
                self._expire(sel)
                self._resume_accepting(sel)
                if self._hup:
                    self._hup = False
                    self._reload()
        finally:
            self.on_stopping()
            self.log.info("daemon.stopping", live_sessions=len(self._children))
            self._drop_spare(wait=SPARE_EXIT_WAIT)
            if self.cgroups is not None:
                from agent import cgroup

                cgroup.release(self.cgroups)
            for c in list(self._conns.values()):
                self._close(sel, c)
            sel.close()
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
        return 0

    def _event(self, sel: selectors.BaseSelector, key: selectors.SelectorKey, mask: int) -> None:
        """One event; nothing a connection does may take the loop down."""
        try:
            if key.data == "listen":
                self._accept(sel)
            elif key.data == "wake":
                drain(key.fd)
            elif mask & selectors.EVENT_WRITE:
                self._writable(sel, key.data)
            else:
                self._readable(sel, key.data)
        except Exception as exc:
            self._failed(sel, key.data, exc)

    def _failed(self, sel: selectors.BaseSelector, data: Any, exc: Exception) -> None:
        self.log.exception("connection.failed", error=str(exc))
        if isinstance(data, _Conn):
            self._close(sel, data)

    # -- signals ----------------------------------------------------------------------------

    def _on_term(self, *_: object) -> None:
        self._stop = True

    def _on_hup(self, *_: object) -> None:
        self._hup = True

    def _reload(self) -> None:
        try:
            cfg = self.reload()
        except ConfigError as exc:
            self.log.error("config.reload_failed", error=str(exc))
            return
        if cfg.socket != self.cfg.socket:
            self.log.warning("config.socket_changed", detail="restart the daemon to apply")
        if (cfg.audit, cfg.session.state_dir) != (self.cfg.audit, self.cfg.session.state_dir):
            self.log.warning("config.paths_changed", detail="audit.path and session.state_dir "
                             "apply after a restart")
            cfg = _keep_paths(cfg, self.cfg)
        self.cfg = cfg
        _warn_unknown_groups(cfg, self.log)
        self._setup_cgroups()
        # The spare was forked with the old configuration: a new one takes its place.
        self._drop_spare()
        self._want_spare = True
        self.log.info("config.reloaded")

    def _pam_service(self) -> Optional[str]:
        """The PAM service sessions go through, None when PAM is off (agent.pam.wanted)."""
        from agent import pam

        service = self.cfg.session.pam_service
        try:
            wanted = pam.wanted(self.cfg.session.pam, service, sys_platform=self.sys_platform)
        except AgentError:
            return None  # an invalid name: each session reports it
        return service if wanted else None

    def _setup_cgroups(self) -> None:
        """For end mode `all` (once): the sessions' cgroups, or a warning that ending every
        process of a session is best-effort here (the process walk)."""
        if self.cfg.session.end_mode != "all" or self._cgroups_tried:
            return
        self._cgroups_tried = True
        from agent import cgroup

        if self.sys_platform != "linux":  # said at start-up (config.platform_warnings)
            return
        got = cgroup.setup()
        if isinstance(got, cgroup.Unavailable):
            self.log.warning("cgroup.unavailable", detail=got.describe() + "; sessions end "
                             "with the process walk")
            return
        self.cgroups = got
        self.log.info("cgroup.ready", kind=got.kind, sessions=got.dir(got.layout.sessions),
                      daemon=got.dir(got.layout.daemon), swept=cgroup.sweep(got))

    # -- connections ------------------------------------------------------------------------

    def _accept(self, sel: selectors.BaseSelector) -> None:
        from agent.peer import authorized, read_peer

        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The pending connection stays queued; stop polling the listener for a
                    # moment instead of spinning on it.
                    self.log.error("connection.accept_failed", error=exc.strerror)
                    sel.unregister(self.listener)
                    self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                    return
                raise
            try:
                peer = read_peer(sock, self.sys_platform)
            except (OSError, AgentError) as exc:
                self.log.warning("connection.peer_unknown", error=str(exc))
                sock.close()
                continue
            # The group names are looked up now, and only for a peer neither root nor an
            # allowed uid: a group deleted and its id given to a new group allows nobody.
            if not authorized(peer, self.cfg.peers.allowed_uids,
                              _group_ids(self.cfg.peers.allowed_groups)):
                self.log.warning("connection.unauthorized", peer_uid=peer.uid, peer_pid=peer.pid,
                                 peer_gid=peer.gid, peer_groups=list(peer.groups))
                self._refuse(sock, Unauthorized(f"uid {peer.uid} may not use this agent"))
                continue
            if len(self._conns) >= self.cfg.limits.max_connections:
                self.log.warning("connection.limit_reached", peer_uid=peer.uid)
                self._refuse(sock, LimitReached("too many connections; try again"))
                continue
            share = self.cfg.limits.peer_share()
            if peer.uid != 0 and sum(c.peer.uid == peer.uid for c in self._conns.values()) >= share:
                self.log.warning("connection.peer_limit_reached", peer_uid=peer.uid, share=share)
                self._refuse(sock, LimitReached(
                    f"uid {peer.uid} already has {share} connections open; try again"))
                continue
            sock.setblocking(False)
            conn = _Conn(sock, peer, time.monotonic() + self.cfg.limits.read_timeout,
                         protocol.FrameDecoder(self.cfg.limits.max_frame))
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)
            # A client sends its request as soon as it is connected: read it now, not a turn of
            # the loop later (when nothing is there yet, the loop reads it once it comes).
            try:
                self._readable(sel, conn)
            except Exception as exc:
                self._failed(sel, conn, exc)

    def _resume_accepting(self, sel: selectors.BaseSelector) -> None:
        if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            sel.register(self.listener, selectors.EVENT_READ, "listen")

    def _refuse(self, sock: socket.socket, exc: AgentError) -> None:
        """Best effort: one small error frame into a fresh socket's empty buffer, then close."""
        try:
            sock.setblocking(False)
            sock.send(protocol.encode(protocol.error_reply(exc.reason, str(exc))))
        except OSError:
            pass
        sock.close()

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _answer(self, sel: selectors.BaseSelector, conn: _Conn, msg: dict[str, Any]) -> None:
        """Queue a reply; the loop writes it as the peer reads, within the connection deadline."""
        conn.out = protocol.encode(msg)
        conn.deadline = time.monotonic() + self.cfg.limits.read_timeout
        sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._writable(sel, conn)

    def _writable(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(sel, conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(sel, conn)

    def _next_deadline(self) -> Optional[float]:
        if self._want_spare:
            return 0.0  # forked at the end of the next turn of the loop
        deadlines = [c.deadline for c in self._conns.values()]
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.log.info("connection.timed_out", peer_uid=conn.peer.uid, writing=bool(conn.out))
            if conn.out:
                self._close(sel, conn)
                continue
            self._detach(sel, conn)
            self._refuse(conn.sock, BadRequest("no complete request within the read timeout"))

    def _detach(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """Stop watching CONN (it is answered or handed over next)."""
        self._conns.pop(conn.sock.fileno(), None)
        sel.unregister(conn.sock)

    def _readable(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(sel, conn)
            return
        if not data:
            self._close(sel, conn)
            return
        try:
            conn.decoder.push(data)
            msg = conn.decoder.pop()
            if msg is None:
                return
            req = protocol.parse_request(msg)
            conn.request = msg
            # After a start, the connection is the session's control channel: what follows
            # stays in the decoder for the supervisor. Other requests come alone.
            if conn.decoder.pending and not isinstance(req, protocol.StartRequest):
                raise BadRequest("one request per connection")
        except AgentError as exc:
            self.log.info("request.rejected", peer_uid=conn.peer.uid, reason=exc.reason,
                          error=str(exc))
            self._detach(sel, conn)
            self._refuse(conn.sock, exc)
            return
        try:
            self._dispatch(sel, conn, req)
        except AgentError as exc:
            self._answer(sel, conn, protocol.error_reply(exc.reason, str(exc)))

    # -- requests ---------------------------------------------------------------------------

    def _dispatch(self, sel: selectors.BaseSelector, conn: _Conn, req: Any) -> None:
        from agent import __version__

        if isinstance(req, protocol.StartRequest):
            self._detach(sel, conn)
            try:
                self._start(sel, conn, req)
            except AgentError as exc:
                self._refuse(conn.sock, exc)
            return
        if isinstance(req, protocol.PingRequest):
            msg = protocol.reply("pong", version=__version__, pid=os.getpid())
        elif isinstance(req, protocol.ListRequest):
            self._count_list(conn.peer)
            admin = self._is_admin(conn.peer)
            msg = protocol.reply("sessions", sessions=[
                _public(r) for r in self.registry.live() if may_see(conn.peer, r, admin)])
        elif isinstance(req, protocol.TerminateRequest):
            self._terminate(req.session_id, conn.peer)
            msg = protocol.reply("ok", session_id=req.session_id)
        else:  # pragma: no cover - parse_request returns only the types above
            raise BadRequest("unsupported request")
        self._answer(sel, conn, msg)

    def _count_list(self, peer: Peer) -> None:
        """Raise LimitReached when PEER (root excepted) has made `list` requests faster than
        limits.list_rate_per_peer a second, in bursts of as many: each one reads every live
        session's record, so one peer's flood would delay every other peer's requests."""
        rate = self.cfg.limits.list_rate_per_peer
        if peer.uid == 0 or rate <= 0:
            return
        now = time.monotonic()
        burst = max(1.0, rate)
        tokens, at, refusing = self._lists.get(peer.uid, (burst, now, False))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._lists[peer.uid] = (tokens, now, True)
            if not refusing:  # logged once per run of refusals: a flood floods no log
                self.log.warning("connection.list_rate_reached", peer_uid=peer.uid, rate=rate)
            raise LimitReached(f"uid {peer.uid} asked for the session list more than {rate:g} "
                               "times a second; try again in a moment")
        self._lists[peer.uid] = (tokens - 1.0, now, False)

    def _is_admin(self, peer: Peer) -> bool:
        """Resolved by name at each decision, never from ids kept since the last load: a group
        deleted and its id given to a new group makes that group's members no admins. A name
        that no longer resolves grants nothing."""
        from agent.peer import is_admin

        return is_admin(peer, _group_ids(self.cfg.peers.admin_groups))

    def _terminate(self, session_id: str, peer: Peer) -> None:
        """Terminate a session PEER may see. Every request is audited (durably, before anything
        is signalled), allowed or not; a session PEER may not see is reported exactly as one that
        does not exist."""
        from agent.errors import SessionNotFound

        try:
            rec: Optional[dict[str, Any]] = self.registry.get(session_id)
        except SessionNotFound:
            rec = None
        allowed = rec is not None and may_see(peer, rec, self._is_admin(peer))
        self.log.info("session.terminate_requested", session_id=session_id, peer_uid=peer.uid,
                      peer_pid=peer.pid, allowed=allowed)
        self.audit.record("session.terminate_requested", session_id=session_id,
                          peer_uid=peer.uid, peer_pid=peer.pid, allowed=allowed)
        if rec is None or not allowed:
            raise SessionNotFound(f"no live session {session_id!r} on this node")
        if not signal_process(int(rec["pid"]), rec.get("pid_start"), signal.SIGTERM):
            raise SessionNotFound(f"no live session {session_id!r} on this node")

    def _live_sessions(self, *, exact: bool = False) -> list[Optional[int]]:
        """The peer uid of every live session (None: a record that does not say).
        O(sessions started elsewhere) system calls, not O(all live sessions): reading every
        record on each start cost 60 ms per start with 1000 live sessions (bench/run,
        docs/performance.md). EXACT (at a limit): also read each supervisor's name, and leave
        out those whose session has ended but which have not exited yet."""
        from agent.registry import process_start_time

        for pid, (start, _owner) in list(self._foreign.items()):
            if pid in self._children or process_start_time(pid) != start:
                del self._foreign[pid]
        children = [owner for pid, owner in self._children.items()
                    if not exact or procname.name_of(pid, self.sys_platform) != procname.ENDED]
        return [*children, *(owner for _start, owner in self._foreign.values())]

    def _start(self, sel: selectors.BaseSelector, conn: _Conn, req: protocol.StartRequest) -> None:
        limit = self.cfg.session.max_sessions
        share = self.cfg.session.peer_share()
        uid = conn.peer.uid
        owners = self._live_sessions()
        if len(owners) >= limit or (uid != 0 and owners.count(uid) >= share):
            # A supervisor whose session has ended is not a live session, whether the loop has
            # reaped it yet or not: its client may have its exit status and be starting the
            # next one already.
            self._reap()
            owners = self._live_sessions(exact=True)
        if len(owners) >= limit:
            exc = LimitReached(f"the node's limit of {limit} live sessions is reached")
            self._audit_denied(conn, req, exc)
            raise exc
        # One peer cannot take every session: the same rule as for connections, root excepted.
        if uid != 0 and owners.count(uid) >= share:
            self.log.warning("session.peer_limit_reached", peer_uid=uid, share=share)
            exc = LimitReached(f"uid {uid} already has {share} live sessions; try again later")
            self._audit_denied(conn, req, exc)
            raise exc
        if self._spare is not None and self._hand_over(conn):
            return
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN (process limit), ENOMEM
            self.log.error("session.fork_failed", session_id=req.session_id, error=str(exc))
            err = LimitReached(f"cannot start a session process: {exc.strerror or exc}")
            self._audit_denied(conn, req, err)
            raise err from None
        if pid == 0:  # the supervisor
            code = 1
            try:
                code = self._become_supervisor(sel, conn, req)
            except BaseException as exc:
                try:
                    self.log.exception("session.supervisor_failed", session_id=req.session_id,
                                       error=str(exc))
                finally:
                    os._exit(1)
            finally:
                os._exit(code)
        self._children[pid] = conn.peer.uid
        conn.sock.close()
        self._want_spare = True

    def _audit_denied(self, conn: _Conn, req: protocol.StartRequest, exc: AgentError) -> None:
        """A start the daemon refuses itself: requested and denied, as a supervisor records."""
        base = {"session_id": req.session_id, "principal": req.principal.arn,
                "peer_uid": conn.peer.uid}
        try:
            self.audit.record("session.requested", **base)
            self.audit.record("session.denied", **base, reason=exc.reason)
        except AgentError as audit_exc:
            self.log.error("audit.failed", error=str(audit_exc))

    def _become_supervisor(self, sel: selectors.BaseSelector, conn: _Conn,
                           req: protocol.StartRequest) -> int:
        from agent import session

        self._release_inherited(sel)  # before this process creates any descriptor
        # Replace the daemon's handlers with the supervisor's at once (never SIG_DFL in
        # between: a `terminate` arriving now must end the session, not kill its supervisor).
        sig = session.Signals()
        os.setsid()  # out of the daemon's process group: restarts and ^C do not reach it
        ctx = session.Context(self.cfg, self.platform, self.audit, self.registry, conn.peer,
                              self.sys_platform, self.cgroups, self.log, self._pam_lib)
        return session.run(conn.sock, req, ctx, sig, conn.decoder)

    # -- the spare supervisor ------------------------------------------------------------------

    def _fork_spare(self, sel: selectors.BaseSelector) -> None:
        """Fork the supervisor of the next session ahead of its request. Best effort: without
        a spare, a start forks its supervisor itself."""
        self._want_spare = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            self.log.warning("spare.fork_failed", error=str(exc))
            return
        if pid == 0:  # the spare
            code = 1
            try:
                ours.close()
                code = self._become_spare(sel, theirs)
            except BaseException as exc:
                try:
                    self.log.exception("session.supervisor_failed", error=str(exc))
                finally:
                    os._exit(1)
            finally:
                os._exit(code)
        theirs.close()
        ours.settimeout(HANDOVER_TIMEOUT)
        self._spare = _Spare(pid, ours)

    def _hand_over(self, conn: _Conn) -> bool:
        """Give CONN, its peer and its start request to the spare, which becomes the session's
        supervisor. False (the spare let go) if the spare cannot take it."""
        spare, self._spare = self._spare, None
        if spare is None or conn.request is None:  # pragma: no cover - checked by the caller
            return False
        pending = conn.decoder.buffered()
        head = protocol.encode({
            "peer": [conn.peer.pid, conn.peer.uid, conn.peer.gid, list(conn.peer.groups)],
            "request": conn.request, "max_frame": conn.decoder.max_frame,
            "pending": len(pending)})
        try:
            data = head + pending
            sent = socket.send_fds(spare.chan, [data], [conn.sock.fileno()])
            if sent < len(data):  # (never send nothing: a spare done reading may have closed)
                spare.chan.sendall(data[sent:])
        except OSError as exc:
            # An incomplete handover is dropped by the spare (it runs nothing then).
            self.log.warning("spare.handover_failed", pid=spare.pid, error=str(exc))
            self._retire(spare)
            return False
        spare.chan.close()
        self._children[spare.pid] = conn.peer.uid
        conn.sock.close()
        self._want_spare = True
        return True

    def _retire(self, spare: _Spare) -> None:
        """Let SPARE go: at the end of its channel it exits (reaped with the other children)."""
        spare.chan.close()
        self._retired.add(spare.pid)

    def _drop_spare(self, *, wait: float = 0.0) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        self._retire(spare)
        deadline = time.monotonic() + wait
        while wait and spare.pid in self._retired and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.005)

    def _become_spare(self, sel: selectors.BaseSelector, chan: socket.socket) -> int:
        """In the forked spare: the supervisor's set-up (as _become_supervisor), then wait for
        a session. Only the daemon holds the other end of CHAN: nothing else can reach it."""
        from agent import session

        self._release_inherited(sel)
        sig = session.Signals()
        os.setsid()
        name = procname.set_name(SPARE_NAME, self.sys_platform)
        preforked = _prefork(self.log)
        pam_ahead = self._prefork_pam()
        pty_ahead = _pty_ahead(self.log)  # after the forks: those processes never hold it
        # What the session's start would do first, done while nobody waits for it.
        from agent.registry import process_start_time

        pid_start = process_start_time(os.getpid())
        try:
            session.become_subreaper(self.sys_platform)
            subreaper = True
        except AgentError:  # the start tries again, and fails on record
            subreaper = False
        if not _pending(chan):  # with a session waiting already, there is no time to save
            try:
                session.rehearse(self.cfg, self.platform)
            except Exception as exc:  # it only saves time: the session's own steps decide
                self.log.warning("spare.rehearsal_failed", error=str(exc))
        got = _await_handover(chan, sig)
        chan.close()
        if got is None:  # the daemon let it go, or is gone
            session.release_ahead(preforked, pam_ahead, pty_ahead)
            return 0
        sock, peer, msg, decoder = got
        procname.set_name(name, self.sys_platform)
        try:
            # The daemon parsed the same object with the same code: this cannot fail.
            req = protocol.parse_request(msg)
            if not isinstance(req, protocol.StartRequest):
                raise BadRequest("a spare supervisor runs start requests only")
        except AgentError as exc:
            session.release_ahead(preforked, pam_ahead, pty_ahead)
            self._refuse(sock, exc)
            return 1
        ctx = session.Context(self.cfg, self.platform, self.audit, self.registry, peer,
                              self.sys_platform, self.cgroups, self.log, self._pam_lib,
                              preforked, pam_ahead, pty_ahead, pid_start, subreaper)
        return session.run(sock, req, ctx, sig, decoder)

    def _prefork_pam(self) -> Any:
        """In a spare: the next session's PAM process, forked while the spare waits, when
        sessions go through PAM (else, or when that fails, None: the session forks its own)."""
        from agent import pam

        service = self.cfg.session.pam_service
        try:
            if self._pam_lib is None or not pam.wanted(self.cfg.session.pam, service,
                                                        sys_platform=self.sys_platform):
                return None
            return pam.prefork_login(self._pam_lib)
        except AgentError as exc:
            self.log.warning("spare.prefork_failed", error=str(exc))
            return None

    def _release_inherited(self, sel: selectors.BaseSelector) -> None:
        """In a forked supervisor: let go of the daemon's listener, wake-up pipe, selector and
        other connections. macOS: XNU does not pass kqueue descriptors to a forked child, so
        the selector's number is free here, yet closing the kqueue object closes that number
        all the same (CPython before 3.12.1, gh-110395): whatever took it since would be
        closed. There the object is left as it is; the supervisor ends in os._exit, which never
        finalizes it."""
        signal.set_wakeup_fd(-1)
        if self.sys_platform != "darwin":
            sel.close()
        self.listener.close()
        for fd in self._wake:
            os.close(fd)
        for other in self._conns.values():
            other.sock.close()

    def _reap(self) -> None:
        while self._children or self._retired or self._spare is not None:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                self._retired.clear()
                return
            if pid == 0:
                return
            self._children.pop(pid, None)
            self._retired.discard(pid)
            if self._spare is not None and pid == self._spare.pid:
                # Not replaced here (a spare that cannot live would be forked again and
                # again): the next start forks its supervisor itself, then a new spare.
                self.log.warning("spare.died", pid=pid)
                self._spare.chan.close()
                self._spare = None


def signal_process(pid: int, start: Optional[float], signum: int) -> bool:
    """Signal PID if it is still the process that started at START (not a reused pid).
    On Linux through a pidfd, so the check and the signal name the same process."""
    from agent.registry import process_start_time

    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            if process_start_time(pid) != start:
                return False
            signal.pidfd_send_signal(fd, signum)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
    if process_start_time(pid) != start:
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _peer_uid(rec: dict[str, Any]) -> Optional[int]:
    owner = rec.get("peer_uid")
    return owner if isinstance(owner, int) and not isinstance(owner, bool) else None


def _await_handover(chan: socket.socket, sig: Any) -> Optional[
        tuple[socket.socket, Peer, dict[str, Any], protocol.FrameDecoder]]:
    """In a spare: wait for the daemon's handover on CHAN (a connection, its peer, its start
    request and what followed it). None when the channel ends first, or on SIGTERM."""
    import select

    from agent.peer import Peer

    poller = select.poll()
    poller.register(chan, select.POLLIN)
    poller.register(sig.wake_r, select.POLLIN)
    while not any(fd == chan.fileno() for fd, _ in poller.poll()):
        sig.drain()
        if sig.terminate:
            return None
    # A handover that came with a SIGTERM is taken: the session then ends as terminated, on
    # record, before its shell starts.
    data, fds, _flags, _addr = socket.recv_fds(chan, 65536, 1)
    for extra in fds[1:]:  # pragma: no cover - the daemon sends one
        os.close(extra)
    sock = None
    if fds:
        os.set_inheritable(fds[0], False)  # as accept() made it in the daemon
        sock = socket.socket(fileno=fds[0])
    try:
        frames = protocol.FrameDecoder(HANDOVER_MAX)
        frames.push(data)
        chan.settimeout(HANDOVER_TIMEOUT)
        head = frames.pop()
        while head is None:
            more = chan.recv(65536)
            if not more:
                raise EOFError
            frames.push(more)
            head = frames.pop()
        while frames.pending < int(head["pending"]):
            more = chan.recv(int(head["pending"]) - frames.pending)
            if not more:
                raise EOFError
            frames.push(more)
        pid, uid, gid, groups = head["peer"]
        peer = Peer(int(pid), int(uid), int(gid), tuple(int(g) for g in groups))
        decoder = protocol.FrameDecoder(int(head["max_frame"]))
        decoder.push(frames.buffered())
        request = head["request"]
        if sock is None or frames.pending != int(head["pending"]) \
                or not isinstance(request, dict):
            raise EOFError
    except (EOFError, OSError, AgentError, KeyError, TypeError, ValueError):
        if sock is not None:
            sock.close()
        return None
    return sock, peer, request, decoder


def _pending(chan: socket.socket) -> bool:
    """Whether CHAN has something to read now."""
    import select

    poller = select.poll()
    poller.register(chan, select.POLLIN)
    return bool(poller.poll(0))


def _prefork(log: Any) -> Any:
    """In a spare: the next session's shell process, forked while the spare waits
    (agent.spawn.prefork), or None when that fails (the session then forks it itself)."""
    from agent import spawn

    try:
        return spawn.prefork()
    except AgentError as exc:
        log.warning("spare.prefork_failed", error=str(exc))
        return None


def _pty_ahead(log: Any) -> Any:
    """In a spare: a PTY for the next session, should it want one (agent.terminal.PtyAhead),
    or None when none can be opened (a PTY session then opens its own)."""
    from agent import terminal

    try:
        return terminal.open_pty_ahead()
    except AgentError as exc:
        log.warning("spare.pty_failed", error=str(exc))
        return None


def _keep_paths(new: Config, old: Config) -> Config:
    from agent.values import replace

    session = replace(new.session, state_dir=old.session.state_dir)
    return replace(new, audit=old.audit, session=session)


# What every supervisor imports on its way to the shell. Imported once here, before the first
# fork, they are shared by all supervisors instead of imported again in each (bench/run measured
# the session start at 23.5 ms p50 without, 7.8 ms with; docs/performance.md).
SUPERVISOR_MODULES = (
    "agent.session", "agent.spawn", "agent.environ", "agent.accounts", "agent.resolve",
    "agent.policy", "agent.registry", "agent.terminal", "agent.pam", "agent.utmp",
    "agent.ssm_user", "agent.cgroup",
)


def prepare_for_fork(*, end_mode_all: bool = False, sys_platform: str = sys.platform,
                     pam_service: Optional[str] = None, log: Any = None) -> Any:
    """Import the supervisor's modules (psutil too when sessions end in mode `all`, which uses
    it), ctypes and every NSS module of the passwd and group chains (agent.session.prewarm),
    libpam and the modules of PAM_SERVICE's stack when sessions go through PAM
    (agent.pam.prewarm), then move everything allocated so far out of the garbage collector's
    reach (gc.freeze), so a forked supervisor, and the PAM process it forks, neither re-import,
    reload nor copy pages that collections would touch. ctypes alone, imported in each
    supervisor, cost 1.3 MB of private memory per session; imported here, 0.5 MB once
    (docs/performance.md). Returns the loaded libpam (agent.pam.Libpam), or None."""
    import gc
    import importlib

    for name in (*SUPERVISOR_MODULES, *(("psutil",) if end_mode_all else ())):
        importlib.import_module(name)
    from agent import session

    session.prewarm(sys_platform)
    lib = None
    if pam_service is not None:
        from agent import pam

        try:
            lib = pam.prewarm(pam_service)
        except AgentError as exc:  # each session loads it, and reports what fails
            if log is not None:
                log.warning("pam.prewarm_failed", error=str(exc))
    gc.collect()
    gc.freeze()
    return lib


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "user", "uid", "source", "pid", "shell_pid", "started_at", "principal", "tty",
            "command", "peer_uid")
    from agent.registry import cut_command

    out = {k: rec.get(k) for k in keys}
    out["command"] = cut_command(out["command"])  # a record an older daemon's supervisor wrote
    return out


def _group_ids(names: tuple[str, ...], log: Any = None,
               key: str = "peers.allowed_groups") -> Iterator[int]:
    """The ids NAMES have, each looked up as it is iterated, never kept: a decision that needs no
    group (root, an allowed uid) costs no lookup. A name that does not resolve has none (LOG,
    when given, warns)."""
    import grp

    for name in names:
        try:
            yield grp.getgrnam(name).gr_gid
        except KeyError:
            if log is not None:
                log.warning("config.unknown_group", group=name, key=key)


def _warn_unknown_groups(cfg: Config, log: Any) -> None:
    """Warn, at load and reload, of each group name in CFG's peers that does not resolve (the
    names are looked up again at each decision, so this keeps nothing)."""
    for key, names in (("peers.allowed_groups", cfg.peers.allowed_groups),
                       ("peers.admin_groups", cfg.peers.admin_groups)):
        for _ in _group_ids(names, log, key):
            pass


def _warn_unguarded_ptys(log: Any) -> None:
    """Warn at start-up when a PTY's set-up cannot keep every account off a new slave here
    (agent.terminal.unguarded_reason), or when no PTY can be opened at all."""
    from agent import terminal

    try:
        reason = terminal.unguarded_reason()
    except AgentError as exc:
        log.warning("pty.unavailable", error=str(exc))
        return
    if reason is not None:
        log.warning("pty.setup_unguarded", reason=reason)


# -- the listening socket -------------------------------------------------------------------


def bind_socket(path: str, mode: int, group: Optional[str], *,
                sys_platform: str = sys.platform) -> socket.socket:
    """Bind the daemon's socket in a root-owned directory, refusing to steal a live one."""
    import grp

    directory = os.path.dirname(path)
    # The directories above first, before anything is created under them; the socket's own
    # directory just below (it must also not be a symbolic link).
    check_socket_path(path, own_directory=False, sys_platform=sys_platform)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    check_socket_path(path, own_directory=False, sys_platform=sys_platform)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise ConfigError(f"{directory}: must be a directory owned by root and not writable by "
                          "group or others")
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"socket.group: no group named {group!r}") from None
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket of a daemon that is gone
        else:
            raise ConfigError(f"another daemon is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chown(path, 0, gid)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


def check_socket_path(path: str, *, own_directory: bool = True,
                      sys_platform: str = sys.platform) -> None:
    """Refuse a socket PATH any existing ancestor directory of which is not owned by root or is
    writable by group or others (sticky ones such as /tmp included): whoever can write there can
    swap the directory below and take the socket over. The rule OpenSSH applies to key paths.
    Symbolic links are followed, and both the path as written and where it leads are checked
    (a link can be changed by whoever may write the directory that holds it). OWN_DIRECTORY
    false leaves the socket's own directory to the caller.

    One exception, macOS's own: /var/run (/private/var/run) is root:daemon 0775 there, and the
    `daemon` group holds root alone, so on darwin that one directory, owned by root, with
    group `daemon` and writable by no others, counts as root's. Any other group-writable
    directory is refused, on macOS too."""
    _check_ancestors(os.path.dirname(os.path.abspath(path)), own_directory=own_directory,
                     sys_platform=sys_platform, subject=f"socket path {path}",
                     below="the socket",
                     hint="put the socket under a root-owned directory such as /run")


def check_state_dir(directory: str, *, sys_platform: str = sys.platform) -> None:
    """Refuse a session.state_dir under a directory that is not root's alone (the rule of
    check_socket_path, for the directories above DIRECTORY; the registry checks DIRECTORY
    itself). `sessions` and `terminate` believe the records there: whoever could swap the
    directory could make the daemon signal any process, as a session of theirs."""
    _check_ancestors(os.path.abspath(directory), own_directory=False,
                     sys_platform=sys_platform, subject=f"session.state_dir {directory}",
                     below="the session records",
                     hint="put the session records under a root-owned directory such as /run")


def _check_ancestors(directory: str, *, own_directory: bool, sys_platform: str, subject: str,
                     below: str, hint: str) -> None:
    """Raise ConfigError naming the first directory above DIRECTORY (and DIRECTORY itself when
    OWN_DIRECTORY), as written and where symbolic links lead, that someone other than root
    may change. SUBJECT and BELOW name the path in the message."""
    for chain in (directory, os.path.realpath(directory)):
        ancestors = _ancestors(chain)
        for ancestor in ancestors if own_directory else ancestors[:-1]:
            try:
                st = os.stat(ancestor)
            except FileNotFoundError:
                continue  # created by root below, 0755
            except OSError as exc:
                raise ConfigError(f"{ancestor}: cannot inspect it: {exc.strerror}") from None
            if st.st_uid != 0 or st.st_mode & _untrusted_write_bits(ancestor, st, sys_platform):
                raise ConfigError(
                    f"{subject}: {ancestor} is {_who_writes(st)}; every directory above "
                    f"{below} must be owned by root and not writable by group or others",
                    hint=hint)


DARWIN_VAR_RUN = ("/var/run", "/private/var/run")  # as written, and where /var leads
DARWIN_DAEMON_GID = 1  # the `daemon` group of macOS, which holds root alone


def _untrusted_write_bits(path: str, st: os.stat_result, sys_platform: str) -> int:
    """The write bits of ST (the directory PATH) that let someone other than root change it.
    The group's bit is root's own for macOS's /var/run alone: root:daemon, not sticky."""
    if sys_platform == "darwin" and path in DARWIN_VAR_RUN \
            and st.st_gid == DARWIN_DAEMON_GID and not st.st_mode & stat.S_ISVTX:
        return 0o002
    return 0o022


def _ancestors(directory: str) -> list[str]:
    """DIRECTORY and every directory above it, from the root down."""
    out = [directory]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out[::-1]


def _who_writes(st: os.stat_result) -> str:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}"
    who = "group and others" if st.st_mode & 0o022 == 0o022 else (
        "group" if st.st_mode & 0o020 else "others")
    sticky = " (even with the sticky bit)" if st.st_mode & stat.S_ISVTX else ""
    return f"writable by {who}{sticky}"
