"""The wire protocol between the session transport and the daemon (pure: no sockets, no I/O).

Frames are a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one
object. docs/protocol.md is the specification; this module is its one implementation.
"""

from __future__ import annotations

import json
import re
import struct

from agent.errors import BadRequest
from agent.values import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, Union

    Request = Union["StartRequest", "ListRequest", "TerminateRequest", "PingRequest"]
    Control = Union["ResizeControl", "TerminateControl"]

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 65536

SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
TERM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_TAGS = 64
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_ARN = 2048
MAX_ENV = 64
MAX_ENV_VALUE = 4096
MAX_PROFILE = 16384
MAX_DIM = 10000


def encode(msg: dict[str, Any]) -> bytes:
    # ASCII-only JSON: no raw control or bidi characters reach a log or terminal, and a string
    # that cannot be UTF-8 never makes encoding fail.
    body = json.dumps(msg, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return HEADER.pack(len(body)) + body


class FrameTooLarge(BadRequest):
    """A frame header announced more than the limit: the stream cannot be resynchronized."""


class FrameDecoder:
    """Incremental decoder: push bytes, pop complete messages one at a time.

    A malformed body raises BadRequest for that frame only; the next frame still decodes. An
    oversize header raises FrameTooLarge, and so does every later pop (the stream is lost).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self.broken = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def buffered(self) -> bytes:
        """The bytes received and not yet popped."""
        return bytes(self._buf)

    def push(self, data: bytes) -> None:
        self._buf += data

    def pop(self) -> Optional[dict[str, Any]]:
        """The next complete message, or None until more bytes arrive."""
        if len(self._buf) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buf)
        if size > self.max_frame:
            self.broken = True
            raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
        if len(self._buf) < HEADER.size + size:
            return None
        body = bytes(self._buf[HEADER.size : HEADER.size + size])
        del self._buf[: HEADER.size + size]
        return decode_body(body)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Push DATA and pop every complete message (raising at the first bad one)."""
        self.push(data)
        out: list[dict[str, Any]] = []
        while True:
            msg = self.pop()
            if msg is None:
                return out
            out.append(msg)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes) -> dict[str, Any]:
    """One frame's JSON object. Strict: valid UTF-8 without surrogates, no duplicate keys,
    no NaN or Infinity."""
    try:
        text = body.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        # \ud800-style escapes decode to lone surrogates: strings no OS interface accepts.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError):
        raise BadRequest("frame is not valid UTF-8 JSON (or has duplicate keys)") from None
    if not isinstance(obj, dict):
        raise BadRequest("frame must hold a JSON object")
    return obj


# -- messages -------------------------------------------------------------------------------


# Frozen value classes (agent.values), not dataclasses: the client imports this module.


class Terminal(Frozen):
    __slots__ = ("cols", "rows", "term")
    term: str
    rows: int
    cols: int

    def __init__(self, term: str, rows: int, cols: int) -> None:
        self._init(term=term, rows=rows, cols=cols)


class Principal(Frozen):
    __slots__ = ("arn", "tags")
    arn: str
    tags: dict[str, str]

    def __init__(self, arn: str, tags: Optional[dict[str, str]] = None) -> None:
        self._init(arn=arn, tags={} if tags is None else tags)


class Preferences(Frozen):
    """Account preferences as sent; None means "not sent": the node's default applies."""

    __slots__ = ("run_as_default_user", "run_as_enabled", "shell_profile")
    run_as_enabled: Optional[bool]
    run_as_default_user: Optional[str]
    shell_profile: Optional[str]

    def __init__(self, run_as_enabled: Optional[bool] = None,
                 run_as_default_user: Optional[str] = None,
                 shell_profile: Optional[str] = None) -> None:
        self._init(run_as_enabled=run_as_enabled, run_as_default_user=run_as_default_user,
                   shell_profile=shell_profile)


class StartRequest(Frozen):
    __slots__ = ("command", "env", "preferences", "principal", "session_id", "terminal")
    session_id: str
    principal: Principal
    preferences: Preferences
    terminal: Optional[Terminal]
    command: Optional[str]
    env: dict[str, str]

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, session_id: str, principal: Principal, preferences: Preferences,
        terminal: Optional[Terminal], command: Optional[str], env: dict[str, str],
    ) -> None:
        self._init(session_id=session_id, principal=principal, preferences=preferences,
                   terminal=terminal, command=command, env=env)


class ListRequest(Frozen):
    __slots__ = ()


class TerminateRequest(Frozen):
    __slots__ = ("session_id",)
    session_id: str

    def __init__(self, session_id: str) -> None:
        self._init(session_id=session_id)


class PingRequest(Frozen):
    __slots__ = ()


class ResizeControl(Frozen):
    __slots__ = ("cols", "rows")
    rows: int
    cols: int

    def __init__(self, rows: int, cols: int) -> None:
        self._init(rows=rows, cols=cols)


class TerminateControl(Frozen):
    __slots__ = ()


class _Fields:
    """Strict field access for one JSON object: every key must be consumed, types exact."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise BadRequest(f"{where}: expected an object")
        self.obj = obj
        self.where = where
        self.seen: set[str] = set()

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.obj:
            if required:
                raise BadRequest(f"{self.where}.{key}: missing")
            return None
        return self.obj[key]

    def text(self, key: str, *, required: bool = True, max_len: int = 256,
            pattern: Optional[re.Pattern[str]] = None, nullable: bool = False) -> Any:
        val = self._get(key, required)
        if val is None and (nullable or not required):
            return None
        if not isinstance(val, str):
            raise BadRequest(f"{self.where}.{key}: expected a string")
        if len(val) > max_len:
            raise BadRequest(f"{self.where}.{key}: longer than {max_len} characters")
        if "\0" in val:
            raise BadRequest(f"{self.where}.{key}: contains NUL")
        if pattern is not None and not pattern.fullmatch(val):
            raise BadRequest(f"{self.where}.{key}: invalid value")
        return val

    def integer(self, key: str, lo: int, hi: int) -> int:
        val = self._get(key, True)
        if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
            raise BadRequest(f"{self.where}.{key}: expected an integer in {lo}..{hi}")
        return val

    def flag(self, key: str) -> Optional[bool]:
        val = self._get(key, False)
        if val is not None and not isinstance(val, bool):
            raise BadRequest(f"{self.where}.{key}: expected a boolean")
        return val

    def raw(self, key: str, *, required: bool) -> Any:
        return self._get(key, required)

    def mapping(self, key: str) -> Any:
        """An optional object: {} when the key is absent (null is a type error, not absent)."""
        return self._get(key, False) if key in self.obj else {}

    def done(self) -> None:
        extra = sorted(set(self.obj) - self.seen)
        if extra:
            raise BadRequest(f"{self.where}: unknown field {extra[0]!r}")


def _str_map(obj: Any, where: str, *, max_items: int, key_re: Optional[re.Pattern[str]],
             max_key: int, max_value: int) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: expected an object of strings")
    if len(obj) > max_items:
        raise BadRequest(f"{where}: more than {max_items} entries")
    out: dict[str, str] = {}
    for k, v in obj.items():
        if not isinstance(v, str):
            raise BadRequest(f"{where}.{k}: expected a string")
        if len(k) > max_key or len(v) > max_value or "\0" in k or "\0" in v:
            raise BadRequest(f"{where}.{k}: too long or contains NUL")
        if key_re is not None and not key_re.fullmatch(k):
            raise BadRequest(f"{where}: invalid name {k!r}")
        out[k] = v
    return out


def _header(obj: Any) -> tuple[_Fields, str]:
    f = _Fields(obj, "request")
    v = f.raw("v", required=True)
    if type(v) is not int or v != VERSION:  # exact: not True, not 1.0
        raise BadRequest(f"unsupported protocol version {v!r} (this daemon speaks {VERSION})")
    kind = f.text("type", max_len=32)
    return f, kind


def parse_request(obj: Any) -> Request:
    """Validate a client's first frame into a typed request, or raise BadRequest."""
    f, kind = _header(obj)
    req: Request
    if kind == "start":
        req = _parse_start(f)
    elif kind == "list":
        req = ListRequest()
    elif kind == "terminate":
        req = TerminateRequest(f.text("session_id", max_len=128, pattern=SESSION_ID_RE))
    elif kind == "ping":
        req = PingRequest()
    else:
        raise BadRequest(f"unknown request type {kind!r}")
    f.done()
    return req


def _parse_start(f: _Fields) -> StartRequest:
    session_id = f.text("session_id", max_len=128, pattern=SESSION_ID_RE)

    p = _Fields(f.raw("principal", required=True), "request.principal")
    arn = p.text("arn", max_len=MAX_ARN)
    tags = _str_map(p.mapping("tags"), "request.principal.tags",
                    max_items=MAX_TAGS, key_re=None, max_key=MAX_TAG_KEY, max_value=MAX_TAG_VALUE)
    p.done()

    prefs_obj = f.raw("preferences", required=False)
    prefs = Preferences()
    if prefs_obj is not None:
        q = _Fields(prefs_obj, "request.preferences")
        prefs = Preferences(
            q.flag("run_as_enabled"),
            q.text("run_as_default_user", required=False, nullable=True),
            q.text("shell_profile", required=False, nullable=True, max_len=MAX_PROFILE),
        )
        q.done()

    term_obj = f.raw("terminal", required=False)
    terminal = None
    if term_obj is not None:
        t = _Fields(term_obj, "request.terminal")
        terminal = Terminal(t.text("term", max_len=64, pattern=TERM_RE),
                            t.integer("rows", 1, MAX_DIM), t.integer("cols", 1, MAX_DIM))
        t.done()

    command = f.text("command", required=False, nullable=True, max_len=DEFAULT_MAX_FRAME)
    if command is None and terminal is None:
        raise BadRequest("request.command: null (an interactive login shell) requires "
                         "request.terminal")
    env = _str_map(f.mapping("env"), "request.env",
                   max_items=MAX_ENV, key_re=ENV_NAME_RE, max_key=128, max_value=MAX_ENV_VALUE)
    return StartRequest(session_id, Principal(arn, tags), prefs, terminal, command, env)


def parse_control(obj: Any) -> Control:
    """Validate a control frame sent on a started session's connection."""
    f, kind = _header(obj)
    ctl: Control
    if kind == "resize":
        ctl = ResizeControl(f.integer("rows", 1, MAX_DIM), f.integer("cols", 1, MAX_DIM))
    elif kind == "terminate":
        ctl = TerminateControl()
    else:
        raise BadRequest(f"unknown control type {kind!r}")
    f.done()
    return ctl


# -- replies --------------------------------------------------------------------------------


def error_reply(reason: str, message: str) -> dict[str, Any]:
    return {"v": VERSION, "type": "error", "reason": reason, "message": message}


def reply(kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "type": kind, **fields}
