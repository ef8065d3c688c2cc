"""A session's recording on disk: one asciicast v2 file per session, root-only, hashed as written.

The directory is root-owned with no access for group or others (created 0700 when missing,
refused otherwise); the file is created with O_EXCL|O_NOFOLLOW relative to the opened directory,
mode 0600. Events are written as they come when a failed write ends the session (on_failure
`end`: output reaches the client only once it is in the file), else buffered (at most
FLUSH_BYTES, flushed at least every FLUSH_INTERVAL seconds); whole lines only, so a crash
leaves a valid prefix. The running SHA-256 and size cover
exactly the bytes in the file; they go into the audit log when the session ends.

The recorder never raises once created: a write that fails (disk full, I/O error) puts it in
the `failed` state, a limit reached puts it in the `stopped` state; the supervisor reads these
and applies recording.on_failure / recording.on_limit. Until the session goes on unrecorded by
those settings, bytes the recording did not take do not reach the client either: `output` says
whether they may.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass

from agent import asciicast
from agent.errors import RecordingFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

    from agent.config import RecordingConfig

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.25  # seconds
RESERVE = 512  # kept free under max_bytes for the markers that close the file
SUFFIX = ".cast"
MAX_NAME_TRIES = 100  # <id>.cast, then <id>.1.cast, ... when a recording of the id exists


@dataclass(frozen=True)
class Summary:
    """What the audit log keeps of a recording."""

    file: str
    bytes: int
    sha256: str
    complete: bool  # closed with its end marker (not stopped at a limit, not failed)

    def as_record(self) -> dict[str, Any]:
        return {"file": self.file, "bytes": self.bytes, "sha256": self.sha256,
                "complete": self.complete}


def open_dir(path: str) -> int:
    """The recording directory, opened (created 0700 when missing). Raises RecordingFailed
    unless it is a real directory owned by this process's user with no group or other access."""
    try:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise RecordingFailed(f"recording directory {path}: {exc.strerror or exc}",
                              hint="it must be a directory, not a symlink") from exc
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise RecordingFailed(
            f"recording directory {path} must be owned by uid {os.geteuid()} with mode 0700 "
            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    return fd


def _create(dir_fd: int, session_id: str) -> tuple[int, str]:
    for n in range(MAX_NAME_TRIES):
        name = f"{session_id}{SUFFIX}" if n == 0 else f"{session_id}.{n}{SUFFIX}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)
        return fd, name
    raise OSError(errno.EEXIST, f"{MAX_NAME_TRIES} recordings of this session id exist")


class Recorder:
    """One session's recording, from its header to its end marker."""

    def __init__(self, fd: int, path: str, *, max_bytes: int, record_input: bool,
                 clock: float, go_on_stopped: bool = False,
                 go_on_failed: bool = False) -> None:
        self.fd, self.path = fd, path
        # the session may go on unrecorded (on_limit `stop`, on_failure `continue`)
        self.go_on_stopped, self.go_on_failed = go_on_stopped, go_on_failed
        self.file = os.path.basename(path)
        self.max_bytes = max_bytes
        self.record_input = record_input
        self.t0 = clock
        self.size = 0
        self.hash = hashlib.sha256()
        self.buf = bytearray()
        self.buffered_at: Optional[float] = None  # when the oldest unflushed event came
        self.streams: dict[object, asciicast.Utf8Stream] = {}
        self.stopped: Optional[str] = None  # why recording stopped early ("max_bytes")
        self.failed: Optional[str] = None  # the write error that ended recording
        self.closed = False

    @classmethod
    def create(cls, cfg: RecordingConfig, session_id: str, head: bytes) -> Recorder:
        """Create the session's file and write its header (the recording exists before the shell
        runs). Raises RecordingFailed."""
        dir_fd = open_dir(cfg.dir)
        try:
            fd, name = _create(dir_fd, session_id)
        except OSError as exc:
            raise RecordingFailed(f"cannot create the recording in {cfg.dir}: "
                                  f"{exc.strerror or exc}") from exc
        finally:
            os.close(dir_fd)
        rec = cls(fd, os.path.join(cfg.dir, name), max_bytes=cfg.max_bytes,
                  record_input=cfg.input, clock=time.monotonic(),
                  go_on_stopped=cfg.on_limit == "stop", go_on_failed=cfg.on_failure == "continue")
        rec.buf += head
        rec.flush()  # written, not synced (see close)
        if rec.failed is not None:
            err = rec.failed
            rec.close_now()
            try:  # an empty file would stand for a session that never ran
                os.unlink(rec.path)
            except OSError:
                pass
            raise RecordingFailed(f"cannot write the recording {rec.path}: {err}")
        return rec

    @property
    def active(self) -> bool:
        return not (self.closed or self.failed or self.stopped)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # --- events --------------------------------------------------------------------------

    def output(self, data: bytes, stream: object = asciicast.OUTPUT) -> bool:
        """Output bytes of STREAM (each stream keeps its own partial UTF-8 sequence). Returns
        whether DATA may reach the client: it is recorded, or the session goes on unrecorded."""
        if self.active and data:
            self._text(asciicast.OUTPUT, self._decoder(stream).decode(data))
        return self.active or self.unrecorded_allowed()

    def input(self, data: bytes) -> bool:
        """Input bytes; returns whether DATA may reach the session (as `output`; always when
        input is not recorded)."""
        if not self.record_input:
            return True
        if self.active and data:
            self._text(asciicast.INPUT, self._decoder(asciicast.INPUT).decode(data))
        return self.active or self.unrecorded_allowed()

    def unrecorded_allowed(self) -> bool:
        """Whether the session's I/O may pass although the recording no longer takes it."""
        if self.failed is not None:
            return self.go_on_failed
        if self.stopped is not None:
            return self.go_on_stopped
        return False

    def resize(self, rows: int, cols: int) -> None:
        if self.active:
            self._add(asciicast.resize(self.elapsed(), rows, cols))

    def _decoder(self, stream: object) -> asciicast.Utf8Stream:
        dec = self.streams.get(stream)
        if dec is None:
            dec = self.streams[stream] = asciicast.Utf8Stream()
        return dec

    def _text(self, kind: str, text: str) -> None:
        if text:
            self._add(asciicast.event(self.elapsed(), kind, text))

    def _add(self, line: bytes) -> None:
        if self.max_bytes and self.size + len(self.buf) + len(line) > self.max_bytes - RESERVE:
            self._marker(asciicast.STOP_PREFIX + "reason=max_bytes")
            self.stopped = "max_bytes"
            self.flush()
            return
        if not self.buf:
            self.buffered_at = time.monotonic()
        self.buf += line
        if len(self.buf) >= FLUSH_BYTES or not self.go_on_failed:
            self.flush()

    def _marker(self, label: str) -> None:
        self.buf += asciicast.event(self.elapsed(), asciicast.MARKER, label)

    # --- writing ---------------------------------------------------------------------------

    def flush_due(self) -> Optional[float]:
        """Seconds until the buffer must be flushed (0: now), None when it is empty."""
        if not self.buf or self.buffered_at is None:
            return None
        return max(0.0, self.buffered_at + FLUSH_INTERVAL - time.monotonic())

    def flush(self) -> None:
        """Write the buffer (whole lines). On a failure the file is cut back to the last whole
        line, so it stays valid and its hash and size stay those of its bytes."""
        if not self.buf or self.closed or self.failed:
            self.buf.clear()
            return
        data = bytes(self.buf)
        self.buf.clear()
        self.buffered_at = None
        before, saved = self.size, self.hash.copy()
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.hash.update(view[:n])
                self.size += n
                view = view[n:]
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            try:
                os.ftruncate(self.fd, before)
                self.size, self.hash = before, saved
            except OSError:
                pass

    def close(self, reason: str, exit_status: Mapping[str, Any]) -> Summary:
        """Finish the recording: what is left of partial UTF-8 sequences, the end marker
        (unless a write failed), written, and the file closed. Returns its size and hash.

        Not fsync'd: on a disk, a recording's fsync forces a journal commit that the next
        session's audit records then wait for (bench/run: +6 ms per session start). The bytes
        are in the page cache, so any process crash, the supervisor's included, keeps them; a
        power loss within the kernel's writeback interval can lose a recording's last bytes,
        and `recordings verify` then names it."""
        if not self.closed:
            if self.failed is None:
                if self.stopped is None:
                    for stream, dec in self.streams.items():
                        tail = dec.finish()
                        if tail:
                            kind = asciicast.INPUT if stream == asciicast.INPUT else (
                                asciicast.OUTPUT)
                            self._add(asciicast.event(self.elapsed(), kind, tail))
                self._marker(asciicast.end_label(reason, exit_status))
                self.flush()
            self.close_now()
        return self.summary()

    def stop_writing(self) -> None:
        """Stop after a failure (on_failure `continue`): no more writes, the file as it is."""
        self.buf.clear()
        self.close_now()

    def close_now(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                os.close(self.fd)
            except OSError:
                pass

    def summary(self) -> Summary:
        return Summary(self.file, self.size, self.hash.hexdigest(),
                       complete=self.stopped is None and self.failed is None)


def header_for(*, width: int, height: int, term: Optional[str], shell: str, session_id: str,
               user: str, uid: int, principal: str, command: Optional[str]) -> bytes:
    return asciicast.header(width=width, height=height, timestamp=int(time.time()), term=term,
                            shell=shell, session_id=session_id, user=user, uid=uid,
                            principal=principal, command=command)
