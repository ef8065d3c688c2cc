"""The node's recordings as an administrator sees them: listed, checked against the hashes the
audit log holds (`session.ended`), and played back.

Read-only. Each recording's size and SHA-256 at the end of its session are in the audit log; a
file that differs from them was changed afterwards (`mismatch`). A recording with no end on
record belongs to a live session (or to one whose supervisor was killed): `unverified`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

from agent import asciicast

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Callable, Optional

SUFFIX = ".cast"
TAIL = 65536  # bytes read from a recording's end to find its duration

OK = "ok"
MISMATCH = "mismatch"
MISSING = "missing"  # on record, but the file is gone
UNVERIFIED = "unverified"  # no end on record (yet)
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Entry:
    file: str
    id: Optional[str]
    user: Optional[str]
    started: Optional[str]  # RFC 3339 UTC, from the header's timestamp
    duration: Optional[float]
    bytes: Optional[int]
    verified: str  # OK, MISMATCH, MISSING, UNVERIFIED or UNREADABLE
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file": self.file, "user": self.user, "started": self.started,
                "duration": self.duration, "bytes": self.bytes, "verified": self.verified,
                "detail": self.detail}


def ended_records(audit_path: str) -> dict[str, dict[str, Any]]:
    """The recording of every ended session on record, by file name (the last record wins)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        fh = open(audit_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return out
    with fh:
        for line in fh:
            if b'"recording"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            info = rec.get("recording") if isinstance(rec, dict) else None
            if (rec.get("event") == "session.ended" and isinstance(info, dict)
                    and isinstance(info.get("file"), str)):
                out[info["file"]] = info
    return out


def digest(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                return size, h.hexdigest()
            h.update(chunk)
            size += len(chunk)


def _head_and_duration(path: str) -> tuple[dict[str, Any], float]:
    with open(path, "rb") as fh:
        head = json.loads(fh.readline())
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - TAIL))
        tail = fh.read().split(b"\n")
    duration = 0.0
    for raw in reversed(tail[:-1]):  # whole lines only
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if (isinstance(ev, list) and ev and isinstance(ev[0], (int, float))
                and math.isfinite(ev[0])):
            duration = float(ev[0])
            break
    if not isinstance(head, dict):
        raise ValueError("no header")
    return head, duration


def _iso(ts: Any) -> Optional[str]:
    """RFC 3339 UTC of a header's timestamp; None for anything that is not a time (a bool,
    NaN, infinity, or a number past what the platform's time_t holds)."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, ValueError, OSError):
        return None


def entry(directory: str, name: str, ended: Optional[dict[str, Any]]) -> Entry:
    """One recording, checked against ENDED (its session.ended recording fields, if any)."""
    path = os.path.join(directory, name)
    try:
        size, sha = digest(path)
    except FileNotFoundError:
        return Entry(name, None, None, None, None, None, MISSING,
                     "the audit log has its end, the file is gone")
    except OSError as exc:
        return Entry(name, None, None, None, None, None, UNREADABLE, exc.strerror or str(exc))
    try:
        head, duration = _head_and_duration(path)
        found = head.get("session")
        sess: dict[str, Any] = found if isinstance(found, dict) else {}
        ident, user = sess.get("id"), sess.get("user")
        started = _iso(head.get("timestamp"))
    except (OSError, ValueError) as exc:
        ident = user = started = None
        duration = None
        bad = f"not a recording: {exc}"
    else:
        bad = ""
    if ended is None:
        verified, detail = UNVERIFIED, "no end on record (a live session?)"
    elif (ended.get("bytes"), ended.get("sha256")) == (size, sha):
        verified, detail = OK, ""
    else:
        verified = MISMATCH
        detail = (f"{size} bytes, sha256 {sha}; the audit log has {ended.get('bytes')} bytes, "
                  f"sha256 {ended.get('sha256')}")
    if bad and verified != MISMATCH:
        detail = bad
    return Entry(name, ident if isinstance(ident, str) else None,
                 user if isinstance(user, str) else None, started, duration, size, verified,
                 detail)


def scan(directory: str, audit_path: str, only: Optional[str] = None) -> list[Entry]:
    """Every recording in DIRECTORY (or those of session ONLY), oldest first, each verified; a
    recording the audit log has whose file is gone is listed as MISSING."""
    ended = ended_records(audit_path)
    try:
        listed = os.listdir(directory)
    except FileNotFoundError:  # recording never on: nothing recorded
        listed = []
    names = {n for n in listed if n.endswith(SUFFIX) and not n.startswith(".")}
    names |= set(ended)
    if only is not None:
        names = {n for n in names if n == only + SUFFIX or _is_repeat(n, only)}
    out = [entry(directory, n, ended.get(n)) for n in names]
    if only is not None:  # <id>.1.cast may be session "<id>.1"'s own: its header says whose
        out = [e for e in out if e.file == only + SUFFIX or e.id in (only, None)]
    return sorted(out, key=lambda e: (e.started or "", e.file))


def _is_repeat(name: str, session_id: str) -> bool:
    """<id>.<n>.cast: a later recording of a reused session id."""
    stem = name[:-len(SUFFIX)]
    base, dot, n = stem.rpartition(".")
    return bool(dot) and base == session_id and n.isdigit()


def find(directory: str, session_id: str) -> str:
    """The path of session SESSION_ID's recording. Raises FileNotFoundError."""
    if "/" in session_id or session_id.startswith("."):
        raise FileNotFoundError(f"{session_id!r} is not a session id")
    path = os.path.join(directory, session_id + SUFFIX)
    if not os.path.isfile(path) and session_id.endswith(SUFFIX):
        # a file name (session "x.cast" has x.cast.cast: a session id is tried first)
        path = os.path.join(directory, session_id)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no recording {path}")
    return path


def events(path: str) -> Iterator[tuple[float, str, str]]:
    """The events of the recording at PATH, read as they are played (a line cut short by a
    crash at the end is left out). Raises asciicast.FormatError."""
    with open(path, "rb") as fh:
        first = fh.readline()
        asciicast.parse(first)  # the header
        lines = (line for line in fh if line.endswith(b"\n"))
        yield from asciicast.read_events(lines)


def play(path: str, write: Callable[[str], None], *, speed: float = 1.0,
         max_idle: Optional[float] = None,
         sleep: Callable[[float], None] = time.sleep) -> None:
    """Write the recording's output with its timing."""
    for delay, text in asciicast.schedule(events(path), speed=speed, max_idle=max_idle):
        if delay > 0:
            sleep(delay)
        write(text)
