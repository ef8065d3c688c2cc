"""Durable audit records: JSON lines, one write() per record on an O_APPEND file, fsync'd.

The daemon and every per-session supervisor append to the same file; a single write() to an
O_APPEND file is not interleaved with another, and fsync (F_FULLFSYNC on macOS) makes the record
survive a crash before the caller acts on it (a session is never started, or reported started,
without its record).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass

from agent.errors import AuditFailed
from agent.fsutil import full_fsync

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


@dataclass(frozen=True)
class AuditLog:
    path: str

    def record(self, event: str, **fields: Any) -> None:
        """Append one record and make it durable, or raise AuditFailed."""
        self.append(event, **fields).sync()

    def append(self, event: str, **fields: Any) -> Pending:
        """Append one record, not yet durable: the caller makes it so with the returned
        Pending's sync() (its one fsync) before it acts on the record, and may do other work
        while the disk is not needed. Raises AuditFailed."""
        line = format_record(event, **fields)
        try:
            fd = self._open()
            try:
                # The lock covers only the append, so a record cut short by a full disk can be
                # removed again without touching another writer's record; fsync is outside it.
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        _drop_partial(fd, written)
                        raise OSError(28, "No space left on device (short write)")
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise _failed(self.path, exc) from exc
        return Pending(self.path, fd)

    def _open(self) -> int:
        """The log, opened through a descriptor of its directory: the directory checked is the
        one the file is opened in, whoever may rename what around it (e.g. /var/log is
        group-writable on some distributions)."""
        directory, name = os.path.split(self.path)
        created = not os.path.isdir(directory)
        if created:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if created:
                os.fchmod(dfd, 0o700)
            st = os.fstat(dfd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise OSError(1, f"{directory} must be a directory owned by the agent's user and "
                              "not writable by group or others")
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            return os.open(name, flags, 0o600, dir_fd=dfd)
        finally:
            os.close(dfd)


def format_record(event: str, **fields: Any) -> bytes:
    """One record's line: a JSON object with the time and EVENT first."""
    rec: dict[str, Any] = {"ts": _now(), "event": event}
    rec.update(fields)
    # ASCII-only: no control or bidi characters from a request reach the log raw.
    return (json.dumps(rec, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


class Pending:
    """A record written to the log and not yet fsync'd (AuditLog.append)."""

    __slots__ = ("_error", "_fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._error: Optional[OSError] = None

    def sync(self) -> None:
        """Make the record durable (once; a later call repeats the outcome), or raise
        AuditFailed."""
        fd, self._fd = self._fd, -1
        if fd != -1:
            try:
                full_fsync(fd)
                self._error = None
            except OSError as exc:
                self._error = exc
            finally:
                os.close(fd)
        if self._error is not None:
            raise _failed(self.path, self._error) from self._error


def _failed(path: str, exc: OSError) -> AuditFailed:
    return AuditFailed(
        f"cannot write audit record to {path}: {exc.strerror or exc}",
        hint="free space or fix permissions on the audit log's filesystem",
    )


def _drop_partial(fd: int, written: int) -> None:
    """Cut off the WRITTEN bytes of a record that did not fit (a full disk), so the log never
    holds a partial line (which would also spoil the next record appended to it). Called under
    the append lock, so nothing was appended after them; the file is O_APPEND, so they end at
    the offset."""
    try:
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - written)
    except OSError:
        pass


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
