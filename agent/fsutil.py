"""Atomic, validated file installation: readers see the previous file or the new one, never a part.

`install()` writes a dotted temp file in the target's own directory (O_CREAT|O_EXCL|O_NOFOLLOW),
sets owner and mode, fsyncs it, lets a validator look at it, renames it over the target and fsyncs
the directory. Identical bytes are not rewritten; only a wrong mode or owner is corrected.
`remove()` unlinks the target and fsyncs the directory.

Both hold an flock on the directory while they work, so cooperating writers into one directory
go one at a time; under that lock any temp file of ours is a leftover of a killed writer and is
removed. The temp names start with a dot, so sudo (which skips names containing `.`) never reads
one as a drop-in.

On any failure the temp file is removed, the target is left as it was, and InstallFailed says
what happened, what state the target is in, and what to do.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from dataclasses import dataclass

from agent.errors import AgentError, InstallFailed

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Callable, Optional

_TOKEN_BYTES = 6  # 12 hex digits in the temp name


@dataclass(frozen=True)
class Installed:
    path: str
    written: bool  # new bytes were renamed into place
    fixed: bool  # the bytes were already right; a wrong mode or owner was corrected
    stale_removed: tuple[str, ...] = ()  # temp files a killed writer left behind, now removed

    @property
    def changed(self) -> bool:
        return self.written or self.fixed


def full_fsync(fd: int) -> None:
    """Make FD's data durable. macOS: fsync(2) only hands the data to the drive, which may keep
    it in its cache across a power loss; F_FULLFSYNC flushes that too (fsync where the file
    system does not support it). Elsewhere fsync."""
    op = getattr(fcntl, "F_FULLFSYNC", None)
    if op is not None:
        try:
            fcntl.fcntl(fd, op)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EINVAL, errno.ENOTTY):
                raise
    os.fsync(fd)


def temp_name(name: str) -> str:
    """A fresh dotted temp name for NAME (same directory)."""
    return f".{name}.{os.urandom(_TOKEN_BYTES).hex()}"


def is_temp_name(entry: str, name: str) -> bool:
    """Whether ENTRY is one of the temp names install() uses for NAME."""
    return re.fullmatch(rf"\.{re.escape(name)}\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}", entry) is not None


def install(
    path: str,
    data: bytes,
    *,
    mode: int = 0o440,
    uid: int = 0,
    gid: int = 0,
    validate: Optional[Callable[[str], None]] = None,
    before_rename: Optional[Callable[[str], None]] = None,
) -> Installed:
    """Make PATH hold exactly DATA, owned UID:GID with MODE, atomically.

    VALIDATE(temp_path) may raise (an AgentError's message is reported) to keep the new content
    out. BEFORE_RENAME(temp_path) runs just before the rename: a seam for fault-injection tests.
    """
    directory, name = _split(path)
    dfd = _open_dir(directory, path)
    try:
        _lock(dfd, path)
        stale = _remove_stale(dfd, directory, name)
        present, content, fd = _current(dfd, name, path)
        if fd is not None:
            try:
                if content == data:
                    fixed = _fix_metadata(fd, path, mode, uid, gid)
                    return Installed(path, written=False, fixed=fixed, stale_removed=stale)
            finally:
                os.close(fd)
        prev = "the previous file is unchanged" if present else "no file was installed"
        _write_validate_rename(dfd, directory=directory, name=name, data=data, mode=mode,
                               uid=uid, gid=gid, prev=prev, validate=validate,
                               before_rename=before_rename)
        return Installed(path, written=True, fixed=False, stale_removed=stale)
    finally:
        os.close(dfd)  # also releases the lock


def remove(path: str) -> bool:
    """Remove PATH if present (unlink, then fsync the directory). True if something was removed."""
    directory, name = _split(path)
    dfd = _open_dir(directory, path)
    try:
        _lock(dfd, path)
        _remove_stale(dfd, directory, name)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InstallFailed(f"cannot inspect {path}: {exc.strerror}; it is unchanged") from exc
        if stat.S_ISDIR(st.st_mode):
            raise InstallFailed(f"{path} is a directory; it is unchanged",
                                hint="remove it by hand if it is not meant to be there")
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InstallFailed(f"cannot remove {path}: {exc.strerror}; it is unchanged",
                                hint=_hint(exc)) from exc
        _sync_dir(dfd, path, "removed")
        return True
    finally:
        os.close(dfd)


def _split(path: str) -> tuple[str, str]:
    if not os.path.isabs(path):
        raise InstallFailed(f"{path!r}: expected an absolute path")
    directory, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise InstallFailed(f"{path!r}: expected a file path")
    return directory, name


def _open_dir(directory: str, path: str) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InstallFailed(f"cannot install {path}: {directory} does not exist",
                            hint=f"create {directory}") from None
    except OSError as exc:
        raise InstallFailed(f"cannot open {directory}: {exc.strerror}", hint=_hint(exc)) from exc


def _lock(dfd: int, path: str) -> None:
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
    except OSError as exc:
        raise InstallFailed(f"cannot lock the directory of {path}: {exc.strerror}") from exc


def _remove_stale(dfd: int, directory: str, name: str) -> tuple[str, ...]:
    """Remove our temp files for NAME. Under the directory lock, their writers are dead."""
    removed = []
    try:
        entries = os.listdir(dfd)
    except OSError as exc:
        raise InstallFailed(f"cannot list {directory}: {exc.strerror}", hint=_hint(exc)) from exc
    for entry in sorted(entries):
        if not is_temp_name(entry, name):
            continue
        try:
            os.unlink(entry, dir_fd=dfd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InstallFailed(
                f"cannot remove the leftover temp file {os.path.join(directory, entry)}: "
                f"{exc.strerror}", hint=_hint(exc)) from exc
        removed.append(os.path.join(directory, entry))
    if removed:
        _sync_dir(dfd, os.path.join(directory, name), "cleaned up")
    return tuple(removed)


def _current(dfd: int, name: str, path: str) -> tuple[bool, bytes, Optional[int]]:
    """(present, content, open fd) for the target; fd is None unless it is a regular file.

    The caller closes the fd.
    """
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False, b"", None
    except OSError as exc:
        raise InstallFailed(f"cannot inspect {path}: {exc.strerror}", hint=_hint(exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InstallFailed(f"{path} is a directory; it is unchanged",
                            hint="remove it by hand if it is not meant to be there")
    if not stat.S_ISREG(st.st_mode):
        return True, b"", None  # a symlink or special file: replaced by the rename, not followed
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dfd)
    except FileNotFoundError:
        return False, b"", None
    except OSError as exc:
        raise InstallFailed(f"cannot read {path}: {exc.strerror}", hint=_hint(exc)) from exc
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        os.close(fd)
        raise InstallFailed(f"cannot read {path}: {exc.strerror}", hint=_hint(exc)) from exc
    return True, b"".join(chunks), fd


def _fix_metadata(fd: int, path: str, mode: int, uid: int, gid: int) -> bool:
    """Correct owner and mode of the open file whose bytes are right; True if it changed."""
    try:
        st = os.fstat(fd)
        wrong_owner = st.st_uid != uid or st.st_gid != gid
        wrong_mode = stat.S_IMODE(st.st_mode) != mode
        if wrong_owner:
            os.fchown(fd, uid, gid)
        if wrong_owner or wrong_mode:
            os.fchmod(fd, mode)  # after chown, which may clear mode bits
            full_fsync(fd)
        return wrong_owner or wrong_mode
    except OSError as exc:
        raise InstallFailed(
            f"cannot set owner {uid}:{gid} and mode {mode:04o} on {path}: {exc.strerror}; "
            "its content is already right", hint=_hint(exc)) from exc


def _write_validate_rename(
    dfd: int,
    *,
    directory: str,
    name: str,
    data: bytes,
    mode: int,
    uid: int,
    gid: int,
    prev: str,
    validate: Optional[Callable[[str], None]],
    before_rename: Optional[Callable[[str], None]],
) -> None:
    path = os.path.join(directory, name)
    tmp = temp_name(name)
    tmp_path = os.path.join(directory, tmp)
    phase = "create"
    created = False
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o400, dir_fd=dfd)
        created = True
        try:
            phase = "write"
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            full_fsync(fd)
        finally:
            os.close(fd)
        phase = "validate"
        if validate is not None:
            validate(tmp_path)
        phase = "rename"
        if before_rename is not None:
            before_rename(tmp_path)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        created = False
    except BaseException as exc:
        if created:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
            except OSError as cleanup:
                prev += f"; the temp file {tmp_path} could not be removed ({cleanup.strerror}) "
                prev += "and is removed by the next install"
        if isinstance(exc, AgentError) and phase == "validate":
            raise InstallFailed(f"{path}: the new content was rejected: {exc.message}; {prev}",
                                hint=exc.hint) from exc
        if isinstance(exc, OSError):
            raise InstallFailed(_describe(exc, phase, directory, path, prev),
                                hint=_hint(exc)) from exc
        raise
    _sync_dir(dfd, path, "installed")


def _sync_dir(dfd: int, path: str, done: str) -> None:
    try:
        full_fsync(dfd)
    except OSError as exc:
        raise InstallFailed(
            f"{path} was {done}, but its directory could not be synced: {exc.strerror}",
            hint="check the filesystem; a crash now could undo the change") from exc


def _describe(exc: OSError, phase: str, directory: str, path: str, prev: str) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} on {directory} while writing {os.path.basename(path)}; {prev}"
    if exc.errno == errno.EROFS:
        return f"{directory} is on a read-only filesystem; {prev}"
    verb = {"create": "create a temp file in", "write": "write a temp file in",
            "validate": "validate the new", "rename": "rename the new file into"}[phase]
    target = path if phase in ("validate", "rename") else directory
    return f"cannot {verb} {target}: {exc.strerror}; {prev}"


def _hint(exc: OSError) -> Optional[str]:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on that filesystem, then run the command again"
    if exc.errno == errno.EROFS:
        return "remount it read-write, then run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "run it as root"
    return None
