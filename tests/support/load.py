"""Load, soak and fuzz drivers for the real daemon, shared by the CI tests (small counts) and the
bench/ scripts (the long runs): sessions in a row, concurrent held sessions, malformed
connections, and the daemon's resources (fds, RSS) measured before and after.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from agent.client import Client, Session
from agent.server import SPARE_NAME

TAG = "SSMSessionRunAs"


@dataclass(frozen=True)
class Usage:
    fds: int
    rss_kb: int
    children: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        with open(f"/proc/{pid}/status") as fh:
            status = dict(line.split(":", 1) for line in fh if ":" in line)
        return cls(len(os.listdir(f"/proc/{pid}/fd")), int(status["VmRSS"].split()[0]),
                   len(children_of(pid)))


def children_of(pid: int) -> list[int]:
    """The session supervisors of the daemon PID: its children but the idle spare."""
    return [c for c in all_children_of(pid) if _comm(c) != SPARE_NAME]


def spares_of(pid: int) -> list[int]:
    """The daemon's idle spare supervisors (one at most)."""
    return [c for c in all_children_of(pid) if _comm(c) == SPARE_NAME]


def all_children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def the_spare(daemon_pid: int, timeout: float = 10, *, not_: int = 0) -> int:
    """The daemon's one idle spare, once there is one (not NOT_: a spare that is gone or
    going)."""
    def one() -> bool:
        spares = spares_of(daemon_pid)
        return len(spares) == 1 and spares[0] != not_

    assert wait_until(one, timeout), all_children_of(daemon_pid)
    (pid,) = spares_of(daemon_pid)
    return pid


def fd_targets(pid: int) -> list[str]:
    """What PID's descriptors refer to (their /proc links); none once PID is gone."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    out = []
    for fd in fds:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed since (listdir's own descriptor, for one)
            continue
    return out


def terminals_of(pid: int) -> list[str]:
    """The PTY slaves (/dev/pts/N) PID holds open."""
    paths = (t.split(" ")[0] for t in fd_targets(pid))  # without a " (deleted)"
    return [p for p in paths if p.startswith("/dev/pts/") and p[9:].isdigit()]


def pty_ahead_of(spare: int, timeout: float = 10) -> str:
    """The terminal SPARE opened ahead, once it has (its set-up may still be under way)."""
    assert wait_until(lambda: len(terminals_of(spare)) == 1, timeout), terminals_of(spare)
    (tty,) = terminals_of(spare)
    return tty


def _comm(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards WANT (bounded by the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Outcome:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def start(client: Client, user: str, sid: str, command: str,
          terminal: Optional[tuple[str, int, int]] = None) -> Session:
    return client.start(session_id=sid, principal_arn="arn:load", tags={TAG: user},
                        run_as_enabled=True, command=command, terminal=terminal)


def in_a_row(client: Client, user: str, n: int, prefix: str, *, command: str = "true",
             pty_every: int = 0,
             progress: Optional[Callable[[int], None]] = None) -> Outcome:
    """N sessions one after the other, each to its exit status (every PTY_EVERY-th on a PTY)."""
    out = Outcome()
    t0 = time.monotonic()
    for i in range(n):
        pty = pty_every > 0 and i % pty_every == 0
        try:
            sess = start(client, user, f"{prefix}-{i}", command,
                         ("xterm", 24, 80) if pty else None)
            try:
                status = sess.wait()
            finally:
                sess.close()
            if status != {"code": 0, "signal": None, "reason": "exited"}:
                out.failures.append(f"{prefix}-{i}: {status}")
            else:
                out.ok += 1
        except Exception as exc:
            out.failures.append(f"{prefix}-{i}: {type(exc).__name__}: {exc}")
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1)
    out.seconds = time.monotonic() - t0
    return out


def hold(client: Client, user: str, n: int, prefix: str,
         command: str = "sleep 3600") -> tuple[list[Session], Outcome]:
    """N live sessions at once. Only each one's control socket is kept (1 fd per session)."""
    held: list[Session] = []
    out = Outcome()
    t0 = time.monotonic()
    for i in range(n):
        try:
            sess = start(client, user, f"{prefix}-{i}", command)
        except Exception as exc:
            out.failures.append(f"{prefix}-{i}: {type(exc).__name__}: {exc}")
            continue
        for fd in (sess.stdin, sess.stdout, sess.stderr):
            if fd is not None:
                os.close(fd)
        sess.stdin = sess.stdout = sess.stderr = None
        held.append(sess)
        out.ok += 1
    out.seconds = time.monotonic() - t0
    return held, out


def still_running(sessions: list[Session]) -> int:
    """How many of SESSIONS have not ended (their control channel has nothing to read)."""
    live = 0
    for i in range(0, len(sessions), 500):
        chunk = sessions[i:i + 500]
        poller = select.poll()
        for s in chunk:
            poller.register(s.sock.fileno(), select.POLLIN)
        ready = {fd for fd, _ in poller.poll(0)}
        live += sum(1 for s in chunk if s.sock.fileno() not in ready)
    return live


def end_all(sessions: list[Session], timeout: float = 120) -> list[dict[str, Any]]:
    """Terminate every session and collect its exit status."""
    for s in sessions:
        try:
            s.terminate()
        except OSError:
            pass
    statuses = []
    deadline = time.monotonic() + timeout
    for s in sessions:
        s.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            statuses.append(s.wait())
        except OSError as exc:
            statuses.append({"code": None, "signal": None, "reason": f"error: {exc}"})
        finally:
            s.close()
    return statuses


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- malformed connections --------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _json(obj: Any) -> bytes:
    return _frame(json.dumps(obj).encode())


def malformed(rng: random.Random) -> tuple[str, bytes]:
    """One hostile first request the daemon must refuse by itself (no session is forked)."""
    kind = rng.randrange(14)
    if kind == 0:
        return "oversize", struct.pack(">I", rng.randrange(65537, 2**32)) + b"x" * 64
    if kind == 1:
        full = _json({"v": 1, "type": "ping"})
        return "truncated", full[:rng.randrange(1, len(full))]
    if kind == 2:
        return "random", rng.randbytes(rng.randrange(1, 4096))
    if kind == 3:
        return "not-json", _frame(rng.randbytes(rng.randrange(1, 200)))
    if kind == 4:
        return "not-object", _json(rng.choice([[1, 2], "s", 3, None, True]))
    if kind == 5:
        return "bad-version", _json({"v": rng.choice([0, 2, "1", 1.0, None]), "type": "ping"})
    if kind == 6:
        return "unknown-type", _json({"v": 1, "type": rng.choice(["rm", "", "START", "exec"])})
    if kind == 7:
        return "unknown-field", _json({"v": 1, "type": "ping", "x" * rng.randrange(1, 50): 1})
    if kind == 8:
        bad: dict[str, Any] = {"v": 1, "type": "start", "session_id": "s",
                               "principal": {"arn": "a"}}
        key = rng.choice(["session_id", "principal", "terminal", "command", "env",
                          "preferences"])
        bad[key] = rng.choice([5, [], {"x": 1}, True, "\u0000", "x" * 70000])
        return "bad-start", _json(bad)
    if kind == 9:
        return "deep-nesting", _frame(b"[" * rng.randrange(1000, 60000))
    if kind == 10:
        return "invalid-utf8", _frame(b'{"v":1,"type":"\xff\xfe"}')
    if kind == 11:
        return "two-frames", _json({"v": 1, "type": "ping"}) * 2
    if kind == 12:
        return "empty", b""
    return "bad-control", _json({"v": 1, "type": "resize", "rows": 1, "cols": 1})


def send_malformed(path: str, payload: bytes, timeout: float = 5.0) -> bytes:
    """Connect, send PAYLOAD, half-close, read whatever the daemon answers until it closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def reply_reason(data: bytes) -> Optional[str]:
    if len(data) < 4:
        return None
    (n,) = struct.unpack(">I", data[:4])
    msg = json.loads(data[4:4 + n])
    return str(msg.get("reason")) if msg.get("type") == "error" else str(msg.get("type"))


def hammer(path: str, n: int, seed: int) -> dict[str, int]:
    """N malformed connections; returns how many got each answer (reason, or `closed`)."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for _ in range(n):
        _kind, payload = malformed(rng)
        reason = reply_reason(send_malformed(path, payload)) or "closed"
        counts[reason] = counts.get(reason, 0) + 1
    return counts


# -- hostile account names ------------------------------------------------------------------


CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "corpus",
                      "hostile_names.txt")


def hostile_names(path: str = CORPUS) -> list[str]:
    """The corpus: one name per line, written in ASCII with Python's backslash escapes (\\xNN,
    \\uNNNN, \\UNNNNNNNN, \\t, \\n, \\r, \\\\); lines starting with '#' and empty lines are
    skipped (the empty name is tested on its own)."""
    import codecs

    names = []
    with open(path, encoding="ascii") as fh:
        for line in fh.read().split("\n"):
            if not line or line.startswith("#"):
                continue
            names.append(codecs.decode(line, "unicode_escape"))
    return names
