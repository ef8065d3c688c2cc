"""Live sessions on this node: one small JSON file per session, written by its supervisor.

The files outlive a daemon restart, so a new daemon can list, count and terminate sessions it
did not start. A file whose process is gone (or whose pid was reused) is stale and ignored.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
from dataclasses import dataclass

from agent.errors import InternalError, SessionExists, SessionNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional


# macOS: sysctl({CTL_KERN, KERN_PROC, KERN_PROC_PID, pid}) fills one struct kinfo_proc
# (<sys/sysctl.h>; 648 bytes on x86_64 and arm64). Its first member, struct extern_proc
# (<sys/proc.h>), opens with the union p_un whose __p_starttime (p_starttime) is a struct timeval
# {long tv_sec; int tv_usec;} at offset 0; p_pid follows p_vmspace, p_sigacts, p_flag and p_stat
# at offset 40.
CTL_KERN, KERN_PROC, KERN_PROC_PID = 1, 14, 1
# A record keeps at most this much of its session's command, and `list` shows what it keeps:
# every `list` reads every record, and a record's size is the start request's to choose.
COMMAND_MAX = 1024
KINFO_PROC_SIZE = 648
P_STARTTIME = struct.Struct("<qi")
P_PID = struct.Struct("<i")
P_PID_OFFSET = 40


def process_start_time(pid: int, *, sys_platform: str = sys.platform,
                       kern_proc_pid: Optional[Callable[[int], bytes]] = None) -> Optional[float]:
    """The process's start time (identifies it across pid reuse), or None if it is gone.
    Linux reads /proc; macOS asks sysctl kern.proc.pid (KERN_PROC_PID stands in for it in
    tests). Neither imports psutil: this is on every session's start path."""
    if sys_platform == "darwin":
        raw = (kern_proc_pid or _kern_proc_pid)(pid)
        return parse_kinfo_proc(raw, pid)
    if os.path.isdir("/proc/self"):
        return _proc_start_time(pid)
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def _proc_start_time(pid: int) -> Optional[float]:
    """Linux: psutil's create_time() computed the same way (the same float for the same process)
    from /proc, without importing psutil on every session's start path; None for a process that
    has exited (a zombie) as for one that is gone."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
        with open("/proc/stat", "rb") as fh:
            btime = next(float(line.split()[1]) for line in fh if line.startswith(b"btime"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            # Exited, only not reaped yet (a supervisor orphaned by a restart waits for init,
            # which may be slow to reap, or never do it in a container): gone, not live.
            return None
        return float(fields[19]) / os.sysconf("SC_CLK_TCK") + btime
    except (ValueError, IndexError):
        return None


def cut_command(command: object) -> object:
    """COMMAND as a record keeps it and `list` shows it: a string longer than COMMAND_MAX
    characters is cut there and ends in "..."; anything else is left as it is."""
    if isinstance(command, str) and len(command) > COMMAND_MAX:
        return command[:COMMAND_MAX] + "..."
    return command


def parse_kinfo_proc(raw: bytes, pid: int) -> Optional[float]:
    """p_starttime of a struct kinfo_proc as psutil computes create_time() from it
    (tv_sec + tv_usec / 1e6); None when the kernel returned no process (0 bytes) or another."""
    if len(raw) < KINFO_PROC_SIZE or P_PID.unpack_from(raw, P_PID_OFFSET)[0] != pid:
        return None
    sec, usec = P_STARTTIME.unpack_from(raw, 0)
    return float(sec + usec / 1000000.0)


def _kern_proc_pid(pid: int) -> bytes:
    """The raw struct kinfo_proc of PID from sysctl (b"" when there is no such process)."""
    import ctypes

    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    mib = (ctypes.c_int * 4)(CTL_KERN, KERN_PROC, KERN_PROC_PID, int(pid))
    buf = ctypes.create_string_buffer(KINFO_PROC_SIZE)
    size = ctypes.c_size_t(KINFO_PROC_SIZE)
    if libc.sysctl(mib, 4, buf, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return b""
    return buf.raw[:size.value]


def _starting(session_id: str, pid: int, peer_uid: Optional[int],
              pid_start: Optional[float]) -> dict[str, Any]:
    """The record of a session that PID has claimed and not yet started."""
    return {"id": session_id, "pid": pid,
            "pid_start": process_start_time(pid) if pid_start is None else pid_start,
            "state": "starting", "peer_uid": peer_uid}


@dataclass(frozen=True)
class Registry:
    directory: str

    def _path(self, session_id: str) -> str:
        return os.path.join(self.directory, session_id + ".json")

    def _ensure_dir(self) -> None:
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise InternalError(f"{self.directory} must be a directory of the agent's user, "
                                "mode 0700")

    def _write_temp(self, record: dict[str, Any]) -> str:
        tmp = f"{self._path(str(record['id']))}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                data = memoryview(json.dumps(record).encode())
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def claim(self, session_id: str, pid: int, peer_uid: Optional[int] = None, *,
              pid_start: Optional[float] = None) -> None:
        """Reserve SESSION_ID for process PID, or raise SessionExists if a live one has it.
        The record appears complete or not at all (written aside, then linked into place).
        PEER_UID (who asked for the session) lets that peer terminate it while it starts.
        PID_START: PID's process_start_time(), when the caller has it already."""
        record = _starting(session_id, pid, peer_uid, pid_start)
        try:
            self._ensure_dir()
            tmp = self._write_temp(record)
            try:
                for _ in range(2):
                    try:
                        os.link(tmp, self._path(session_id))
                        return
                    except FileExistsError:
                        # Judged by the process the file names, not by the id it records: on a
                        # case-insensitive filesystem (macOS) another id's live record answers
                        # to this path, and must not be taken for a stale one.
                        if self._names_live_process(session_id):
                            raise SessionExists(
                                f"session id {session_id!r} is already in use") from None
                        self.remove(session_id)  # stale: its supervisor is gone
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise InternalError(f"cannot record session {session_id!r} in {self.directory}: "
                                f"{exc.strerror or exc}") from exc
        raise SessionExists(f"session id {session_id!r} is already in use")

    def publish(self, record: dict[str, Any]) -> None:
        """Replace the session's record (atomically) once it has started."""
        try:
            tmp = self._write_temp(record)
            os.replace(tmp, self._path(str(record["id"])))
        except OSError as exc:
            raise InternalError(f"cannot record session {record['id']!r} in {self.directory}: "
                                f"{exc.strerror or exc}") from exc

    def withdraw(self, session_id: str, pid: int, peer_uid: Optional[int] = None, *,
                 pid_start: Optional[float] = None) -> None:
        """Put the session's record back as claimed (PID keeps SESSION_ID, no longer listed):
        for a start refused after it was published (raises InternalError)."""
        self.publish(_starting(session_id, pid, peer_uid, pid_start))

    def remove(self, session_id: str) -> None:
        try:
            os.unlink(self._path(session_id))
        except FileNotFoundError:
            pass

    def _read(self, session_id: str) -> Any:
        """The JSON at SESSION_ID's path (never through a link), or None."""
        try:
            fd = os.open(self._path(session_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _load_live(self, session_id: str) -> Optional[dict[str, Any]]:
        rec = self._read(session_id)
        if (not isinstance(rec, dict) or not isinstance(rec.get("pid"), int)
                or rec.get("id") != session_id):
            return None
        start = process_start_time(rec["pid"])
        if start is None or rec.get("pid_start") != start:
            return None
        return rec

    def get(self, session_id: str) -> dict[str, Any]:
        rec = self._load_live(session_id)
        if rec is None:
            raise SessionNotFound(f"no live session {session_id!r} on this node")
        return rec

    def live(self, *, include_starting: bool = False) -> list[dict[str, Any]]:
        """Every live session, oldest first; stale files are removed."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if not name.endswith(".json"):
                continue
            sid = name[: -len(".json")]
            rec = self._load_live(sid)
            if rec is None:
                self._remove_if_stale(sid)
                continue
            if rec.get("state") == "started" or include_starting:
                out.append(rec)
        out.sort(key=lambda r: (str(r.get("started_at", "")), str(r["id"])))
        return out

    def _names_live_process(self, session_id: str) -> bool:
        """Does the record at SESSION_ID's path name a live process, whatever id it records?
        A record that cannot be read names none."""
        rec = self._read(session_id)
        pid = rec.get("pid") if isinstance(rec, dict) else None
        return (isinstance(pid, int) and not isinstance(pid, bool)
                and process_start_time(pid) == rec.get("pid_start"))

    def _remove_if_stale(self, session_id: str) -> None:
        # Re-check right before removing: a record may have been written meanwhile.
        path = self._path(session_id)
        try:
            with open(path) as fh:
                rec = json.load(fh)
            pid = rec.get("pid") if isinstance(rec, dict) else None
        except (OSError, ValueError):
            return
        if isinstance(pid, int) and process_start_time(pid) == rec.get("pid_start"):
            return
        self.remove(session_id)
