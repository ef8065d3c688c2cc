"""Session cgroups: with `end_mode: all`, each session's processes live in a cgroup of their own,
so ending the session ends every one of them, however fast they fork, exit or change session.

Where the sessions live (the daemon sets this up once, agent.cgroup.setup):
 - cgroup v2 (preferred): under the daemon's own cgroup (the "0::" line of /proc/self/cgroup,
   found through the cgroup2 mount in /proc/self/mountinfo). That cgroup is the unit; the daemon
   moves itself into the leaf `<unit>/daemon` (v2 allows processes only in leaves once a
   delegated subtree is used, and systemd expects a `Delegate=yes` unit's processes in a
   sub-cgroup), and sessions go to `<unit>/sessions/session-<id>-<supervisor pid>`. A daemon
   already in a leaf named `daemon` uses its parent as the unit. A daemon in the root cgroup
   (no service manager) stays there and uses `/runas-agent` as the unit.
 - cgroup v1 freezer, where no v2 hierarchy is usable: the same layout under the daemon's
   freezer cgroup (v1 has no leaf rule, so the daemon does not move).
 - none (macOS; no writable cgroup): sessions end with the process walk, best-effort.

A session (agent.cgroup.SessionCgroup): the supervisor creates the cgroup, and moves the shell's
process into it right after forking it, while that process prepares itself (before it drops
privileges, long before it passes the exec gate and runs anything of the user's): there is no
moment at which a session process is outside it. Where pam_systemd has
put the session into a logind scope (`session-N.scope`: it moves the process that runs PAM's
session stage, agent.pam's own process, there), that scope is the session's cgroup: the shell's
process joins it, and at the gate the PAM process leaves it for the supervisor's cgroup.
Ending: SIGHUP (and SIGCONT) to every member, then after the grace period `cgroup.kill` (v2),
or freeze, SIGKILL every member, thaw (v1 freezer, or a v2 kernel before cgroup.kill). A
cgroup the supervisor created is removed when the session ends.

Path logic is pure (parse_*, layout, fs_path, is_logind_scope, session_name); the rest is I/O.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Optional, Union

V2 = "v2"
FREEZER = "freezer"
ROOT_UNIT = "runas-agent"  # the unit of a daemon that runs in the root cgroup
DAEMON_LEAF = "daemon"
SESSIONS = "sessions"
BEST_EFFORT = "end_mode all is best-effort here"
SETTLE_TIMEOUT = 5.0  # the longest to wait for killed members to be gone
FREEZE_TIMEOUT = 1.0  # the longest to wait for a freeze to take hold
_POLL = 0.005
_LOGIND_SCOPE = re.compile(r"session-[^/]+\.scope")


# --- pure path logic ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    point: str  # where it is mounted
    root: str  # the cgroup path shown at the mount point
    fstype: str
    options: tuple[str, ...]  # super options (v1: the controllers)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """The cgroup and cgroup2 mounts listed in /proc/PID/mountinfo text."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append(Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0],
                         tuple(tail[2].split(","))))
    return tuple(out)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup text as {hierarchy: path}: "" is the v2 hierarchy (the "0::" line),
    v1 hierarchies appear once per controller ("freezer", "name=systemd", ...)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        num, controllers, path = parts
        if num == "0" and controllers == "":
            out[""] = path
            continue
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def fs_path(mount: Mount, path: str) -> Optional[str]:
    """The directory of cgroup PATH under MOUNT, or None when the mount does not show it."""
    if not path.startswith("/") or "/../" in path + "/" or "/./" in path + "/":
        return None
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rest = path[len(root):].strip("/")
    return os.path.join(mount.point, rest) if rest else mount.point


def parent(path: str) -> str:
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head or "/"


def child(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


@dataclass(frozen=True)
class Layout:
    unit: str  # the cgroup the daemon's subtree hangs from
    daemon: str  # where the daemon (and every supervisor it forks) lives
    sessions: str  # the parent of the session cgroups
    created_unit: bool  # the unit is the daemon's own creation (removed when it stops, if empty)


def layout(own: str, kind: str) -> Layout:
    """Where the daemon and the sessions live, given the daemon's cgroup OWN (see the module's
    docstring)."""
    own = own.rstrip("/") or "/"
    if own == "/":
        unit = "/" + ROOT_UNIT
        return Layout(unit, own, child(unit, SESSIONS), True)
    if own.rsplit("/", 1)[1] == DAEMON_LEAF:
        unit = parent(own)
        return Layout(unit, own, child(unit, SESSIONS), False)
    if kind == V2:
        return Layout(own, child(own, DAEMON_LEAF), child(own, SESSIONS), False)
    return Layout(own, own, child(own, SESSIONS), False)


def is_logind_scope(path: str) -> bool:
    """True for a cgroup path whose leaf is a logind session scope (`session-N.scope`)."""
    return bool(_LOGIND_SCOPE.fullmatch(path.rstrip("/").rsplit("/", 1)[-1]))


def session_name(session_id: str, pid: int) -> str:
    """A session's cgroup name: never an interface file's name (those have no `session-`
    prefix), unique among live supervisors."""
    return f"session-{session_id.replace('/', '_')}-{pid}"


@dataclass(frozen=True)
class Hierarchy:
    kind: str  # V2 or FREEZER
    mount: Mount
    own: str  # the daemon's cgroup path in it


def find_hierarchies(mounts: tuple[Mount, ...], own: dict[str, str]) -> tuple[Hierarchy, ...]:
    """The usable hierarchies, best first: cgroup v2, then the v1 freezer."""
    found = []
    for kind, fstype, key in ((V2, "cgroup2", ""), (FREEZER, "cgroup", "freezer")):
        path = own.get(key)
        if path is None:
            continue
        for m in mounts:
            if (m.fstype == fstype and (kind == V2 or "freezer" in m.options)
                    and fs_path(m, path) is not None):
                found.append(Hierarchy(kind, m, path))
                break
    return tuple(found)


# --- the daemon's set-up -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What the daemon prepared; every supervisor it forks gets it."""

    kind: str
    mount: str  # the hierarchy's mount point
    mount_root: str
    layout: Layout

    def dir(self, path: str) -> str:
        found = fs_path(Mount(self.mount, self.mount_root, "", ()), path)
        if found is None:  # pragma: no cover - setup() only builds paths inside the mount
            raise ValueError(f"{path} is outside {self.mount}")
        return found

    def describe(self) -> str:
        return f"cgroup ({self.kind}) under {self.dir(self.layout.sessions)}"


@dataclass(frozen=True)
class Unavailable:
    """No cgroup can hold the sessions: `end_mode: all` falls back to the process walk."""

    reason: str

    def describe(self) -> str:
        return f"{BEST_EFFORT}: {self.reason}"


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _hierarchies(proc: str) -> Union[tuple[Hierarchy, ...], Unavailable]:
    try:
        mounts = parse_mountinfo(_read(f"{proc}/self/mountinfo"))
        own = parse_proc_cgroup(_read(f"{proc}/self/cgroup"))
    except OSError as exc:
        return Unavailable(f"cannot read the process's cgroups ({exc.strerror})")
    found = find_hierarchies(mounts, own)
    if not found:
        return Unavailable("no cgroup2 or freezer hierarchy is mounted")
    return found


def probe(proc: str = "/proc") -> Union[Setup, Unavailable]:
    """What setup() would use, changing nothing (for `config check`)."""
    found = _hierarchies(proc)
    if isinstance(found, Unavailable):
        return found
    reasons = []
    for h in found:
        lay = layout(h.own, h.kind)
        setup_ = Setup(h.kind, h.mount.point, h.mount.root, lay)
        start = setup_.dir(lay.unit)
        while not os.path.isdir(start) and start != h.mount.point:
            start = os.path.dirname(start)
        if os.access(start, os.W_OK):
            return setup_
        who = "" if os.geteuid() == 0 else " by this user (check as root)"
        reasons.append(f"{start} is not writable{who}")
    return Unavailable("; ".join(reasons))


def setup(proc: str = "/proc") -> Union[Setup, Unavailable]:
    """Prepare the daemon's cgroup subtree (module docstring) and move the daemon into its
    place; Unavailable (nothing left behind) when no hierarchy can be used."""
    found = _hierarchies(proc)
    if isinstance(found, Unavailable):
        return found
    reasons = []
    for h in found:
        lay = layout(h.own, h.kind)
        s = Setup(h.kind, h.mount.point, h.mount.root, lay)
        try:
            os.makedirs(s.dir(lay.sessions), exist_ok=True)
            if lay.daemon != h.own:
                os.makedirs(s.dir(lay.daemon), exist_ok=True)
                _write(s.dir(lay.daemon), "cgroup.procs", str(os.getpid()))
        except OSError as exc:
            reasons.append(f"{h.kind}: {exc.strerror or exc} ({exc.filename or s.mount})")
            if lay.daemon != h.own:
                _rmdir_quietly(s.dir(lay.daemon))
            release(s)  # what it made, if empty
            continue
        return s
    return Unavailable("; ".join(reasons))


def sweep(s: Setup) -> int:
    """End and remove the session cgroups whose supervisor is gone (killed before it could end
    its session); returns how many. A supervisor still running keeps its own."""
    sessions = s.dir(s.layout.sessions)
    try:
        names = os.listdir(sessions)
    except OSError:
        return 0
    left: list[SessionCgroup] = []
    for name in names:
        pid = supervisor_of(name)
        if pid is None:
            continue
        cg = SessionCgroup(s.kind, os.path.join(sessions, name), True)
        if not _is_supervisor(pid, cg):
            left.append(cg)
            cg.kill()  # now, all waited for at once below
    # At most SETTLE_TIMEOUT in all, however many there are: a member that cannot die (kept
    # stopped in its exit by a tracer) keeps its cgroup, not the daemon's start waiting.
    settled = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < settled and any(_populated(cg) for cg in left):
        time.sleep(_POLL)
    swept = 0
    for cg in left:
        if _populated(cg):
            continue
        try:
            cg.remove()
        except OSError:
            continue
        swept += 1
    return swept


def _populated(cg: SessionCgroup) -> bool:
    try:
        return cg.populated()
    except OSError:
        return True


def supervisor_of(name: str) -> Optional[int]:
    """The supervisor's pid in a session cgroup's name (session_name), or None."""
    if not name.startswith("session-"):
        return None
    tail = name.rsplit("-", 1)[1]
    return int(tail) if tail.isdigit() and tail[0] != "0" else None


def _is_supervisor(pid: int, cg: SessionCgroup) -> bool:
    """Whether PID (from CG's name) is still CG's supervisor: a root process outside CG. Once the
    supervisor is gone its pid can be taken by anyone, the session's own processes included
    (they may fork until one gets it); such a pid must not keep the cgroup alive."""
    try:
        status = _read(f"/proc/{pid}/status")
    except OSError:
        return False
    uids = next((line.split()[1:] for line in status.splitlines()
                 if line.startswith("Uid:")), [])
    if not uids or any(u != "0" for u in uids):
        return False
    try:
        return pid not in cg.members()
    except OSError:
        return False


def release(s: Setup) -> None:
    """When the daemon stops: remove the sessions directory (and a unit the daemon created) if
    no session uses them any more."""
    paths = [s.layout.sessions] + ([s.layout.unit] if s.layout.created_unit else [])
    for path in paths:
        try:
            os.rmdir(s.dir(path))
        except OSError:
            return


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _write(directory: str, name: str, value: str) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# --- one session's cgroup ----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionCgroup:
    kind: str
    path: str  # the directory
    created: bool  # made by the supervisor (removed when the session ends); not a logind scope

    def adopt(self, pid: int) -> None:
        """Put PID (the shell's process, waiting at the exec gate) into the session's cgroup."""
        _write(self.path, "cgroup.procs", str(pid))

    def members(self) -> list[int]:
        try:
            text = _read(os.path.join(self.path, "cgroup.procs"))
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split()]

    def populated(self) -> bool:
        if self.kind == V2:
            try:
                events = _read(os.path.join(self.path, "cgroup.events"))
            except FileNotFoundError:
                return False
            return "populated 1" in events.splitlines()
        return bool(self.members())

    def end(self, grace: float) -> bool:
        """SIGHUP and SIGCONT to every member; SIGKILL to whatever is still there after GRACE
        seconds; True once the cgroup is empty (within SETTLE_TIMEOUT of the kill), False if
        it is not (or cannot be used: the caller falls back to the process walk)."""
        try:
            return self._end(grace)
        except OSError:
            return False

    def _end(self, grace: float) -> bool:
        if not self.populated():
            return True
        self._signal_all((signal.SIGHUP, signal.SIGCONT))
        deadline = time.monotonic() + grace
        while self.populated() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.populated():
            return True
        kill_file = os.path.join(self.path, "cgroup.kill")
        settled = time.monotonic() + SETTLE_TIMEOUT
        while True:
            if self.kind == V2 and os.path.exists(kill_file):
                _write(self.path, "cgroup.kill", "1")
            else:
                self._signal_all((signal.SIGKILL,))
            until = min(settled, time.monotonic() + 0.5)
            while self.populated() and time.monotonic() < until:
                time.sleep(_POLL)
            if not self.populated() or time.monotonic() >= settled:
                return not self.populated()

    def kill(self) -> None:
        """SIGKILL every member at once, waiting for nothing: v2's cgroup.kill where there is
        one (no freeze: a member that cannot be frozen costs no freeze timeout), else as
        end() does. Errors are left to the next populated() to tell."""
        try:
            if self.kind == V2 and os.path.exists(os.path.join(self.path, "cgroup.kill")):
                _write(self.path, "cgroup.kill", "1")
            else:
                self._signal_all((signal.SIGKILL,))
        except OSError:
            pass

    def _signal_all(self, signals: tuple[int, ...]) -> None:
        """Signal every member while the cgroup is frozen: no member can fork, exit or be
        replaced by another process under the same pid meanwhile. Unfreezable (v2 without
        cgroup.freeze): signalled as found."""
        frozen = self._freeze(True)
        try:
            for pid in self.members():
                for signum in signals:
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass
        finally:
            if frozen:
                self._freeze(False)

    def _freeze(self, on: bool) -> bool:
        if self.kind == V2:
            name, value = "cgroup.freeze", "1" if on else "0"
        else:
            name, value = "freezer.state", "FROZEN" if on else "THAWED"
        try:
            _write(self.path, name, value)
        except OSError:
            return False
        if not on:
            return True
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while time.monotonic() < deadline:
            if self._is_frozen():
                return True
            time.sleep(_POLL)
        return True  # signalled anyway; thawed in the end

    def _is_frozen(self) -> bool:
        try:
            if self.kind == V2:
                return "frozen 1" in _read(os.path.join(self.path, "cgroup.events")).splitlines()
            return _read(os.path.join(self.path, "freezer.state")).strip() == "FROZEN"
        except FileNotFoundError:
            return True

    def remove(self) -> None:
        """Remove a cgroup the supervisor created (an empty one; left as it is otherwise)."""
        if not self.created:
            return
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
            time.sleep(0.01)  # the last members' exits are still being accounted
        raise OSError(errno.EBUSY, "still in use", self.path)


def own_path(kind: str, proc: str = "/proc") -> Optional[str]:
    """This process's cgroup path in the hierarchy of KIND."""
    try:
        own = parse_proc_cgroup(_read(f"{proc}/self/cgroup"))
    except OSError:
        return None
    return own.get("" if kind == V2 else "freezer")


def open_session(s: Setup, session_id: str, *, scope: Optional[str] = None) -> SessionCgroup:
    """The cgroup for this supervisor's session: SCOPE, the logind scope PAM put the session in
    (pam_systemd moves the process that runs PAM's session stage there), else a new one under
    the sessions directory. Call after PAM's session stage, before the shell's process is
    started. Raises OSError."""
    if s.kind == V2 and scope is not None and is_logind_scope(scope):
        return SessionCgroup(s.kind, s.dir(scope), False)
    path = s.dir(child(s.layout.sessions, session_name(session_id, os.getpid())))
    for _ in range(3):
        try:
            os.mkdir(path, 0o755)
            break
        except FileNotFoundError:  # a stopping daemon removed an unused sessions directory
            os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        os.mkdir(path, 0o755)
    return SessionCgroup(s.kind, path, True)


def move(path: str, pid: int, proc: str = "/proc") -> None:
    """Move PID into the cgroup v2 PATH, found through this process's cgroup2 mount.
    Raises OSError."""
    for m in parse_mountinfo(_read(f"{proc}/self/mountinfo")):
        if m.fstype == "cgroup2":
            found = fs_path(m, path)
            if found is not None:
                _write(found, "cgroup.procs", str(pid))
                return
    raise OSError(errno.ENOENT, "no cgroup2 mount shows this cgroup", path)
