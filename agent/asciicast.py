"""The session recording format: asciicast v2 (one JSON header line, then one JSON event line per
output, input or resize), built from raw bytes.

Pure: no I/O. Bytes become text through an incremental UTF-8 decoder per stream, so a sequence
split across reads is decoded whole and a byte that is not UTF-8 becomes U+FFFD: every line is
valid UTF-8 JSON whatever the session writes. The last event is a marker (`"m"`) with the end
reason and exit status.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Any, Optional

VERSION = 2
OUTPUT = "o"
INPUT = "i"
RESIZE = "r"
MARKER = "m"
END_PREFIX = "end "  # the closing marker's label: "end reason=exited code=0"
STOP_PREFIX = "recording stopped "  # the marker when recording stops before the end
EVENT_TYPES = (OUTPUT, INPUT, RESIZE, MARKER)


def header(*, width: int, height: int, timestamp: int, term: Optional[str],
           shell: Optional[str], session_id: str, user: str, uid: int, principal: str,
           command: Optional[str]) -> bytes:
    """The header line (with its newline)."""
    env = {k: v for k, v in (("TERM", term), ("SHELL", shell)) if v is not None}
    head: dict[str, Any] = {
        "version": VERSION, "width": width, "height": height, "timestamp": timestamp,
        "env": env,
        "session": {"id": session_id, "user": user, "uid": uid, "principal": principal,
                    "command": command},
    }
    return _line(head)


def event(t: float, kind: str, text: str) -> bytes:
    """One event line (with its newline); T is seconds since the session started."""
    return _line([round(max(t, 0.0), 6), kind, text])


def resize(t: float, rows: int, cols: int) -> bytes:
    return event(t, RESIZE, f"{cols}x{rows}")


def end_label(reason: str, exit_status: Mapping[str, Any]) -> str:
    """The closing marker's label, e.g. "end reason=exited code=0" or "... signal=9"."""
    parts = [f"reason={reason}"]
    for key in ("code", "signal"):
        if exit_status.get(key) is not None:
            parts.append(f"{key}={exit_status[key]}")
    return END_PREFIX + " ".join(parts)


def parse_end(label: str) -> Optional[dict[str, str]]:
    """The fields of a closing marker's label, or None when LABEL is not one."""
    if not label.startswith(END_PREFIX):
        return None
    out: dict[str, str] = {}
    for part in label[len(END_PREFIX):].split():
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
    return out


def _line(obj: Any) -> bytes:
    # ensure_ascii=False keeps output compact; the text is valid Unicode without surrogates
    # (decoded with errors="replace"), so the line is valid UTF-8.
    return (json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode()


class Utf8Stream:
    """Incremental decoding of one byte stream: never splits a sequence, never fails."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes) -> str:
        return self._dec.decode(data, final=False)

    def finish(self) -> str:
        """What is left at the end of the stream (an incomplete sequence: U+FFFD)."""
        return self._dec.decode(b"", final=True)


class FormatError(ValueError):
    """A recording that is not asciicast v2 as written here."""


@dataclass(frozen=True)
class Recording:
    header: dict[str, Any]
    events: tuple[tuple[float, str, str], ...]
    truncated: bool  # the last line was cut short (a crash while writing it)

    @property
    def duration(self) -> float:
        return self.events[-1][0] if self.events else 0.0

    @property
    def end(self) -> Optional[dict[str, str]]:
        for _, kind, text in reversed(self.events):
            if kind == MARKER:
                return parse_end(text)
        return None


def parse(data: bytes) -> Recording:
    """Read a recording; a last line without its newline (cut short) is left out. Raises
    FormatError naming the line that is not valid."""
    lines = data.split(b"\n")
    truncated = lines[-1] != b""
    body = lines[:-1]
    if not body:
        raise FormatError("line 1: no header")
    try:
        head = json.loads(body[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"line 1: not a JSON header: {exc}") from None
    if not isinstance(head, dict) or head.get("version") != VERSION:
        raise FormatError("line 1: not an asciicast v2 header")
    for key in ("width", "height"):
        if not isinstance(head.get(key), int):
            raise FormatError(f"line 1: header {key} is not an integer")
    return Recording(head, tuple(read_events(body[1:])), truncated)


def read_events(lines: Iterable[bytes]) -> Iterator[tuple[float, str, str]]:
    """The events of event lines (numbered from 2: the header is line 1). Raises FormatError."""
    last = 0.0
    for n, raw in enumerate(lines, start=2):
        try:
            ev = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"line {n}: not a JSON event: {exc}") from None
        if (not isinstance(ev, list) or len(ev) != 3 or isinstance(ev[0], bool)
                or not isinstance(ev[0], (int, float)) or ev[1] not in EVENT_TYPES
                or not isinstance(ev[2], str)):
            raise FormatError(f"line {n}: not an event [time, type, text]")
        if ev[0] < last:
            raise FormatError(f"line {n}: time goes backwards")
        last = float(ev[0])
        yield last, ev[1], ev[2]


def schedule(events: Iterable[tuple[float, str, str]], *, speed: float = 1.0,
             max_idle: Optional[float] = None) -> Iterator[tuple[float, str]]:
    """Output events as (delay before it, text) for a player: gaps capped at MAX_IDLE, then
    divided by SPEED."""
    prev = 0.0
    for t, kind, text in events:
        if kind != OUTPUT:
            continue
        gap = max(0.0, t - prev)
        prev = t
        if max_idle is not None:
            gap = min(gap, max_idle)
        yield gap / speed, text
